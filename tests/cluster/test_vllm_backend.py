"""The openai backend against vLLM's server, beside llama.cpp's (tests/test_backends.py): the
same checks, on the generator Deployment the operator builds for examples/cluster-cpu.yaml
(vLLM for CPUs in place of vLLM's image, serving the embedded model exported by its init
container in the trainer image), reached at its pod's address from the node.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator

import pytest
import yaml

import test_backends as checks  # the llama.cpp server's checks, run here against vLLM
from cluster_env import REPO, Cluster
from spa_core.spec import RunSpec
from waiting import wait_for

if str(REPO / "operator") not in sys.path:
    sys.path.insert(0, str(REPO / "operator"))

from spa_operator.builders import Owner, build_generator_deployment  # noqa: E402
from spa_operator.config import OperatorConfig  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

EXAMPLE = REPO / "examples" / "cluster-cpu.yaml"

CHECKS: list[Callable[[str], None]] = [
    checks.test_openai_plain_chat_returns_text,
    checks.test_openai_json_schema_is_honoured,
    checks.test_openai_results_keep_request_order_under_concurrency,
    checks.test_openai_rejected_request_is_recorded_not_raised,
    checks.test_openai_rejected_constrained_request_keeps_json_schema_on,
]


@pytest.fixture(scope="module")
def vllm_server(cluster: Cluster) -> Iterator[str]:
    """Base URL of vLLM's OpenAI API, served from a pod of the operator's generator
    Deployment (applied here without an owner: no run exists to own it)."""
    namespace = "t-vllm"
    cluster.kubectl("create", "namespace", namespace)
    spec = RunSpec.model_validate(yaml.safe_load(EXAMPLE.read_text())["spec"])
    config = OperatorConfig(worker_image=cluster.images["worker"],
                            vllm_image=cluster.images["vllm-cpu"],
                            trainer_image=cluster.images["trainer"], image_pull_policy="Never",
                            # What a 2-CPU node can grant (the chart's defaults suit a GPU node).
                            generator_cpu="500m", generator_memory="2Gi")
    deployment = build_generator_deployment(Owner("vllm", namespace, "-"), spec, config, 0)
    del deployment["metadata"]["ownerReferences"]  # the garbage collector would remove it
    cluster.apply(json.dumps(deployment), namespace)
    name = deployment["metadata"]["name"]

    def address() -> str:
        pods = json.loads(cluster.kubectl("-n", namespace, "get", "pods", "-l",
                                          "app.kubernetes.io/component=generator", "-o",
                                          "json"))["items"]
        ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in p["status"].get("conditions", []))]
        return ready[0]["status"]["podIP"] if ready else ""

    ip = wait_for(f"vLLM ({name}) to pass its /health check", address, 900,
                  lambda: cluster.describe(namespace), interval=3)
    yield f"http://{ip}:{config.vllm_port}/v1"
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("test_openai_"))
def test_the_openai_backend_against_vllm(vllm_server: str,
                                         check: Callable[[str], None]) -> None:
    check(vllm_server)
