"""What the operator reads from its children when they do not move on their own, and the
deadlines that turn a wait into a failure (pure: the objects as the API server returns them,
reasons and messages as the scheduler and the kubelet write them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from spa_core.spec import RunSpec
from spa_operator.builders import Owner
from spa_operator.config import OperatorConfig
from spa_operator.observe import trouble
from spa_operator.plan import Children, Progress, plan, with_deadlines

OWNER = Owner(name="r", namespace="ml", uid="u")
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def pod(name: str, phase: str = "Pending", conditions: list[dict[str, Any]] | None = None,
        waiting: dict[str, str] | None = None, init: bool = False) -> dict[str, Any]:
    statuses = [{"name": "main", "state": {"waiting": waiting} if waiting else {"running": {}}}]
    key = "initContainerStatuses" if init else "containerStatuses"
    return {"metadata": {"name": name},
            "status": {"phase": phase, "conditions": conditions or [], key: statuses}}


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. "
                            "preemption: 0/1 nodes are available"}


def test_a_pod_no_node_can_take_is_reported_in_the_schedulers_words() -> None:
    found = trouble([], [pod("r-generator-0-abc", conditions=[UNSCHEDULABLE])])
    assert found is not None and found.reason == "Unschedulable"
    assert found.message.startswith("pod r-generator-0-abc is not scheduled: 0/1 nodes are "
                                    "available: 1 Insufficient nvidia.com/gpu")


def test_an_unbound_claim_and_a_scheduling_gate_are_reported() -> None:
    unbound = {**UNSCHEDULABLE, "message": "0/1 nodes are available: pod has unbound "
                                           "immediate PersistentVolumeClaims."}
    assert "unbound immediate PersistentVolumeClaims" in trouble(
        [], [pod("p", conditions=[unbound])]).message
    gated = {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
             "message": "Scheduling is blocked due to non-empty scheduling gates"}
    assert trouble([], [pod("p", conditions=[gated])]).reason == "SchedulingGated"


def test_containers_that_cannot_start_are_reported_init_containers_too() -> None:
    pull = {"reason": "ImagePullBackOff",
            "message": 'Back-off pulling image "ghcr.io/x/vllm:nope"'}
    found = trouble([], [pod("r-generator-0-abc", waiting=pull, init=True)])
    assert (found.reason, found.message) == (
        "ImagePullBackOff", 'pod r-generator-0-abc, container main: ImagePullBackOff: '
        'Back-off pulling image "ghcr.io/x/vllm:nope"')
    crash = {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed"}
    assert trouble([], [pod("p", "Running", waiting=crash)]).reason == "CrashLoopBackOff"
    secret = {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}
    assert 'secret "hf-token" not found' in trouble([], [pod("p", waiting=secret)]).message


def test_pods_that_are_merely_starting_or_finished_are_no_trouble() -> None:
    starting = {"reason": "ContainerCreating"}
    scheduled = {"type": "PodScheduled", "status": "True"}
    done = pod("old", "Failed", conditions=[UNSCHEDULABLE])
    going = {**pod("gone", conditions=[UNSCHEDULABLE]),
             "metadata": {"name": "gone", "deletionTimestamp": "2026-12-04T11:00:00Z"}}
    assert trouble([], [pod("p", waiting=starting, conditions=[scheduled]), done, going]) is None


def test_a_job_kueue_has_not_admitted_is_reported_with_its_queue() -> None:
    job = {"metadata": {"name": "r-train-0", "labels": {"kueue.x-k8s.io/queue-name": "gpu"}},
           "spec": {"suspend": True}, "status": {}}
    found = trouble([job], [])
    assert (found.reason, found.message) == (
        "Suspended", "Job r-train-0 is suspended: waiting for Kueue to admit it (queue gpu)")


# --- deadlines --------------------------------------------------------------------------------

def spec(**extra: Any) -> RunSpec:
    return RunSpec.model_validate({"model": {"name": "org/model"}, "storage": {"pvc": "runs"},
                                   "training": {"gpusPerNode": 1},
                                   "generator": {"backend": "openai"}, **extra})


def test_a_generator_that_never_gets_healthy_fails_the_run_naming_why() -> None:
    stuck = Children(deployments={"r-generator-0": {"metadata": {"generation": 1},
                                                    "spec": {"replicas": 1}, "status": {}}},
                     pods={"r-generator-0-abc": pod("r-generator-0-abc",
                                                    conditions=[UNSCHEDULABLE])})
    run = spec(generator={"backend": "openai", "startDeadlineSeconds": 600})
    step = plan(OWNER, run, OperatorConfig(), Progress(), stuck)
    found = trouble([], list(stuck.pods.values()))
    waiting = with_deadlines(step, OWNER, run, stuck, NOW - timedelta(minutes=20),
                             NOW - timedelta(seconds=599), NOW, found)
    assert waiting is step
    failed = with_deadlines(step, OWNER, run, stuck, NOW - timedelta(minutes=20),
                            NOW - timedelta(seconds=601), NOW, found)
    assert (failed.phase, failed.stage, failed.reason) == ("Failed", "Generator",
                                                           "GeneratorStartTimeout")
    assert "did not pass its /health check within generator.startDeadlineSeconds (600 s)" \
        in failed.message
    assert "Insufficient nvidia.com/gpu" in failed.message
    assert failed.ensure == [] and failed.delete == [("Deployment", "r-generator-0")]


def test_the_run_deadline_fails_any_stage_and_frees_what_runs() -> None:
    children = Children(jobs={"r-pipeline-0": {"status": {"conditions": [
        {"type": "Complete", "status": "True"}]}}, "r-train-0": {"status": {}}})
    run = spec(activeDeadlineSeconds=3600)
    step = plan(OWNER, run, OperatorConfig(), Progress(), children)
    assert step.stage == "Training"
    assert with_deadlines(step, OWNER, run, children, NOW - timedelta(seconds=3599), NOW, NOW,
                          None) is step
    failed = with_deadlines(step, OWNER, run, children, NOW - timedelta(seconds=3601), NOW,
                            NOW, None)
    assert (failed.phase, failed.stage, failed.reason) == ("Failed", "Training",
                                                           "DeadlineExceeded")
    assert failed.message.startswith("the run did not finish within "
                                     "spec.activeDeadlineSeconds (3600 s); it was training")
    assert failed.delete == [("Job", "r-train-0")]  # the finished pipeline stays
    # Without a deadline, a run may take as long as it takes.
    assert with_deadlines(step, OWNER, spec(), children, NOW - timedelta(days=30), NOW, NOW,
                          None) is step
