"""Level-based planning: what exists decides the next step; planning twice changes nothing."""

from __future__ import annotations

from typing import Any

from spa_core.spec import RunSpec
from spa_operator import names
from spa_operator.builders import Owner
from spa_operator.config import OperatorConfig
from spa_operator.plan import Children, Progress, plan

OWNER = Owner(name="r", namespace="ml", uid="u")
CONFIG = OperatorConfig()


def spec(**extra: Any) -> RunSpec:
    return RunSpec.model_validate({"model": {"name": "org/model"}, "storage": {"pvc": "runs"},
                                   "training": {"gpusPerNode": 1},
                                   "generator": {"backend": "openai"}, **extra})


def job(state: str | None = None, reason: str = "BackoffLimitExceeded") -> dict[str, Any]:
    conditions = [] if state is None else [
        {"type": state, "status": "True", "reason": reason, "message": "boom"}]
    return {"metadata": {"name": "j"}, "status": {"conditions": conditions}}


def available() -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "availableReplicas": 1, "updatedReplicas": 1}}


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in objs]


def test_a_new_run_brings_up_the_generator_first() -> None:
    step = plan(OWNER, spec(), CONFIG, Progress(), Children())
    assert (step.phase, step.stage, step.iteration) == ("Running", "Generator", 0)
    assert kinds(step.ensure) == ["ConfigMap/r-spec", "Service/r-generator",
                                  "Deployment/r-generator-0"]


def test_a_network_policy_guards_the_generator_when_the_operator_is_asked_to() -> None:
    config = OperatorConfig(network_policy=True)
    step = plan(OWNER, spec(), config, Progress(), Children())
    assert kinds(step.ensure) == ["ConfigMap/r-spec", "Service/r-generator",
                                  "NetworkPolicy/r-generator", "Deployment/r-generator-0"]


def test_the_pipeline_starts_once_the_generator_is_healthy() -> None:
    children = Children(deployments={"r-generator-0": available()})
    step = plan(OWNER, spec(), CONFIG, Progress(), children)
    assert step.stage == "Pipeline"
    assert "Job/r-pipeline-0" in kinds(step.ensure)


def test_after_the_pipeline_the_generator_goes_and_training_starts() -> None:
    children = Children(deployments={"r-generator-0": available()},
                        jobs={"r-pipeline-0": job("Complete")})
    step = plan(OWNER, spec(), CONFIG, Progress(), children)
    assert step.stage == "Training"
    assert kinds(step.ensure)[-3:] == ["ConfigMap/r-accelerate", "Service/r-train-0",
                                       "Job/r-train-0"]
    assert step.delete == [("Deployment", "r-generator-0")]


def test_generator_is_kept_when_scale_down_is_off() -> None:
    children = Children(deployments={"r-generator-0": available()},
                        jobs={"r-pipeline-0": job("Complete")})
    step = plan(OWNER, spec(generator={"backend": "openai", "scaleDownAfterUse": False}), CONFIG,
                Progress(), children)
    assert step.delete == []


def generator_pod(iteration: int) -> dict[str, Any]:
    return {"metadata": {"labels": {"app.kubernetes.io/component": "generator",
                                    "alignment.spa.dev/iteration": str(iteration)}}}


