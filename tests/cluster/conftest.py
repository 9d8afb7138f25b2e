"""The one-node cluster for the cluster tests (scripts/kube-cluster.sh), and the images in it.

Session-wide: the project's images are built (scripts/build-images.sh, cached by a hash of
their inputs), the cluster is started in a temporary directory, the images are imported into
its containerd, and everything is stopped at the end. Needs root, and the binaries built by
`scripts/kube-cluster.sh build`; without them the tests skip, or fail with SPA_REQUIRE_CLUSTER=1
(as `make test` sets).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_env import REPO, Cluster

CLUSTER_SCRIPT = REPO / "scripts" / "kube-cluster.sh"
IMAGES_SCRIPT = REPO / "scripts" / "build-images.sh"
REQUIRE_ENV = "SPA_REQUIRE_CLUSTER"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _run(cmd: list[str], timeout: float) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        _unavailable("the cluster needs root (containers, iptables, a bridge)")
    bin_dir = Path(_run([str(REPO / "scripts" / "kube-testenv.sh"), "bin"], 30).strip())
    missing = [b for b in ("kubelet", "kube-proxy", "kube-scheduler", "coredns", "helm")
               if not (bin_dir / b).is_file()]
    if missing:
        _unavailable(f"{', '.join(missing)} not built in {bin_dir}: run "
                     "`scripts/kube-cluster.sh build`")
    targets = ("debian", "operator", "worker", "trainer", "vllm-cpu")
    images = dict(zip(targets, _run([str(IMAGES_SCRIPT), *targets], 3600).split(), strict=True))
    # A short path: containerd's socket lives under it (sun_path holds 108 bytes).
    state = Path(f"/tmp/spa-cluster-{uuid.uuid4().hex[:8]}")
    try:
        kubeconfig = Path(_run([str(CLUSTER_SCRIPT), "start", str(state)], 600)
                          .strip().splitlines()[-1])
        env = {**os.environ, "KUBE_CLUSTER_DIR": str(state)}
        subprocess.run([str(CLUSTER_SCRIPT), "load", *images.values()], check=True, env=env,
                       timeout=1800)
        yield Cluster(kubeconfig=kubeconfig, bin_dir=bin_dir, state_dir=state, images=images)
    finally:
        stopped = subprocess.run([str(CLUSTER_SCRIPT), "stop", str(state)], timeout=300)
        if stopped.returncode == 0:  # the run's volumes hold checkpoints: give the disk back
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")
