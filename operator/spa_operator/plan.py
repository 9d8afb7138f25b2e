"""Level-based planning: from a run's spec and its observed children, what should exist now.

`plan` is pure. It never looks at what the operator did before, only at what exists, so
re-running it (after a crash, a restart, a missed event) gives the same answer and creates
no duplicates. Finished Jobs are the run's memory: a completed iteration stays completed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spa_core.spec import RunSpec
from spa_operator import builders, names
from spa_operator.builders import Owner
from spa_operator.config import OperatorConfig
from spa_operator.observe import deployment_available, job_state
from spa_operator.status import RunPhase, RunStage

__all__ = ["Children", "Step", "plan"]


@dataclass(frozen=True)
class Children:
    """The run's children as listed from the API server, by name."""

    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    """The Job whose failure failed the run (its pods hold the termination message)."""


def _stale_generators(owner: Owner, children: Children, keep: str | None) -> list[tuple[str, str]]:
    prefix = names.generator_deployment(owner.name, 0)[:-1]
    return [("Deployment", n) for n in sorted(children.deployments)
            if n.startswith(prefix) and n != keep]


def _unfinished_jobs(children: Children) -> list[tuple[str, str]]:
    return [("Job", n) for n, job in sorted(children.jobs.items())
            if job_state(job).phase == "Running"]


def plan(owner: Owner, spec: RunSpec, config: OperatorConfig, iteration: int,
         children: Children) -> Step:
    """The next step of the run at `iteration` (the status' lower bound; finished ones skip)."""
    if spec.suspend:
        return Step("Suspended", None, iteration, "Suspended",
                    "spec.suspend is true: running children deleted, artifacts kept",
                    delete=_stale_generators(owner, children, None) + _unfinished_jobs(children))

    last = spec.iterations.count - 1
    while True:
        step = _plan_iteration(owner, spec, config, iteration, children)
        if step is not None:
            return step
        if iteration == last:
            return Step("Succeeded", "Done", iteration, "Succeeded",
                        f"{spec.iterations.count} iteration(s) finished",
                        delete=_stale_generators(owner, children, None))
        iteration += 1


def _plan_iteration(owner: Owner, spec: RunSpec, config: OperatorConfig, i: int,
                    children: Children) -> Step | None:
    """The step within iteration `i`, or None when the iteration is finished."""
    jobs = children.jobs
    pipeline_name = names.pipeline_job(owner.name, i)
    training_name = names.training_job(owner.name, i)
    evaluation_name = names.evaluation_job(owner.name, i)
    pipeline = job_state(jobs.get(pipeline_name))
    training = job_state(jobs.get(training_name))
    evaluation = job_state(jobs.get(evaluation_name))

    for stage, name, state in (("Pipeline", pipeline_name, pipeline),
                               ("Training", training_name, training),
                               ("Evaluation", evaluation_name, evaluation)):
        if state.phase == "Failed":
            return Step("Failed", stage, i, f"{stage}Failed",
                        f"Job {name} failed ({state.reason}): {state.message}".rstrip(": "),
                        delete=_stale_generators(owner, children, None),
                        failed_job=name)

    finished = evaluation.phase == "Succeeded" if spec.evaluation.enabled \
        else training.phase == "Succeeded"
    if finished:
        return None

    if training.phase == "Succeeded":
        return Step("Running", "Evaluation", i, "Evaluating",
                    f"evaluating iteration {i} (Job {evaluation_name})",
                    ensure=[builders.build_spec_config_map(owner, spec, config),
                            builders.build_evaluation_job(owner, spec, config, i)],
                    delete=_stale_generators(owner, children, None))

    if pipeline.phase == "Succeeded":
        keep = None if spec.generator.scale_down_after_use else \
            names.generator_deployment(owner.name, i)
        return Step("Running", "Training", i, "Training",
                    f"training iteration {i} on {spec.training.nodes} node(s) "
                    f"(Job {training_name})",
                    ensure=[builders.build_spec_config_map(owner, spec, config),
                            builders.build_training_config_map(owner, spec, config),
                            builders.build_training_service(owner, spec, config, i),
                            builders.build_training_job(owner, spec, config, i)],
                    delete=_stale_generators(owner, children, keep))

    generator_name = names.generator_deployment(owner.name, i)
    ensure = [builders.build_spec_config_map(owner, spec, config),
              builders.build_generator_service(owner, spec, config),
              builders.build_generator_deployment(owner, spec, config, i)]
    if config.network_policy:
        ensure.insert(2, builders.build_generator_network_policy(owner, spec, config))
    stale = _stale_generators(owner, children, generator_name)
    if pipeline.phase == "Running":
        return Step("Running", "Pipeline", i, "Sampling",
                    f"sampling, scoring and refining iteration {i} (Job {pipeline_name})",
                    ensure=ensure, delete=stale)
    if deployment_available(children.deployments.get(generator_name)):
        return Step("Running", "Pipeline", i, "Sampling",
                    f"generator ready; starting the pipeline of iteration {i}",
                    ensure=[*ensure, builders.build_pipeline_job(owner, spec, config, i)],
                    delete=stale)
    return Step("Running", "Generator", i, "WaitingForGenerator",
                f"waiting for vLLM ({generator_name}) to pass its /health check",
                ensure=ensure, delete=stale)