def test_evaluation_serves_the_trained_checkpoint_then_the_policy_then_the_run_succeeds() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Complete")}
    # vLLM serves one model: first the trained checkpoint (the next iteration's generator).
    step = plan(OWNER, spec(), CONFIG, Progress(), Children(jobs=jobs))
    assert (step.stage, step.reason, step.generator) == ("Generator", "WaitingForGenerator",
                                                         "r-generator-1")
    assert kinds(step.ensure)[-1] == "Deployment/r-generator-1"
    assert "trained checkpoint" in step.message
    (vllm,) = step.ensure[-1]["spec"]["template"]["spec"]["containers"]
    assert vllm["args"][1] == f"{CONFIG.storage_mount}/runs/r/iter-00/train/checkpoint-final"

    # Ready, but a pod of the pipeline's generator is still stopping: the Service could
    # still reach the old model, so the Job waits.
    deployments = {"r-generator-1": available()}
    step = plan(OWNER, spec(), CONFIG, Progress(),
                Children(deployments=deployments, jobs=jobs,
                         pods={"r-generator-0-x": generator_pod(0),
                               "r-generator-1-y": generator_pod(1)}))
    assert step.stage == "Generator" and not [k for k in kinds(step.ensure) if "Job/" in k]

    step = plan(OWNER, spec(), CONFIG, Progress(),
                Children(deployments=deployments, jobs=jobs,
                         pods={"r-generator-1-y": generator_pod(1)}))
    assert (step.stage, step.reason) == ("Evaluation", "Evaluating")
    answers = step.ensure[-1]
    assert kinds([answers]) == ["Job/r-answers-0"]
    (container,) = answers["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["spa", "evaluate"]
    assert container["args"][-1] == "--trained-answers-only"
    assert container["image"] == CONFIG.worker_image
    assert "nvidia.com/gpu" not in str(container["resources"])

    # Then the starting policy again, alone, answers and judges.
    jobs["r-answers-0"] = job("Complete")
    step = plan(OWNER, spec(), CONFIG, Progress(), Children(deployments=deployments, jobs=jobs))
    assert (step.stage, step.generator) == ("Generator", "r-generator-0")
    assert step.delete == [("Deployment", "r-generator-1")]
    assert step.finished == ["Pipeline", "Training", "TrainedAnswers"]
    deployments = {"r-generator-0": available()}
    step = plan(OWNER, spec(), CONFIG, Progress(), Children(deployments=deployments, jobs=jobs))
    assert kinds(step.ensure)[-1] == "Job/r-eval-0"
    evaluate = step.ensure[-1]["spec"]["template"]["spec"]["initContainers"][0]
    assert evaluate["args"][:2] == ["spa", "evaluate"]
    assert "--trained-answers-only" not in evaluate["args"]

    jobs["r-eval-0"] = job("Complete")
    step = plan(OWNER, spec(), CONFIG, Progress(), Children(deployments=deployments, jobs=jobs))
    assert (step.phase, step.stage) == ("Succeeded", "Done")
    assert step.delete == [("Deployment", "r-generator-0")]


def test_a_failed_answers_job_fails_the_run_in_its_evaluation() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Complete"),
            "r-answers-0": job("Failed")}
    step = plan(OWNER, spec(), CONFIG, Progress(),
                Children(deployments={"r-generator-1": available()}, jobs=jobs))
    assert (step.phase, step.stage, step.reason, step.failed_job) == (
        "Failed", "Evaluation", "TrainedAnswersFailed", "r-answers-0")
    assert step.delete == [("Deployment", "r-generator-1")]


def test_the_status_remembers_the_trained_answers() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Complete")}
    progress = Progress(finished=frozenset({"Pipeline", "Training", "TrainedAnswers"}))
    step = plan(OWNER, spec(), CONFIG, progress, Children(jobs=jobs))  # r-answers-0 is gone
    assert step.generator == "r-generator-0"


def test_without_evaluation_training_finishes_the_iteration() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Complete")}
    step = plan(OWNER, spec(evaluation={"enabled": False}), CONFIG, Progress(),
                Children(jobs=jobs))
    assert step.phase == "Succeeded"


def test_a_finished_iteration_moves_on_to_the_next_one() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Complete"),
            "r-eval-0": job("Complete")}
    step = plan(OWNER, spec(iterations={"count": 2}), CONFIG, Progress(), Children(jobs=jobs))
    assert (step.stage, step.iteration) == ("Generator", 1)
    assert "Deployment/r-generator-1" in kinds(step.ensure)


def test_a_failed_job_fails_the_run_naming_it() -> None:
    jobs = {"r-pipeline-0": job("Failed")}
    step = plan(OWNER, spec(), CONFIG, Progress(), Children(jobs=jobs))
    assert (step.phase, step.reason, step.failed_job) == ("Failed", "PipelineFailed",
                                                          "r-pipeline-0")
    assert "BackoffLimitExceeded" in step.message and "boom" in step.message
    assert step.ensure == []


def test_a_failed_training_group_restarts_as_a_new_attempt_keeping_the_failed_one() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Failed")}
    step = plan(OWNER, spec(), CONFIG, Progress(), Children(jobs=jobs))
    assert (step.phase, step.stage, step.reason) == ("Running", "Training", "TrainingRestarted")
    assert kinds(step.ensure)[-1] == "Job/r-train-0-r1"
    assert step.delete == [] and step.failed_job == "r-train-0"
    assert step.training_restarts == 1
    assert "restart 1 of at most 2" in step.message and "BackoffLimitExceeded" in step.message
    # The new attempt's pods rendezvous under their own Job's name.
    (env,) = [c["env"] for c in step.ensure[-1]["spec"]["template"]["spec"]["containers"]]
    assert {"name": "PET_MASTER_ADDR", "value": "r-train-0-r1-0.r-train-0"} in env

    jobs["r-train-0-r1"] = job()
    step = plan(OWNER, spec(), CONFIG, Progress(), Children(jobs=jobs))
    assert (step.reason, step.training_restarts) == ("Training", 1)
    assert "r-train-0-r1, restart 1" in step.message


