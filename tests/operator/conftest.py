"""Operator test fixtures: the operator package on sys.path; a real API server (kube_testenv)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

OPERATOR_DIR = Path(__file__).resolve().parents[2] / "operator"
if str(OPERATOR_DIR) not in sys.path:
    sys.path.insert(0, str(OPERATOR_DIR))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from kube_testenv import REQUIRE_ENV, KubeTestEnv, KubeUnavailable, apply_crds  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kube: needs the real kube-apiserver + etcd (scripts/kube-testenv.sh build)")


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTestEnv]:
    """etcd + kube-apiserver on loopback with the CRDs applied (session-wide)."""
    try:
        env = KubeTestEnv.start(tmp_path_factory.mktemp("kube"))
    except KubeUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        apply_crds(env.api_client())
        yield env
    finally:
        env.stop()


@pytest.fixture(scope="session")
def api_client(kube: KubeTestEnv) -> Any:
    return kube.api_client()


#: The claim the tests' runs name as storage.pvc (the operator waits until it exists).
CLAIM = "spa-runs"


@pytest.fixture
def namespace(api_client: Any) -> str:
    """A fresh namespace per test (never deleted: there is no namespace controller), with the
    PersistentVolumeClaim the runs use (no volume behind it: nothing here mounts it)."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_persistent_volume_claim(name, {
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}})
    return name


@pytest.fixture(scope="session")
def metrics_port() -> int:
    """Where the operator serves /metrics in this test session (one server per process)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def operator(kube: KubeTestEnv, namespace: str, metrics_port: int,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The real operator watching the test's namespace, reconciling every second."""
    from operator_harness import running_operator

    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    monkeypatch.setenv("SPA_OPERATOR_RECONCILE_SECONDS", "1")
    monkeypatch.setenv("SPA_OPERATOR_METRICS_PORT", str(metrics_port))
    with running_operator(namespace) as runner:
        yield runner
