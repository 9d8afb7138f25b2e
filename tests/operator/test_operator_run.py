"""The real kopf operator against the real API server, with the test playing the kubelet.

No scheduler, controller-manager or kubelet runs, so the test does their part: it marks the
generator Deployment available, creates the pipeline's pod with its termination message,
and completes each Job, then checks the run's status, children and events.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_harness import GROUP, RUNS, VERSION, Kubelet, wait_for

pytestmark = pytest.mark.kube

def test_happy_path_runs_every_stage_and_reports_status(
        operator: Any, api_client: Any, namespace: str, metrics_port: int) -> None:
    from kubernetes import client

    kubelet = Kubelet(api_client, namespace)
    run = kubelet.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, RUNS, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SPAAlignmentRun",
        "metadata": {"name": "harmless"},
        "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
                 "prompts": {"builtin": "harmlessness"},
                 "generator": {"backend": "openai", "gpus": 1},
                 "training": {"nodes": 2, "gpusPerNode": 8},
                 "storage": {"pvc": "spa-runs"},
                 "scheduling": {"queueName": "gpu"}}})
    uid = run["metadata"]["uid"]

    kubelet.make_available("harmless-generator-0")
    wait_for("status Pipeline", lambda: kubelet.run("harmless").get("status", {}).get("stage")
             == "Pipeline")
    counts = '{"prompts": 10, "samples": 30, "kept": 6, "pairs": 42}'
    kubelet.complete("harmless-pipeline-0", termination={"pairs": counts})

    # GPUs are handed from the generator to training.
    wait_for("generator deleted", lambda: kubelet.get(
        kubelet.apps.read_namespaced_deployment, "harmless-generator-0") is None)
    kubelet.complete("harmless-train-0")
    headline = {"beforePrimary": 5.5, "afterPrimary": 7.25, "beforeHelpfulness": 6.0,
                "afterHelpfulness": 6.5, "winRatePrimary": 0.75, "winRateHelpfulness": 0.5}
    kubelet.evaluate("harmless", termination={
        "evaluate": json.dumps({"stage": "evaluate", "prompts": 10, "evaluation": headline})})

    status = wait_for("run Succeeded", lambda: (s := kubelet.run("harmless").get("status", {}))
                      .get("phase") == "Succeeded" and s)
    assert status["stage"] == "Done" and status["iteration"] == 0
    assert status["counts"] == {"prompts": 10, "samples": 30, "kept": 6, "pairs": 42}
    assert status["startTime"] and status["completionTime"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")
    assert status["artifacts"]["model"] == \
        "/spa/storage/runs/harmless/iter-00/train/checkpoint-final"
    assert status["artifacts"]["report"] == "/spa/storage/runs/harmless/report/report.html"
    assert status["evaluation"] == headline
    # The operator wrote status only: no finalizer (an uninstalled operator would leave the
    # run stuck Terminating), no bookkeeping annotations, the spec as it was created.
    meta = kubelet.run("harmless")["metadata"]
    assert not meta.get("finalizers"), meta
    assert not meta.get("annotations"), meta
    assert kubelet.run("harmless")["spec"] == run["spec"]

    # Every child is owned by the run (deleting it garbage-collects them).
    selector = "alignment.spa.dev/run=harmless"
    children = [
        *client.CoreV1Api(api_client).list_namespaced_config_map(
            namespace, label_selector=selector).items,
        *client.CoreV1Api(api_client).list_namespaced_service(
            namespace, label_selector=selector).items,
        *client.BatchV1Api(api_client).list_namespaced_job(
            namespace, label_selector=selector).items,
    ]
    assert {c.metadata.name for c in children} >= {
        "harmless-spec", "harmless-generator", "harmless-pipeline-0", "harmless-accelerate",
        "harmless-train-0", "harmless-answers-0", "harmless-eval-0"}
    for child in children:
        (ref,) = child.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller) == \
            ("SPAAlignmentRun", "harmless", uid, True)

    events = client.CoreV1Api(api_client).list_namespaced_event(
        namespace, field_selector="involvedObject.name=harmless").items
    reasons = {e.reason for e in events}
    assert {"WaitingForGenerator", "Sampling", "Training", "Evaluating", "Succeeded"} <= reasons

    # What Prometheus scrapes from the operator.
    metrics = scrape(metrics_port)
    assert metrics[("spa_runs", (("namespace", namespace), ("phase", "Succeeded")))] == 1.0
    assert metrics[("spa_runs", (("namespace", namespace), ("phase", "Running")))] == 0.0
    for stage in ("Generator", "Pipeline", "Training", "Evaluation"):
        assert metrics[("spa_stage_duration_seconds_count", (("stage", stage),))] >= 1


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's /metrics, parsed: (name, sorted labels) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.mark.parametrize(("changed", "field"), [
    # A pod-local run directory would be lost.
    ({"storage": {"uri": "runs/{name}"}}, "spec.storage"),
    # The project's trainer image has no DeepSpeed: refused now, not after sampling.
    ({"storage": {"pvc": "spa-runs"}, "training": {"gpusPerNode": 0, "strategy": "deepspeed"}},
     "spec.training.strategy"),
], ids=["pod-local-run-directory", "deepspeed"])
def test_a_spec_that_cannot_run_in_a_cluster_fails_naming_the_field(
        operator: Any, api_client: Any, namespace: str, changed: dict[str, Any],
        field: str) -> None:
    from kubernetes import client

    kubelet = Kubelet(api_client, namespace)
    # Valid for the CRD and for `spa run`, not for a cluster.
    kubelet.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, RUNS, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SPAAlignmentRun",
        "metadata": {"name": "nowhere"},
        "spec": {"model": {"name": "org/model"}, "training": {"gpusPerNode": 0}, **changed}})
    status = wait_for("run Failed", lambda: (s := kubelet.run("nowhere").get("status", {}))
                      .get("phase") == "Failed" and s)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert field in ready["message"]
    events = wait_for("a Warning event", lambda: [
        e for e in client.CoreV1Api(api_client).list_namespaced_event(
            namespace, field_selector="involvedObject.name=nowhere").items
        if e.type == "Warning" and e.reason == "InvalidSpec"])
    assert field in events[0].message
    # Nothing was created for it.
    assert client.BatchV1Api(api_client).list_namespaced_job(namespace).items == []
    assert client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items == []


def test_a_pod_template_the_api_server_refuses_fails_the_run_before_anything_starts(
        operator: Any, api_client: Any, namespace: str) -> None:
    from kubernetes import client

    kubelet = Kubelet(api_client, namespace)
    # Valid for the CRD (a podTemplate's spec is a free-form PodSpec) and for the operator's
    # own checks; only the API server knows a memory quantity cannot be "lots".
    kubelet.create_run(
        "greedy", model={"name": "org/model"}, generator={"backend": "openai", "gpus": 1},
        training={"gpusPerNode": 0}, storage={"pvc": "spa-runs"},
        scheduling={"training": {"podTemplate": {"spec": {"containers": [
            {"name": "trainer", "resources": {"limits": {"memory": "lots"}}}]}}}})
    status = kubelet.wait_status("greedy", "Failed", lambda s: s.get("phase") == "Failed")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    message = ready["message"]
    assert "training Job greedy-train-0" in message
    assert "spec.scheduling.training.podTemplate" in message
    assert "quantities must match" in message  # the API server's own words
    assert any(e.reason == "InvalidSpec" and "quantities must match" in e.message
               for e in kubelet.events("greedy"))
    # The dry run created nothing, and the first workloads were never created either.
    assert client.BatchV1Api(api_client).list_namespaced_job(namespace).items == []
    assert client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items == []


def test_pod_templates_reach_the_pods_the_api_server_stores(
        operator: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    kubelet.create_run(
        "tuned", model={"name": "org/model"}, generator={"backend": "openai", "gpus": 1},
        training={"gpusPerNode": 0}, storage={"pvc": "spa-runs"},
        scheduling={
            "podTemplate": {"metadata": {"annotations": {"example.com/team": "align"}},
                            "spec": {"imagePullSecrets": [{"name": "registry"}]}},
            "generator": {"podTemplate": {"spec": {"containers": [
                {"name": "vllm", "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
                 "resources": {"limits": {"memory": "40Gi"}}}]}}}})
    deployment = wait_for("generator created", lambda: kubelet.get(
        kubelet.apps.read_namespaced_deployment, "tuned-generator-0"))
    template = deployment.spec.template
    assert template.metadata.annotations == {"example.com/team": "align"}
    assert [s.name for s in template.spec.image_pull_secrets] == ["registry"]
    (vllm,) = template.spec.containers
    assert {e.name: e.value for e in vllm.env}["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert vllm.resources.limits == {"memory": "40Gi", "nvidia.com/gpu": "1"}
    assert vllm.args[:2] == ["--model", "org/model"]  # the operator's command stays
    assert kubelet.status_of("tuned").get("phase") != "Failed"
