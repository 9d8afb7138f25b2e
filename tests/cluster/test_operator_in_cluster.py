"""The operator as a user installs it: its image built from images/Dockerfile, the Helm chart
(CRDs, ServiceAccount, RBAC, Deployment) installed with real helm, running in a pod on the
one-node cluster, reconciling a run it is given with `kubectl apply`.

The worker, trainer and vLLM images are not built yet, so the run's generator pod cannot
start; what this checks is the operator's own path: in-cluster credentials, the chart's RBAC
for every child it creates, status written back, `kubectl get spar`, and the garbage
collector removing the children with the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

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
                 "--wait", "--timeout", "5m", timeout=400)
    yield RELEASE_NAMESPACE
    cluster.helm("uninstall", "spa", "--namespace", RELEASE_NAMESPACE, "--wait", timeout=300)


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

    cluster.run_volume(namespace, uid=65532)
    cluster.apply(f"""
apiVersion: alignment.spa.dev/v1alpha1
kind: SPAAlignmentRun
metadata: {{name: tiny}}
spec:
  model: {{name: HuggingFaceTB/SmolLM2-135M-Instruct}}
  prompts: {{builtin: harmlessness, count: 4}}
  sampling: {{numSamples: 2, maxTokens: 16}}
  generator: {{backend: openai, gpus: 0}}
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
