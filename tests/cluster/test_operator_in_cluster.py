"""The operator as a user installs it: its image built from images/Dockerfile, the Helm chart
(CRDs, ServiceAccount, RBAC, Deployment) installed with real helm, running in a pod on the
one-node cluster, reconciling a run it is given with `kubectl apply`.

What this checks is the operator's own path (tests/cluster/test_run_in_cluster.py runs a
whole run): in-cluster credentials, the chart's RBAC for every child it creates, status
written back, `kubectl get spar`, the garbage collector removing the children with the run,
and `helm uninstall` leaving no run stuck behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cluster_env import REPO, Cluster
from waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

RELEASE_NAMESPACE = "spa-system"


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[str]:
    repository, tag = cluster.images["operator"].rsplit(":", 1)
    cluster.helm("install", "spa", str(REPO / "charts" / "spa-operator"),
                 "--namespace", RELEASE_NAMESPACE, "--create-namespace",
                 "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                 "--set", "image.pullPolicy=Never", "--set", "workloadImages.pullPolicy=Never",
                 "--set", "operator.reconcileSeconds=2",
                 # Requests a 2-CPU node can grant: a pod that cannot start here must fail for
                 # the reason each test gives it (GPUs, an image), not for want of CPUs.
                 "--set", "operator.generatorCpu=100m", "--set", "operator.generatorMemory=256Mi",
                 "--set", "operator.trainerCpu=100m", "--set", "operator.trainerMemory=256Mi",
                 "--wait", "--timeout", "5m", timeout=400)
    yield RELEASE_NAMESPACE
    cluster.helm("uninstall", "spa", "--namespace", RELEASE_NAMESPACE, "--wait",
                 "--ignore-not-found", timeout=300)


def _children(cluster: Cluster, namespace: str, run: str) -> list[str]:
    out = cluster.kubectl("-n", namespace, "get", "deploy,svc,job,configmap",
                          "-l", f"alignment.spa.dev/run={run}", "-o", "name")
    return sorted(out.split())


def test_chart_installed_operator_reconciles_a_run(cluster: Cluster, operator: str,
                                                   namespace: str) -> None:
    pods = json.loads(cluster.kubectl("-n", operator, "get", "pods", "-o", "json"))["items"]
    assert len(pods) == 1
    (status,) = pods[0]["status"]["containerStatuses"]
    image = cluster.images["operator"]
    assert status["ready"] and status["image"].endswith(image.split("/", 1)[1])

    cluster.run_volume(namespace)
    cluster.apply(f"""
apiVersion: alignment.spa.dev/v1alpha1
kind: SPAAlignmentRun
metadata: {{name: tiny}}
spec:
  model: {{name: HuggingFaceTB/SmolLM2-135M-Instruct}}
  prompts: {{builtin: harmlessness, count: 4}}
  sampling: {{numSamples: 2, maxTokens: 16}}
  generator: {{backend: openai, gpus: 0}}
  training: {{gpusPerNode: 0}}
  storage: {{pvc: spa-runs, uri: "runs/{{name}}"}}
""", namespace)

    def generator_created() -> list[str] | None:
        children = _children(cluster, namespace, "tiny")
        return children if "deployment.apps/tiny-generator-0" in children else None

    children = wait_for("the operator pod to create the run's generator", generator_created,
                        120, lambda: cluster.describe(namespace) + cluster.kubectl(
                            "-n", operator, "logs", "deploy/spa-spa-operator", "--tail=50",
                            check=False))
    assert "service/tiny-generator" in children
    assert "configmap/tiny-spec" in children

    def phase() -> str | None:
        run = cluster.get("spar", "tiny", namespace)
        return (run or {}).get("status", {}).get("phase")

    assert wait_for("the run's phase in status", phase, 60) in ("Pending", "Running")
    table = cluster.kubectl("-n", namespace, "get", "spar")
    assert table.split()[:6] == ["NAME", "PHASE", "ITERATION", "PAIRS", "READY", "AGE"], table

    cluster.kubectl("-n", namespace, "delete", "spar", "tiny", "--wait=true", timeout=120)
    wait_for("the garbage collector to remove the run's children",
             lambda: _children(cluster, namespace, "tiny") == [], 120,
             lambda: "\n".join(_children(cluster, namespace, "tiny")))


def _stalled(cluster: Cluster, namespace: str, run: str) -> dict[str, Any] | None:
    status = (cluster.get("spar", run, namespace) or {}).get("status", {})
    return next((c for c in status.get("conditions", [])
                 if c["type"] == "Stalled" and c["status"] == "True"), None)


def test_pods_that_cannot_start_are_reported_and_a_generator_deadline_fails_the_run(
        cluster: Cluster, operator: str, namespace: str) -> None:
    cluster.run_volume(namespace)
    # More GPUs than the node has (none), and an image nobody built.
    for name, generator in (("greedy", "{backend: openai, gpus: 1, startDeadlineSeconds: 60}"),
                            ("typo", "{backend: openai, gpus: 0, "
                                     "image: localhost/spa-vllm-typo:1}")):
        cluster.apply(f"""
