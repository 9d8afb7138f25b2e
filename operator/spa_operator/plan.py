"""Level-based planning: from a run's spec and its observed children, what should exist now.

`plan` is pure. It never looks at what the operator did before, only at what exists, so
re-running it (after a crash, a restart, a missed event) gives the same answer and creates
no duplicates. What a run has finished is remembered twice: by its finished Jobs while they
exist, and by its status (`Progress`), so a finished Job that goes (a user's cleanup, a TTL) is
never redone and never sends the run back to an earlier stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from spa_core.spec import RunSpec
from spa_operator import builders, names
from spa_operator.builders import Owner
from spa_operator.builders.common import COMPONENT_LABEL, ITERATION_LABEL
from spa_operator.builders.generator import COMPONENT as GENERATOR
from spa_operator.config import OperatorConfig
from spa_operator.observe import JobState, Trouble, deployment_available, job_state
from spa_operator.status import JobStage, RunPhase, RunStage

__all__ = ["Children", "Progress", "Step", "plan", "with_deadlines"]


@dataclass(frozen=True)
class Children:
    """The run's children as listed from the API server, by name."""

    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """What the run's status remembers of its current iteration."""

    iteration: int = 0
    """The current iteration: a lower bound, earlier ones are finished."""
    finished: frozenset[JobStage] = frozenset()
    """Stages of `iteration` whose Job succeeded (the Job itself may be gone since)."""
    training_restarts: int = 0
    """Restarts of `iteration`'s training group so far: a lower bound of its latest attempt."""

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> Progress:
        return cls(iteration=status.get("iteration") or 0,
                   finished=frozenset(status.get("finishedStages") or ()),
                   training_restarts=status.get("trainingRestarts") or 0)


@dataclass
class Step:
    """What to do now and what to report."""

    phase: RunPhase
    stage: RunStage | None
    iteration: int
    reason: str
    message: str
    ensure: list[dict[str, Any]] = field(default_factory=list)
    """Objects to create when absent (never updated in place: the spec is immutable)."""
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of children to delete."""
    failed_job: str | None = None
    """The Job whose failure failed the run, or made it restart training (its pods hold the
    termination message)."""
    training_restarts: int | None = None
    """Restarts of this iteration's training group so far (the latest attempt when None)."""
    finished: list[JobStage] = field(default_factory=list)
    """Stages of this iteration whose Job succeeded, for the status to remember."""
    generator: str | None = None
    """The generator Deployment the step waits for (stage `Generator`)."""


def _stale_generators(owner: Owner, children: Children, keep: str | None) -> list[tuple[str, str]]:
    prefix = names.generator_deployment(owner.name, 0)[:-1]
    return [("Deployment", n) for n in sorted(children.deployments)
            if n.startswith(prefix) and n != keep]


def _unfinished_jobs(children: Children) -> list[tuple[str, str]]:
    return [("Job", n) for n, job in sorted(children.jobs.items())
            if job_state(job).phase == "Running"]


def plan(owner: Owner, spec: RunSpec, config: OperatorConfig, progress: Progress,
         children: Children) -> Step:
    """The next step of the run, from what its status remembers and what exists."""
    iteration = progress.iteration
    if spec.suspend:
        states = _iteration_states(owner, spec, progress, iteration, children.jobs)
        return Step("Suspended", None, iteration, "Suspended",
                    "spec.suspend is true: running children deleted, artifacts kept",
                    delete=_stale_generators(owner, children, None) + _unfinished_jobs(children),
                    training_restarts=states.attempt, finished=states.finished)

    last = spec.iterations.count - 1
    while True:
        states = _iteration_states(owner, spec, progress, iteration, children.jobs)
        step = _next_in_iteration(owner, spec, config, iteration, children, states)
        if step is not None:
            step.finished = states.finished
            if step.training_restarts is None:
                step.training_restarts = states.attempt
            return step
        if iteration == last:
            return Step("Succeeded", "Done", iteration, "Succeeded",
                        f"{spec.iterations.count} iteration(s) finished",
                        delete=_stale_generators(owner, children, None),
                        training_restarts=states.attempt, finished=states.finished)
        iteration += 1


#: Job failure reasons a new attempt cannot cure: the pod failure policy's FailJob rule (a
#: usage error) and the Job's activeDeadlineSeconds.
_FINAL_JOB_FAILURES = {"PodFailurePolicy", "DeadlineExceeded"}


