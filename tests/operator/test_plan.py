"""Level-based planning: what exists decides the next step; planning twice changes nothing."""

from __future__ import annotations

from typing import Any

from spa_core.spec import RunSpec
from spa_operator import names
from spa_operator.builders import Owner
from spa_operator.config import OperatorConfig
from spa_operator.plan import Children, plan

OWNER = Owner(name="r", namespace="ml", uid="u")
CONFIG = OperatorConfig()


def spec(**extra: Any) -> RunSpec:
    return RunSpec.model_validate({"model": {"name": "org/model"}, "storage": {"pvc": "runs"},
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
    step = plan(OWNER, spec(), CONFIG, 0, Children())
    assert (step.phase, step.stage, step.iteration) == ("Running", "Generator", 0)
    assert kinds(step.ensure) == ["ConfigMap/r-spec", "Service/r-generator",
                                  "Deployment/r-generator-0"]


def test_a_network_policy_guards_the_generator_when_the_operator_is_asked_to() -> None:
    config = OperatorConfig(network_policy=True)
    step = plan(OWNER, spec(), config, 0, Children())
    assert kinds(step.ensure) == ["ConfigMap/r-spec", "Service/r-generator",
                                  "NetworkPolicy/r-generator", "Deployment/r-generator-0"]


def test_the_pipeline_starts_once_the_generator_is_healthy() -> None:
    children = Children(deployments={"r-generator-0": available()})
    step = plan(OWNER, spec(), CONFIG, 0, children)
    assert step.stage == "Pipeline"
    assert "Job/r-pipeline-0" in kinds(step.ensure)


def test_after_the_pipeline_the_generator_goes_and_training_starts() -> None:
    children = Children(deployments={"r-generator-0": available()},
                        jobs={"r-pipeline-0": job("Complete")})
    step = plan(OWNER, spec(), CONFIG, 0, children)
    assert step.stage == "Training"
    assert kinds(step.ensure)[-3:] == ["ConfigMap/r-accelerate", "Service/r-train-0",
                                       "Job/r-train-0"]
    assert step.delete == [("Deployment", "r-generator-0")]


def test_generator_is_kept_when_scale_down_is_off() -> None:
    children = Children(deployments={"r-generator-0": available()},
                        jobs={"r-pipeline-0": job("Complete")})
    step = plan(OWNER, spec(generator={"backend": "openai", "scaleDownAfterUse": False}), CONFIG,
                0, children)
    assert step.delete == []


def test_evaluation_follows_training_then_the_run_succeeds() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Complete")}
    assert plan(OWNER, spec(), CONFIG, 0, Children(jobs=jobs)).stage == "Evaluation"
    jobs["r-eval-0"] = job("Complete")
    step = plan(OWNER, spec(), CONFIG, 0, Children(jobs=jobs))
    assert (step.phase, step.stage) == ("Succeeded", "Done")


def test_without_evaluation_training_finishes_the_iteration() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Complete")}
    step = plan(OWNER, spec(evaluation={"enabled": False}), CONFIG, 0, Children(jobs=jobs))
    assert step.phase == "Succeeded"


def test_a_finished_iteration_moves_on_to_the_next_one() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Complete"),
            "r-eval-0": job("Complete")}
    step = plan(OWNER, spec(iterations={"count": 2}), CONFIG, 0, Children(jobs=jobs))
    assert (step.stage, step.iteration) == ("Generator", 1)
    assert "Deployment/r-generator-1" in kinds(step.ensure)


def test_a_failed_job_fails_the_run_naming_it() -> None:
    jobs = {"r-pipeline-0": job("Failed")}
    step = plan(OWNER, spec(), CONFIG, 0, Children(jobs=jobs))
    assert (step.phase, step.reason, step.failed_job) == ("Failed", "PipelineFailed",
                                                          "r-pipeline-0")
    assert "BackoffLimitExceeded" in step.message and "boom" in step.message
    assert step.ensure == []


def test_a_failed_training_group_restarts_as_a_new_attempt_keeping_the_failed_one() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Failed")}
    step = plan(OWNER, spec(), CONFIG, 0, Children(jobs=jobs))
    assert (step.phase, step.stage, step.reason) == ("Running", "Training", "TrainingRestarted")
    assert kinds(step.ensure)[-1] == "Job/r-train-0-r1"
    assert step.delete == [] and step.failed_job == "r-train-0"
    assert step.training_restarts == 1
    assert "restart 1 of at most 2" in step.message and "BackoffLimitExceeded" in step.message
    # The new attempt's pods rendezvous under their own Job's name.
    (env,) = [c["env"] for c in step.ensure[-1]["spec"]["template"]["spec"]["containers"]]
    assert {"name": "PET_MASTER_ADDR", "value": "r-train-0-r1-0.r-train-0"} in env

    jobs["r-train-0-r1"] = job()
    step = plan(OWNER, spec(), CONFIG, 0, Children(jobs=jobs))
    assert (step.reason, step.training_restarts) == ("Training", 1)
    assert "r-train-0-r1, restart 1" in step.message


def test_training_fails_the_run_once_its_restarts_are_used_up() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Failed"),
            "r-train-0-r1": job("Failed")}
    step = plan(OWNER, spec(training={"maxRestarts": 1}), CONFIG, 0, Children(jobs=jobs))
    assert (step.phase, step.reason, step.failed_job) == ("Failed", "TrainingFailed",
                                                          "r-train-0-r1")
    assert "after 1 restart(s)" in step.message
    assert step.ensure == []


def test_a_finished_later_attempt_finishes_training() -> None:
    jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Failed"),
            "r-train-0-r1": job("Complete")}
    step = plan(OWNER, spec(), CONFIG, 0, Children(jobs=jobs))
    assert (step.stage, step.training_restarts) == ("Evaluation", 1)


def test_a_usage_error_or_a_deadline_is_not_restarted() -> None:
    for reason in ("PodFailurePolicy", "DeadlineExceeded"):
        jobs = {"r-pipeline-0": job("Complete"), "r-train-0": job("Failed", reason)}
        step = plan(OWNER, spec(), CONFIG, 0, Children(jobs=jobs))
        assert (step.phase, step.reason) == ("Failed", "TrainingFailed"), reason
        assert reason in step.message


def test_suspend_deletes_running_children_and_keeps_finished_ones() -> None:
    children = Children(deployments={"r-generator-0": available()},
                        jobs={"r-pipeline-0": job(), "r-train-9": job("Complete")})
    step = plan(OWNER, spec(suspend=True), CONFIG, 0, children)
    assert step.phase == "Suspended"
    assert step.ensure == []
    assert step.delete == [("Deployment", "r-generator-0"), ("Job", "r-pipeline-0")]


def test_planning_is_idempotent() -> None:
    children = Children(deployments={"r-generator-0": available()},
                        jobs={"r-pipeline-0": job()})
    assert plan(OWNER, spec(), CONFIG, 0, children) == plan(OWNER, spec(), CONFIG, 0, children)
    # A running pipeline is left alone, not re-created.
    assert names.pipeline_job("r", 0) not in {o["metadata"]["name"] for o in
                                              plan(OWNER, spec(), CONFIG, 0, children).ensure}