def test_training_fails_the_run_once_its_restarts_are_used_up() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Failed"),
            "r-train-0-r1": job("Failed")}
    step = plan(OWNER, spec(training={"maxRestarts": 1}), CONFIG, Progress(),
                Children(jobs=jobs))
    assert (step.phase, step.reason, step.failed_job) == ("Failed", "TrainingFailed",
                                                          "r-train-0-r1")
    assert "after 1 restart(s)" in step.message
    assert step.ensure == []


def test_a_finished_later_attempt_finishes_training() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Failed"),
            "r-train-0-r1": job("Complete")}
    step = plan(OWNER, spec(), CONFIG, Progress(), Children(jobs=jobs))
    assert (step.generator, step.training_restarts) == ("r-generator-1", 1)


def test_a_usage_error_or_a_deadline_is_not_restarted() -> None:
    for reason in ("PodFailurePolicy", "DeadlineExceeded"):
        jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Failed", reason)}
        step = plan(OWNER, spec(), CONFIG, Progress(), Children(jobs=jobs))
        assert (step.phase, step.reason) == ("Failed", "TrainingFailed"), reason
        assert reason in step.message


def test_suspend_deletes_running_children_and_keeps_finished_ones() -> None:
    children = Children(deployments={"r-generator-0": available()},
                        jobs={"r-pipeline-0": job(), "r-train-9": job("Complete")})
    step = plan(OWNER, spec(suspend=True), CONFIG, Progress(), children)
    assert step.phase == "Suspended"
    assert step.ensure == []
    assert step.delete == [("Deployment", "r-generator-0"), ("Job", "r-pipeline-0")]


def test_planning_is_idempotent() -> None:
    children = Children(deployments={"r-generator-0": available()},
                        jobs={"r-pipeline-0": job()})
    assert plan(OWNER, spec(), CONFIG, Progress(), children) == \
        plan(OWNER, spec(), CONFIG, Progress(), children)
    # A running pipeline is left alone, not re-created.
    assert names.pipeline_job("r", 0) not in {o["metadata"]["name"] for o in
                                              plan(OWNER, spec(), CONFIG, Progress(), children).ensure}


def test_finished_stages_are_reported_for_the_status_to_remember() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Failed"),
            "r-train-0-r1": job("Complete")}
    step = plan(OWNER, spec(), CONFIG, Progress(), Children(jobs=jobs))
    assert (step.generator, step.finished) == ("r-generator-1", ["Pipeline", "Training"])
    assert plan(OWNER, spec(), CONFIG, Progress(),
                Children(deployments={"r-generator-0": available()})).finished == []


def test_a_finished_job_that_is_gone_is_not_redone() -> None:
    # The pipeline Job expired (or was deleted) while training ran: the run stays in Training
    # and brings back neither the generator nor the pipeline.
    progress = Progress(iteration=0, finished=frozenset({"Pipeline"}))
    step = plan(OWNER, spec(), CONFIG, progress, Children(jobs={"r-train-0": job()}))
    assert (step.stage, step.finished) == ("Training", ["Pipeline"])
    assert not any(n.startswith(("r-generator", "r-pipeline")) for n in kinds(step.ensure))
    # Every Job of the iteration gone: the run goes on from what the status remembers.
    progress = Progress(iteration=0, finished=frozenset({"Pipeline", "Training",
                                                        "TrainedAnswers"}))
    step = plan(OWNER, spec(), CONFIG, progress,
                Children(deployments={"r-generator-0": available()}))
    assert step.stage == "Evaluation"
    assert "Job/r-eval-0" in kinds(step.ensure)


def test_remembered_stages_hold_for_their_iteration_only() -> None:
    progress = Progress(iteration=1, finished=frozenset({"Pipeline"}))
    step = plan(OWNER, spec(iterations={"count": 3}), CONFIG, progress,
                Children(jobs={"r-train-1": job("Complete"), "r-eval-1": job("Complete")}))
    assert (step.stage, step.iteration, step.finished) == ("Generator", 2, [])


def test_a_training_attempt_that_is_gone_is_not_taken_back() -> None:
    # Restart 1 is under way; the failed first attempt has been deleted: the run stays on the
    # second attempt rather than starting the first one again.
    progress = Progress(iteration=0, finished=frozenset({"Pipeline"}), training_restarts=1)
    step = plan(OWNER, spec(), CONFIG, progress, Children(jobs={"r-train-0-r1": job()}))
    assert (step.reason, step.training_restarts) == ("Training", 1)
    assert kinds(step.ensure)[-1] == "Job/r-train-0-r1"