def _training_attempt(owner: Owner, spec: RunSpec, i: int,
                      jobs: dict[str, dict[str, Any]]) -> int:
    """The latest attempt of iteration `i`'s training Job that exists (0 when none does)."""
    for attempt in range(spec.training.max_restarts, 0, -1):
        if names.training_job(owner.name, i, attempt) in jobs:
            return attempt
    return 0


@dataclass(frozen=True)
class _IterationStates:
    """Iteration `i`'s Jobs: their states, with what the status remembers folded in."""

    attempt: int
    pipeline: JobState
    training: JobState
    answers: JobState
    evaluation: JobState

    @property
    def finished(self) -> list[JobStage]:
        return [stage for stage, state in (("Pipeline", self.pipeline),
                                           ("Training", self.training),
                                           ("TrainedAnswers", self.answers),
                                           ("Evaluation", self.evaluation))
                if state.phase == "Succeeded"]


def _iteration_states(owner: Owner, spec: RunSpec, progress: Progress, i: int,
                      jobs: dict[str, dict[str, Any]]) -> _IterationStates:
    current = i == progress.iteration
    remembered = progress.finished if current else frozenset()
    attempt = max(_training_attempt(owner, spec, i, jobs),
                  progress.training_restarts if current else 0)

    def state(stage: JobStage, name: str) -> JobState:
        return JobState("Succeeded") if stage in remembered else job_state(jobs.get(name))

    return _IterationStates(
        attempt=attempt,
        pipeline=state("Pipeline", names.pipeline_job(owner.name, i)),
        training=state("Training", names.training_job(owner.name, i, attempt)),
        answers=state("TrainedAnswers", names.trained_answers_job(owner.name, i)),
        evaluation=state("Evaluation", names.evaluation_job(owner.name, i)))


def _next_in_iteration(owner: Owner, spec: RunSpec, config: OperatorConfig, i: int,
                       children: Children, states: _IterationStates) -> Step | None:
    """The step within iteration `i`, or None when the iteration is finished."""
    attempt, pipeline, training = states.attempt, states.pipeline, states.training
    pipeline_name = names.pipeline_job(owner.name, i)
    training_name = names.training_job(owner.name, i, attempt)
    restart = training.phase == "Failed" and training.reason not in _FINAL_JOB_FAILURES \
        and attempt < spec.training.max_restarts

    for stage, name, state in (("Pipeline", pipeline_name, pipeline),
                               ("Training", training_name, training),
                               ("TrainedAnswers", names.trained_answers_job(owner.name, i),
                                states.answers),
                               ("Evaluation", names.evaluation_job(owner.name, i),
                                states.evaluation)):
        if state.phase == "Failed" and not (stage == "Training" and restart):
            message = f"Job {name} failed ({state.reason}): {state.message}".rstrip(": ")
            if stage == "Training" and attempt:
                message += f" (after {attempt} restart(s) of training)"
            return Step("Failed", "Evaluation" if stage == "TrainedAnswers" else stage, i,
                        f"{stage}Failed", message,
                        delete=_stale_generators(owner, children, None),
                        failed_job=name)

    finished = states.evaluation.phase == "Succeeded" if spec.evaluation.enabled \
        else training.phase == "Succeeded"
    if finished:
        return None

    if training.phase == "Succeeded":
        # vLLM serves one model: first the trained checkpoint (the next iteration's
        # generator) answers the held-out prompts, then the starting policy answers them too
        # and judges both.
        if states.answers.phase != "Succeeded":
            return _served_job(owner, spec, config, i, children, i + 1, states.answers,
                               builders.build_trained_answers_job(owner, spec, config, i),
                               "the trained checkpoint", "Evaluation", "Evaluating",
                               f"answering iteration {i}'s held-out prompts with the "
                               "trained checkpoint")
        return _served_job(owner, spec, config, i, children, i, states.evaluation,
                           builders.build_evaluation_job(owner, spec, config, i),
                           f"iteration {i}'s starting policy", "Evaluation", "Evaluating",
                           f"evaluating iteration {i}: the starting policy answers and judges")

    if pipeline.phase == "Succeeded":
        keep = None if spec.generator.scale_down_after_use else \
            names.generator_deployment(owner.name, i)
        ensure = [builders.build_spec_config_map(owner, spec, config),
                  builders.build_training_config_map(owner, spec, config),
                  builders.build_training_service(owner, spec, config, i)]
        delete = _stale_generators(owner, children, keep)
        nodes = f"{spec.training.nodes} node(s)"
        if restart:
            # One rank lost fails them all: the whole group starts again, from the last
            # checkpoint on the run's storage. The failed attempt stays, with its pods' logs.
            retry = names.training_job(owner.name, i, attempt + 1)
            return Step("Running", "Training", i, "TrainingRestarted",
                        f"Job {training_name} failed ({training.reason}); restarting training "
                        f"of iteration {i} on {nodes} from its last checkpoint as Job {retry} "
                        f"(restart {attempt + 1} of at most {spec.training.max_restarts})",
                        ensure=[*ensure, builders.build_training_job(owner, spec, config, i,
                                                                     attempt + 1)],
                        delete=delete, failed_job=training_name,
                        training_restarts=attempt + 1)
        restarts = f", restart {attempt}" if attempt else ""
        return Step("Running", "Training", i, "Training",
                    f"training iteration {i} on {nodes} (Job {training_name}{restarts})",
                    ensure=[*ensure, builders.build_training_job(owner, spec, config, i,
                                                                 attempt)],
                    delete=delete)

    return _served_job(owner, spec, config, i, children, i, pipeline,
                       builders.build_pipeline_job(owner, spec, config, i),
                       f"iteration {i}'s policy", "Pipeline", "Sampling",
                       f"sampling, scoring and refining iteration {i}")


