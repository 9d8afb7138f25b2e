"""Driving the real operator against the real API server: the test plays the kubelet.

No scheduler, kubelet or workload controllers run (only the garbage collector), so the
harness does their part: it marks Deployments available, creates a Job's pod with its
containers' termination messages, and completes or fails Jobs.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from waiting import wait_for

GROUP, VERSION = "alignment.spa.dev", "v1alpha1"
RUNS, SCHEDULES = "spaalignmentruns", "spaalignmentschedules"
TIMEOUT = 60.0
#: A run on GPUs (the harness plays its pods): vLLM on one GPU, training on 2 nodes x 8.
GPU_RUN: dict[str, Any] = {
    "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
    "prompts": {"builtin": "harmlessness"},
    "generator": {"backend": "openai", "gpus": 1},
    "training": {"nodes": 2, "gpusPerNode": 8},
    "storage": {"pvc": "spa-runs"},
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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

    def unschedulable(self, deployment: str, message: str) -> str:
        """A pod of the Deployment that the scheduler cannot place (as it reports it)."""
        dep = wait_for(f"Deployment {deployment}",
                       lambda: self.get(self.apps.read_namespaced_deployment, deployment))
        template = dep.spec.template
        pod = self.core.create_namespaced_pod(self.ns, {
            "metadata": {"name": f"{deployment}-5d8f9-x2x7q", "labels": template.metadata.labels},
            "spec": {"containers": [{"name": c.name, "image": c.image}
                                    for c in template.spec.containers]}})
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, {"status": {
            "phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": _now()}]}})
        return str(pod.metadata.name)

    def complete(self, job_name: str, termination: dict[str, str] | None = None) -> None:
        """Finish a Job successfully, with a pod whose containers left these messages."""
        job = wait_for(f"Job {job_name}", lambda: self.get(self.batch.read_namespaced_job,
                                                           job_name))
        if termination:
            self._pod(job, termination)
        self._finish(job_name, {"succeeded": job.spec.completions or 1}, "CompletionsReached",
                     "Reached expected number of succeeded pods",
                     ["SuccessCriteriaMet", "Complete"])

    def evaluate(self, run: str, iteration: int = 0,
                 termination: dict[str, str] | None = None) -> None:
        """Play an iteration's evaluation: vLLM serving the trained checkpoint comes up and
        the answers Job finishes, then vLLM serving the starting policy and the eval Job."""
        self.make_available(f"{run}-generator-{iteration + 1}")
        self.complete(f"{run}-answers-{iteration}")
        self.make_available(f"{run}-generator-{iteration}")
        self.complete(f"{run}-eval-{iteration}", termination)

    def fail(self, job_name: str, container: str, message: str) -> None:
        """Fail a Job beyond its backoff: its pod's `container` exited 1 leaving `message`."""
        job = wait_for(f"Job {job_name}", lambda: self.get(self.batch.read_namespaced_job,
                                                           job_name))
        self._pod(job, {container: message}, failed=container)
        self._finish(job_name, {"failed": 1}, "BackoffLimitExceeded",
                     "Job has reached the specified backoff limit", ["FailureTarget", "Failed"])

    def _finish(self, job_name: str, counts: dict[str, int], reason: str, message: str,
                conditions: list[str]) -> None:
        """Write a Job's final status as the Job controller does (counts, then conditions)."""
        now = _now()
        self.batch.patch_namespaced_job_status(job_name, self.ns, {"status": {
            "startTime": now, "active": 0, "ready": 0, "terminating": 0, **counts}})
        final = {"conditions": [{"type": c, "status": "True", "reason": reason,
                                 "message": message, "lastProbeTime": now,
                                 "lastTransitionTime": now} for c in conditions]}
        if "Complete" in conditions:
            final["completionTime"] = now
        self.batch.patch_namespaced_job_status(job_name, self.ns, {"status": final})

    def _pod(self, job: Any, termination: dict[str, str], failed: str | None = None) -> None:
        template = job.spec.template.spec
        containers = [{"name": c.name, "image": c.image}
                      for c in [*(template.init_containers or []), *template.containers]]
        pod = self.core.create_namespaced_pod(self.ns, {"metadata": {
            "name": f"{job.metadata.name}-abcde",
            "labels": {"batch.kubernetes.io/job-name": job.metadata.name}},
            "spec": {"containers": containers, "restartPolicy": "Never"}})
        statuses = [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                     "restartCount": 0, "state": {"terminated": {
                         "exitCode": 1 if c["name"] == failed else 0,
                         "reason": "Error" if c["name"] == failed else "Completed",
                         "message": termination.get(c["name"], ""),
                         "startedAt": _now(), "finishedAt": _now()}}}
                    for c in containers]
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, {"status": {
            "phase": "Failed" if failed else "Succeeded", "containerStatuses": statuses}})

    def create_run(self, name: str, **spec: Any) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, RUNS, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "SPAAlignmentRun",
            "metadata": {"name": name}, "spec": spec})

    def status_of(self, name: str) -> dict[str, Any]:
        return self.run(name).get("status") or {}

    def wait_status(self, name: str, what: str, check: Any,
                    timeout: float = TIMEOUT) -> dict[str, Any]:
        """Wait until `check(status)` holds for run `name`; return that status."""
        return wait_for(f"run {name}: {what}",
                        lambda: (s := self.status_of(name)) and check(s) and s, timeout)

    def events(self, name: str) -> list[Any]:
        return self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}").items


@contextmanager
def running_operator(namespace: str | None = None,
                     args: list[str] | None = None) -> Iterator[Any]:
    """The real operator (kopf, in a thread of this process) watching `namespace`, or run
    with kopf's command-line `args` (as a Deployment would start it).

    The caller sets KUBECONFIG and SPA_OPERATOR_RECONCILE_SECONDS.
    """
    from kopf.testing import KopfRunner

    if args is None:
        assert namespace is not None
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


