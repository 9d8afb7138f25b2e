"""A run's life beyond the happy path, with the real operator and API server: a failing
stage, suspend and resume, an operator restart mid-run, and deleting the run."""

from __future__ import annotations

from typing import Any

import pytest
from operator_harness import Kubelet, running_operator, wait_for

pytestmark = pytest.mark.kube

SPEC: dict[str, Any] = {
    "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
    "prompts": {"builtin": "harmlessness"},
    "generator": {"backend": "openai", "gpus": 1},
    "training": {"nodes": 2, "gpusPerNode": 8},
    "storage": {"pvc": "spa-runs"},
}


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
        kubelet.complete("steady-eval-0")
        kubelet.wait_status("steady", "phase Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert job_names(kubelet) == {"steady-pipeline-0", "steady-train-0", "steady-eval-0"}
    created = [e.message for e in kubelet.events("steady") if e.reason == "Created"]
    assert len(created) == len(set(created)), created  # nothing was created twice


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
