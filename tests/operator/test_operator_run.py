"""The real kopf operator against the real API server, with the test playing the kubelet.

No scheduler, controller-manager or kubelet runs, so the test does their part: it marks the
generator Deployment available, creates the pipeline's pod with its termination message,
and completes each Job, then checks the run's status, children and events.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

pytestmark = pytest.mark.kube

GROUP, VERSION, RUNS = "alignment.spa.dev", "v1alpha1", "spaalignmentruns"
TIMEOUT = 60.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_for(what: str, probe: Any, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


class Kubelet:
    """Plays the controllers and kubelet the test API server lacks."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.ns = namespace
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def get(self, read: Any, name: str) -> Any:
        from kubernetes.client.rest import ApiException

        try:
            return read(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def run(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, RUNS, name)

    def make_available(self, deployment: str) -> None:
        dep = wait_for(f"Deployment {deployment}",
                       lambda: self.get(self.apps.read_namespaced_deployment, deployment))
        replicas = dep.spec.replicas
        self.apps.patch_namespaced_deployment_status(deployment, self.ns, {"status": {
            "observedGeneration": dep.metadata.generation, "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas}})

    def complete(self, job_name: str, termination: dict[str, str] | None = None) -> None:
        """Finish a Job successfully, with a pod whose containers left these messages."""
        job = wait_for(f"Job {job_name}", lambda: self.get(self.batch.read_namespaced_job,
                                                           job_name))
        if termination:
            self._pod(job, termination)
        now = _now()
        completions = job.spec.completions or 1
        self.batch.patch_namespaced_job_status(job_name, self.ns, {"status": {
            "startTime": now, "active": 0, "ready": 0, "terminating": 0,
            "succeeded": completions}})
        self.batch.patch_namespaced_job_status(job_name, self.ns, {"status": {
            "completionTime": now,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods",
                 "lastProbeTime": now, "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods",
                 "lastProbeTime": now, "lastTransitionTime": now},
            ]}})

    def _pod(self, job: Any, termination: dict[str, str]) -> None:
        template = job.spec.template.spec
        containers = [{"name": c.name, "image": c.image} for c in template.containers]
        pod = self.core.create_namespaced_pod(self.ns, {"metadata": {
            "name": f"{job.metadata.name}-abcde",
            "labels": {"batch.kubernetes.io/job-name": job.metadata.name}},
            "spec": {"containers": containers, "restartPolicy": "Never"}})
        statuses = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                     "restartCount": 0, "state": {"terminated": {
                         "exitCode": 0, "reason": "Completed",
                         "message": termination.get(c["name"], ""),
                         "startedAt": _now(), "finishedAt": _now()}}}
                    for c in containers]
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, {"status": {
            "phase": "Succeeded", "containerStatuses": statuses}})


@pytest.fixture
def operator(kube: Any, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from kopf.testing import KopfRunner

    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    monkeypatch.setenv("SPA_OPERATOR_RECONCILE_SECONDS", "1")
    args = ["run", "-m", "spa_operator.main", "--standalone", "--namespace", namespace]
    with KopfRunner(args, timeout=120) as runner:
        yield runner
    # kopf's event loop ends with some aiohttp connections unclosed; finalize them now, with
    # their ResourceWarnings silenced, rather than at a random later GC (where pytest's
    # warnings-as-errors turns them into failures far from here).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


def test_happy_path_runs_every_stage_and_reports_status(
        operator: Any, api_client: Any, namespace: str) -> None:
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
    kubelet.complete("harmless-eval-0")

    status = wait_for("run Succeeded", lambda: (s := kubelet.run("harmless").get("status", {}))
                      .get("phase") == "Succeeded" and s)
    assert status["stage"] == "Done" and status["iteration"] == 0
    assert status["counts"] == {"prompts": 10, "samples": 30, "kept": 6, "pairs": 42}
    assert status["startTime"] and status["completionTime"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Succeeded")
    assert status["artifacts"]["model"] == \
        "/spa/storage/runs/harmless/iter-00/train/checkpoint-final"

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
        "harmless-train-0", "harmless-eval-0"}
    for child in children:
        (ref,) = child.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller) == \
            ("SPAAlignmentRun", "harmless", uid, True)

    events = client.CoreV1Api(api_client).list_namespaced_event(
        namespace, field_selector="involvedObject.name=harmless").items
    reasons = {e.reason for e in events}
    assert {"WaitingForGenerator", "Sampling", "Training", "Evaluating", "Succeeded"} <= reasons


def test_a_spec_that_cannot_run_in_a_cluster_fails_naming_the_field(
        operator: Any, api_client: Any, namespace: str) -> None:
    from kubernetes import client

    kubelet = Kubelet(api_client, namespace)
    # Valid for the CRD and for `spa run`, but a pod-local run directory would be lost.
    kubelet.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, RUNS, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SPAAlignmentRun",
        "metadata": {"name": "nowhere"},
        "spec": {"model": {"name": "org/model"}, "storage": {"uri": "runs/{name}"}}})
    status = wait_for("run Failed", lambda: (s := kubelet.run("nowhere").get("status", {}))
                      .get("phase") == "Failed" and s)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.storage" in ready["message"]
    events = wait_for("a Warning event", lambda: [
        e for e in client.CoreV1Api(api_client).list_namespaced_event(
            namespace, field_selector="involvedObject.name=nowhere").items
        if e.type == "Warning" and e.reason == "InvalidSpec"])
    assert "spec.storage" in events[0].message
    # Nothing was created for it.
    assert client.BatchV1Api(api_client).list_namespaced_job(namespace).items == []
    assert client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items == []
