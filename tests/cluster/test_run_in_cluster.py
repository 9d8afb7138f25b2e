"""`kubectl apply -f examples/cluster-cpu.yaml`, for real: the operator installed by its chart,
vLLM for CPUs serving the embedded model as the generator Deployment (exported from its GGUF
file by an init container), the pipeline Job's stages in the worker image against it, the
training Job's two pods under torchrun over gloo, and the evaluation Job with the report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from cluster_env import REPO, Cluster
from waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(3600)]

EXAMPLE = REPO / "examples" / "cluster-cpu.yaml"
RELEASE_NAMESPACE = "spa-run-system"
#: The uid the worker and trainer images run as.
IMAGE_UID = 65532


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[str]:
    op, worker, trainer = (cluster.images[t] for t in ("operator", "worker", "trainer"))
    repository, tag = op.rsplit(":", 1)
    cluster.helm("install", "spa-run", str(REPO / "charts" / "spa-operator"),
                 "--namespace", RELEASE_NAMESPACE, "--create-namespace",
                 "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                 "--set", "image.pullPolicy=Never", "--set", "workloadImages.pullPolicy=Never",
                 "--set", f"workloadImages.worker={worker}",
                 # The worker image is built on vLLM's (here: vLLM for CPUs).
                 "--set", f"workloadImages.vllm={worker}",
                 "--set", f"workloadImages.trainer={trainer}",
                 "--set", "operator.pipelineMemory=6Gi",
                 "--wait", "--timeout", "5m", timeout=400)
    yield RELEASE_NAMESPACE
    cluster.helm("uninstall", "spa-run", "--namespace", RELEASE_NAMESPACE, "--wait",
                 timeout=300)


def test_the_cluster_cpu_example_runs_to_succeeded(cluster: Cluster, operator: str,
                                                  namespace: str) -> None:
    volume = cluster.run_volume(namespace, IMAGE_UID)
    cluster.kubectl("-n", namespace, "apply", "-f", str(EXAMPLE))
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]

    def finished() -> dict | None:
        run = cluster.get("spar", name, namespace) or {}
        status = run.get("status", {})
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for("the run to finish", finished, 3000,
                      lambda: cluster.describe(namespace), interval=5)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=2) + cluster.describe(
        namespace)

    # Counts in status come from the stages' termination messages, written in the pods.
    counts = status["counts"]
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    assert counts["prompts"] == spec["prompts"]["count"]
    assert counts["samples"] == spec["prompts"]["count"] * spec["sampling"]["numSamples"]
    assert counts["pairs"] > 0
    run_dir = volume / "runs" / name
    assert (run_dir / "iter-00" / "pairs" / "pairs.parquet").is_file()
    assert (run_dir / "iter-00" / "train" / "checkpoint-final" / "config.json").is_file()
    assert (run_dir / "report" / "report.html").is_file()

    table = cluster.kubectl("-n", namespace, "get", "spar", name)
    assert "Succeeded" in table and str(counts["pairs"]) in table

    cluster.kubectl("-n", namespace, "delete", "spar", name, "--wait=true", timeout=300)
    wait_for("the run's children to be removed",
             lambda: cluster.kubectl("-n", namespace, "get", "deploy,job,svc,configmap",
                                     "-l", f"alignment.spa.dev/run={name}", "-o",
                                     "name").strip() == "", 180)
