"""The reconciliation entry point against the real API server: the watch and the resync pass
can reconcile one object at once, and a transition must still happen once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from operator_harness import GPU_RUN as SPEC
from operator_harness import Kubelet

pytestmark = pytest.mark.kube


@pytest.fixture
def handlers(kube: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """spa_operator.handlers talking to the test API server, with the events it posts
    collected as well."""
    from spa_operator import handlers as module

    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig))
    for cached in (module._api_client, module._cluster, module._config):
        cached.cache_clear()
    posted: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    real_poster = module._poster

    def poster(obj: Any) -> Any:
        post_for_real = real_poster(obj)

        def post(kind: str, reason: str, message: str) -> None:
            with lock:
                posted.append((kind, reason, message))
            post_for_real(kind, reason, message)
        return post

    monkeypatch.setattr(module, "_poster", poster)
    module.posted = posted  # type: ignore[attr-defined]
    yield module
    for cached in (module._api_client, module._cluster, module._config):
        cached.cache_clear()


def test_two_reconciliations_at_once_make_one_transition(
        handlers: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    uid = kubelet.create_run("twice", **SPEC)["metadata"]["uid"]
    handlers.reconcile("SPAAlignmentRun", namespace, "twice", uid)
    assert kubelet.status_of("twice")["stage"] == "Generator"
    assert ("Normal", "Created", "created Deployment twice-generator-0") in handlers.posted
    kubelet.make_available("twice-generator-0")
    handlers.posted.clear()

    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def reconcile() -> None:
        start.wait()
        try:
            handlers.reconcile("SPAAlignmentRun", namespace, "twice", uid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reconcile) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert kubelet.status_of("twice")["stage"] == "Pipeline"
    reasons = [reason for _, reason, _ in handlers.posted]
    assert reasons.count("Sampling") == 1, handlers.posted
    created = [m for _, reason, m in handlers.posted if reason == "Created"]
    assert created == ["created Job twice-pipeline-0"], handlers.posted
    # The events reached the API server, on the run, from the operator.
    events = [e for e in kubelet.events("twice") if e.reason == "Sampling"]
    assert len(events) == 1 and events[0].source.component == "spa-operator"
    assert events[0].involved_object.uid == uid


def test_a_deleted_object_is_left_alone(handlers: Any, api_client: Any, namespace: str) -> None:
    kubelet = Kubelet(api_client, namespace)
    uid = kubelet.create_run("gone", **SPEC)["metadata"]["uid"]
    kubelet.custom.delete_namespaced_custom_object(
        "alignment.spa.dev", "v1alpha1", namespace, "spaalignmentruns", "gone")
    handlers.reconcile("SPAAlignmentRun", namespace, "gone", uid)  # a late resync pass
    # A new run under the old name is another object: the old one's pass leaves it alone.
    kubelet.create_run("gone", **SPEC)
    handlers.reconcile("SPAAlignmentRun", namespace, "gone", uid)
    assert kubelet.apps.list_namespaced_deployment(namespace).items == []
    assert handlers.posted == []
    assert "status" not in kubelet.run("gone")
