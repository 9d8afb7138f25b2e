"""A run's life beyond the happy path, with the real operator and API server: a failing
stage, suspend and resume, an operator restart mid-run, and deleting the run."""

from __future__ import annotations

from typing import Any

import pytest
from operator_harness import GPU_RUN as SPEC
from operator_harness import Kubelet, running_operator, wait_for

pytestmark = pytest.mark.kube


def job_names(kubelet: Kubelet) -> set[str]:
    return {j.metadata.name for j in kubelet.batch.list_namespaced_job(kubelet.ns).items}


def test_a_failed_stage_fails_the_run_with_the_pods_termination_message(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    kubelet.create_run("broken", **SPEC)
    kubelet.make_available("broken-generator-0")
    kubelet.wait_status("broken", "stage Pipeline", lambda s: s.get("stage") == "Pipeline")
    kubelet.fail("broken-pipeline-0", "score",
                 "error: http://broken-generator:8000/v1 is unreachable")

    status = kubelet.wait_status("broken", "phase Failed", lambda s: s.get("phase") == "Failed")
    assert status["stage"] == "Pipeline"
    assert "Job broken-pipeline-0 failed (BackoffLimitExceeded)" in status["message"]
    assert "container score exited with 1: error: http://broken-generator:8000/v1 is " \
        "unreachable" in status["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PipelineFailed")
    assert status["completionTime"]
    # The GPUs are given back, and the failure is announced.
    wait_for("generator deleted", lambda: kubelet.get(
        kubelet.apps.read_namespaced_deployment, "broken-generator-0") is None)
    warnings = wait_for("a Warning event", lambda: [
        e for e in kubelet.events("broken") if e.type == "Warning"
        and e.reason == "PipelineFailed"])
    assert "container score exited with 1" in warnings[0].message


def test_a_failed_run_is_retried_from_its_finished_stages_when_annotated(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    # A retry requested before the failure is not taken as a request to retry it.
    kubelet.create_run("again", **{**SPEC, "training": {**SPEC["training"], "maxRestarts": 0}})
    annotate(kubelet, "again", "early")
    kubelet.make_available("again-generator-0")
    kubelet.complete("again-pipeline-0")
    kubelet.fail("again-train-0", "trainer", "RuntimeError: CUDA error: an illegal memory "
                 "access was encountered")
    status = kubelet.wait_status("again", "phase Failed", lambda s: s.get("phase") == "Failed")
    assert status["finishedStages"] == ["Pipeline"] and status["retriedFor"] == "early"
    assert not status.get("retries")

    annotate(kubelet, "again", "1")
    status = kubelet.wait_status("again", "retried", lambda s: s.get("retries") == 1)
    assert status["phase"] == "Running" and "completionTime" not in status
    assert "deleted the failed Job(s) again-train-0" in status["message"]
    retried = wait_for("a Retrying event", lambda: [
        e for e in kubelet.events("again") if e.reason == "Retrying"])
    assert "from the finished stages ['Pipeline']" in retried[0].message
    # Training runs again; the finished pipeline does not, nor does the generator come back.
    wait_for("a new training Job", lambda: (job := kubelet.get(
        kubelet.batch.read_namespaced_job, "again-train-0")) is not None
        and not (job.status.conditions or []))
    assert kubelet.get(kubelet.apps.read_namespaced_deployment, "again-generator-0") is None
    kubelet.complete("again-train-0")
    kubelet.evaluate("again")
    status = kubelet.wait_status("again", "phase Succeeded",
                                 lambda s: s.get("phase") == "Succeeded")
    assert status["retries"] == 1
    created = [e.message for e in kubelet.events("again") if e.reason == "Created"]
    assert created.count("created Job again-pipeline-0") == 1, created


def annotate(kubelet: Kubelet, run: str, retry: str) -> None:
    kubelet.custom.patch_namespaced_custom_object(
        "alignment.spa.dev", "v1alpha1", kubelet.ns, "spaalignmentruns", run,
        {"metadata": {"annotations": {"alignment.spa.dev/retry": retry}}})


def test_a_failed_training_group_restarts_once_then_the_run_goes_on(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    kubelet.create_run("lost-node", **{**SPEC, "training": {**SPEC["training"],
                                                            "maxRestarts": 1}})
    kubelet.make_available("lost-node-generator-0")
    kubelet.complete("lost-node-pipeline-0")
    kubelet.fail("lost-node-train-0", "trainer", "RuntimeError: Connection reset by peer")

    wait_for("the second training attempt", lambda: "lost-node-train-0-r1" in job_names(kubelet))
    status = kubelet.wait_status("lost-node", "a restart in status",
                                 lambda s: s.get("trainingRestarts") == 1)
    assert status["phase"] == "Running" and status["stage"] == "Training"
    warnings = wait_for("a TrainingRestarted event", lambda: [
        e for e in kubelet.events("lost-node") if e.reason == "TrainingRestarted"])
    assert warnings[0].type == "Warning"
    assert "container trainer exited with 1: RuntimeError: Connection reset by peer" in \
        warnings[0].message
    # The restart budget (1) is spent: the next failure fails the run, naming both.
    kubelet.fail("lost-node-train-0-r1", "trainer", "RuntimeError: out of memory")
    status = kubelet.wait_status("lost-node", "phase Failed", lambda s: s.get("phase") == "Failed")
    assert "Job lost-node-train-0-r1 failed (BackoffLimitExceeded)" in status["message"]
    assert "after 1 restart(s)" in status["message"]
    assert "RuntimeError: out of memory" in status["message"]
    assert job_names(kubelet) == {"lost-node-pipeline-0", "lost-node-train-0",
                                  "lost-node-train-0-r1"}


def test_suspend_deletes_running_children_and_resume_continues_from_the_finished_stage(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    kubelet.create_run("pausable", **SPEC)
    kubelet.make_available("pausable-generator-0")
    kubelet.complete("pausable-pipeline-0",
                     termination={"pairs": '{"prompts": 4, "samples": 20, "kept": 2, '
                                           '"pairs": 9}'})
    kubelet.wait_status("pausable", "stage Training", lambda s: s.get("stage") == "Training")
    wait_for("training Job", lambda: "pausable-train-0" in job_names(kubelet))

    kubelet.custom.patch_namespaced_custom_object(
        "alignment.spa.dev", "v1alpha1", namespace, "spaalignmentruns", "pausable",
        {"spec": {"suspend": True}})
    status = kubelet.wait_status("pausable", "phase Suspended",
                                 lambda s: s.get("phase") == "Suspended")
    suspended = next(c for c in status["conditions"] if c["type"] == "Suspended")
    assert suspended["status"] == "True"
    # The running training Job is gone; the finished pipeline Job (the run's memory) stays.
    wait_for("training Job deleted", lambda: "pausable-train-0" not in job_names(kubelet))
    assert "pausable-pipeline-0" in job_names(kubelet)
    assert status["counts"]["pairs"] == 9  # artifacts and counts are kept

    kubelet.custom.patch_namespaced_custom_object(
        "alignment.spa.dev", "v1alpha1", namespace, "spaalignmentruns", "pausable",
        {"spec": {"suspend": False}})
    kubelet.wait_status("pausable", "back to Training",
                        lambda s: (s.get("phase"), s.get("stage")) == ("Running", "Training"))
    wait_for("training Job again", lambda: "pausable-train-0" in job_names(kubelet))
    # Sampling was not redone: no generator came back.
    assert kubelet.get(kubelet.apps.read_namespaced_deployment, "pausable-generator-0") is None


def test_a_generator_that_cannot_be_scheduled_is_reported_then_fails_the_run(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    kubelet.create_run("greedy", **{**SPEC, "generator": {**SPEC["generator"],
                                                          "startDeadlineSeconds": 60}})
    pod = kubelet.unschedulable("greedy-generator-0", "0/3 nodes are available: 3 "
                                "Insufficient nvidia.com/gpu.")
    # Within seconds, in the run's status and as a Warning event, in the scheduler's words.
    status = kubelet.wait_status("greedy", "Stalled", lambda s: any(
        c["type"] == "Stalled" and c["status"] == "True" for c in s.get("conditions", [])))
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "Unschedulable"
    assert f"pod {pod} is not scheduled: 0/3 nodes are available" in stalled["message"]
    assert "Insufficient nvidia.com/gpu" in status["message"]
    assert status["phase"] == "Running" and status["stage"] == "Generator"
    events = wait_for("an Unschedulable event", lambda: [
        e for e in kubelet.events("greedy") if e.reason == "Unschedulable"])
    assert events[0].type == "Warning" and len(events) == 1

    # Past generator.startDeadlineSeconds the run fails, naming what it waited for, and the
    # generator (holding a GPU request) goes.
    status = kubelet.wait_status("greedy", "phase Failed", lambda s: s.get("phase") == "Failed",
                                 timeout=120)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "GeneratorStartTimeout"
    assert "generator.startDeadlineSeconds (60 s)" in status["message"]
    assert "Insufficient nvidia.com/gpu" in status["message"]
    wait_for("generator deleted", lambda: kubelet.get(
        kubelet.apps.read_namespaced_deployment, "greedy-generator-0") is None)


def test_a_run_waits_for_its_claim_holding_no_gpu_and_says_so(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    kubelet.create_run("early", **{**SPEC, "storage": {"pvc": "not-yet"}})
    status = kubelet.wait_status("early", "waiting for storage",
                                 lambda s: s.get("phase") == "Pending")
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "ClaimNotFound")
    assert f"PersistentVolumeClaim not-yet (storage.pvc) does not exist in namespace " \
        f"{namespace}" in stalled["message"]
    assert kubelet.apps.list_namespaced_deployment(namespace).items == []
    # Once the claim exists, the run goes on.
    kubelet.core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "not-yet"},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}})
    status = kubelet.wait_status("early", "generator", lambda s: s.get("stage") == "Generator"
                                 and s.get("phase") == "Running")
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"
    wait_for("the generator", lambda: kubelet.get(kubelet.apps.read_namespaced_deployment,
                                                  "early-generator-0") is not None)


def test_a_finished_job_deleted_mid_run_is_not_run_again(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    kubelet.create_run("tidy", **SPEC)
    kubelet.make_available("tidy-generator-0")
    kubelet.complete("tidy-pipeline-0")
    kubelet.wait_status("tidy", "the pipeline remembered",
                        lambda s: s.get("finishedStages") == ["Pipeline"])
    wait_for("training Job", lambda: "tidy-train-0" in job_names(kubelet))
    # A user (or a TTL of their own) removes the finished pipeline Job during training.
    kubelet.batch.delete_namespaced_job("tidy-pipeline-0", namespace,
                                        propagation_policy="Background")
    wait_for("pipeline Job gone", lambda: "tidy-pipeline-0" not in job_names(kubelet))
    kubelet.complete("tidy-train-0")
    kubelet.evaluate("tidy")
    status = kubelet.wait_status("tidy", "phase Succeeded",
                                 lambda s: s.get("phase") == "Succeeded")
    assert status["finishedStages"] == ["Pipeline", "Training", "TrainedAnswers", "Evaluation"]
    # The pipeline did not come back (the generator did, for the evaluation only).
    assert job_names(kubelet) == {"tidy-train-0", "tidy-answers-0", "tidy-eval-0"}
    created = [e.message for e in kubelet.events("tidy") if e.reason == "Created"]
    # Nothing was created twice, but the generator: for the pipeline, then the evaluation.
    assert {m for m in created if created.count(m) > 1} == \
        {"created Deployment tidy-generator-0"}, created
    assert created.count("created Deployment tidy-generator-0") == 2, created


def test_a_finished_run_is_deleted_once_its_ttl_has_passed(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    kubelet.create_run("brief", **{**SPEC, "scheduling": {"ttlSecondsAfterFinished": 3}})
    kubelet.make_available("brief-generator-0")
    kubelet.complete("brief-pipeline-0")
    wait_for("training Job", lambda: "brief-train-0" in job_names(kubelet))
    # The run's TTL is not its children's: a finished stage's Job stays while the run does.
    for name in job_names(kubelet):
        job = kubelet.batch.read_namespaced_job(name, namespace)
        assert job.spec.ttl_seconds_after_finished is None, name
    kubelet.complete("brief-train-0")
    kubelet.evaluate("brief")
    kubelet.wait_status("brief", "phase Succeeded", lambda s: s.get("phase") == "Succeeded")
    wait_for("run deleted after its TTL", lambda: kubelet.custom.list_namespaced_custom_object(
        "alignment.spa.dev", "v1alpha1", namespace, "spaalignmentruns")["items"] == [],
        timeout=60)
    wait_for("children garbage-collected", lambda: job_names(kubelet) == set(), timeout=90)


def test_an_operator_restart_mid_run_resumes_without_duplicates(
        kube: Any, api_client: Any, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    monkeypatch.setenv("SPA_OPERATOR_RECONCILE_SECONDS", "1")
    kubelet = Kubelet(api_client, namespace)
    with running_operator(namespace):
        kubelet.create_run("steady", **SPEC)
        kubelet.make_available("steady-generator-0")
        wait_for("pipeline Job", lambda: "steady-pipeline-0" in job_names(kubelet))
    # While no operator runs, the pipeline finishes.
    kubelet.complete("steady-pipeline-0")
    assert kubelet.status_of("steady")["stage"] == "Pipeline"

    with running_operator(namespace):
        kubelet.wait_status("steady", "stage Training", lambda s: s.get("stage") == "Training")
        wait_for("training Job", lambda: "steady-train-0" in job_names(kubelet))
        kubelet.complete("steady-train-0")
        kubelet.evaluate("steady")
        kubelet.wait_status("steady", "phase Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert job_names(kubelet) == {"steady-pipeline-0", "steady-train-0", "steady-answers-0",
                                  "steady-eval-0"}
    created = [e.message for e in kubelet.events("steady") if e.reason == "Created"]
    # Nothing was created twice, but the generator: for the pipeline, then the evaluation.
    assert {m for m in created if created.count(m) > 1} == \
        {"created Deployment steady-generator-0"}, created
    assert created.count("created Deployment steady-generator-0") == 2, created


def test_deleting_a_run_deletes_its_children(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    kubelet.create_run("doomed", **SPEC)
    kubelet.make_available("doomed-generator-0")
    wait_for("pipeline Job", lambda: "doomed-pipeline-0" in job_names(kubelet))

    kubelet.custom.delete_namespaced_custom_object(
        "alignment.spa.dev", "v1alpha1", namespace, "spaalignmentruns", "doomed")

    def children() -> list[str]:
        selector = "alignment.spa.dev/run=doomed"
        return [o.metadata.name for o in [
            *kubelet.core.list_namespaced_config_map(namespace, label_selector=selector).items,
            *kubelet.core.list_namespaced_service(namespace, label_selector=selector).items,
            *kubelet.apps.list_namespaced_deployment(namespace, label_selector=selector).items,
            *kubelet.batch.list_namespaced_job(namespace, label_selector=selector).items]]

    wait_for("children garbage-collected", lambda: children() == [], timeout=90)
    wait_for("run gone", lambda: kubelet.custom.list_namespaced_custom_object(
        "alignment.spa.dev", "v1alpha1", namespace, "spaalignmentruns")["items"] == [])