apiVersion: alignment.spa.dev/v1alpha1
kind: SPAAlignmentRun
metadata: {{name: {name}}}
spec:
  model: {{name: HuggingFaceTB/SmolLM2-135M-Instruct}}
  generator: {generator}
  training: {{gpusPerNode: 0}}
  storage: {{pvc: spa-runs}}
""", namespace)
    greedy = wait_for("the unschedulable generator in status",
                      lambda: _stalled(cluster, namespace, "greedy"), 120,
                      lambda: cluster.describe(namespace))
    assert greedy["reason"] == "Unschedulable", greedy
    assert "Insufficient nvidia.com/gpu" in greedy["message"], greedy
    typo = wait_for("the missing image in status", lambda: _stalled(cluster, namespace, "typo"),
                    120, lambda: cluster.describe(namespace))
    assert typo["reason"] in ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff"), typo
    assert "localhost/spa-vllm-typo:1" in typo["message"], typo
    events = json.loads(cluster.kubectl("-n", namespace, "get", "events", "--field-selector",
                                        "involvedObject.name=greedy,reason=Unschedulable",
                                        "-o", "json"))["items"]
    assert events and events[0]["type"] == "Warning"

    def failed() -> dict[str, Any] | None:
        status = (cluster.get("spar", "greedy", namespace) or {}).get("status", {})
        return status if status.get("phase") == "Failed" else None

    status = wait_for("the generator's start deadline to fail the run", failed, 180,
                      lambda: cluster.describe(namespace))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "GeneratorStartTimeout"
    assert "Insufficient nvidia.com/gpu" in status["message"]
    wait_for("the generator to be deleted", lambda: not [
        c for c in _children(cluster, namespace, "greedy") if c.startswith("deployment")], 120)


def test_runs_outlive_an_uninstalled_operator_and_can_still_be_deleted(
        cluster: Cluster, operator: str, namespace: str) -> None:
    cluster.run_volume(namespace)
    cluster.apply("""
apiVersion: alignment.spa.dev/v1alpha1
kind: SPAAlignmentRun
metadata: {name: orphan}
spec:
  model: {name: HuggingFaceTB/SmolLM2-135M-Instruct}
  generator: {backend: openai, gpus: 0}
  training: {gpusPerNode: 0}
  storage: {pvc: spa-runs}
""", namespace)
    wait_for("the operator to reconcile the run",
             lambda: (cluster.get("spar", "orphan", namespace) or {}).get("status", {})
             .get("phase"), 120)
    assert not cluster.get("spar", "orphan", namespace)["metadata"].get("finalizers")

    # The operator goes first (as a GitOps tool pruning it may do); nothing waits on it.
    cluster.helm("uninstall", "spa", "--namespace", operator, "--wait", timeout=300)
    cluster.kubectl("-n", namespace, "delete", "spar", "orphan", "--wait=true",
                    "--timeout=60s", timeout=120)
    wait_for("the run's children to be garbage-collected",
             lambda: _children(cluster, namespace, "orphan") == [], 120,
             lambda: "\n".join(_children(cluster, namespace, "orphan")))