def _served_job(owner: Owner, spec: RunSpec, config: OperatorConfig, i: int,
                children: Children, serving: int, state: JobState, job: dict[str, Any],
                model: str, stage: RunStage, reason: str, what: str) -> Step:
    """The step of a Job that talks to vLLM: generator `serving` (the policy of iteration
    `serving`) brought up alone behind the generator Service, then the Job once it is ready.

    Every other generator goes first, and the Job starts only once none of their pods is
    left: the Service then reaches `model` and nothing else.
    """
    generator_name = names.generator_deployment(owner.name, serving)
    job_name = job["metadata"]["name"]
    ensure = [builders.build_spec_config_map(owner, spec, config),
              builders.build_generator_service(owner, spec, config),
              builders.build_generator_deployment(owner, spec, config, serving)]
    if config.network_policy:
        ensure.insert(2, builders.build_generator_network_policy(owner, spec, config))
    stale = _stale_generators(owner, children, generator_name)
    if state.phase == "Running":
        return Step("Running", stage, i, reason, f"{what} (Job {job_name})",
                    ensure=ensure, delete=stale)
    if deployment_available(children.deployments.get(generator_name)) and \
            not _other_generator_pods(children, serving):
        return Step("Running", stage, i, reason,
                    f"generator ready ({generator_name}, serving {model}); {what} "
                    f"(Job {job_name})", ensure=[*ensure, job], delete=stale)
    return Step("Running", "Generator", i, "WaitingForGenerator",
                f"waiting for vLLM ({generator_name}, serving {model}) to pass its /health "
                "check" + ("" if stage == "Pipeline" else f", then {what}"),
                ensure=ensure, delete=stale, generator=generator_name)


def _other_generator_pods(children: Children, serving: int) -> list[str]:
    """Pods of the run's generators other than `serving`'s (still stopping, say)."""
    return sorted(name for name, pod in children.pods.items()
                  if (labels := (pod.get("metadata") or {}).get("labels") or {})
                  .get(COMPONENT_LABEL) == GENERATOR
                  and labels.get(ITERATION_LABEL) != str(serving))


def with_deadlines(step: Step, owner: Owner, spec: RunSpec, children: Children,
                   started: datetime | None, stage_started: datetime, now: datetime,
                   trouble: Trouble | None) -> Step:
    """`step`, or the failure it turns into once the run (`spec.activeDeadlineSeconds`, from
    `started`) or its generator's start (`generator.startDeadlineSeconds`, from
    `stage_started`) has run out of time; the failure names what the run was waiting for
    and gives the GPUs back."""
    if step.phase not in ("Running", "Pending"):
        return step
    run_limit = spec.active_deadline_seconds
    start_limit = spec.generator.start_deadline_seconds
    if run_limit is not None and started is not None and \
            now - started > timedelta(seconds=run_limit):
        reason = "DeadlineExceeded"
        what = f"the run did not finish within spec.activeDeadlineSeconds ({run_limit} s)"
    elif step.phase == "Running" and step.stage == "Generator" and \
            now - stage_started > timedelta(seconds=start_limit):
        reason = "GeneratorStartTimeout"
        what = (f"vLLM ({step.generator}) did not pass its /health check within "
                f"generator.startDeadlineSeconds ({start_limit} s)")
    else:
        return step
    message = f"{what}; it was {step.message}" + (f"; {trouble.message}" if trouble else "")
    return replace(step, phase="Failed", reason=reason, message=message, ensure=[],
                   delete=_stale_generators(owner, children, None) + _unfinished_jobs(children))
