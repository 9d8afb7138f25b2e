"""What the kopf handlers do: settings, the resync loop, and one reconciliation at a time.

kopf only watches. Every reconciliation reads the object afresh and writes its status itself
(never through kopf's patch), one at a time per object, from two triggers: the watch (a new
object, or a new generation: an edit, `suspend`) and a resync pass over every known object
every `SPA_OPERATOR_RECONCILE_SECONDS`, so progress never depends on catching an event.

No kopf timer, daemon or change handler is registered: those make kopf add a finalizer to
every object (and bookkeeping annotations), which would leave runs and namespaces stuck
Terminating once the operator is uninstalled. The operator writes status, events and the
runs' children; it never writes a run's or a schedule's metadata or spec.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from spa_core.spec import API_GROUP
from spa_operator import metrics
from spa_operator.cluster import Cluster
from spa_operator.config import OperatorConfig
from spa_operator.crd import RUN_KIND, RUN_PLURAL, SCHEDULE_KIND, SCHEDULE_PLURAL, VERSION
from spa_operator.errors import InvalidObject
from spa_operator.reconcile_run import RunObject, reconcile_run
from spa_operator.reconcile_schedule import (
    ScheduleCluster,
    ScheduleObject,
    reconcile_schedule,
)
from spa_operator.timestamps import parse_time, stamp

__all__ = [
    "configure_operator",
    "index_object",
    "login",
    "reconcile",
    "start_resync",
    "watch_handler",
]

log = logging.getLogger(__name__)

_PLURALS = {RUN_KIND: RUN_PLURAL, SCHEDULE_KIND: SCHEDULE_PLURAL}
#: Who posts the events (`kubectl describe` shows it as the source).
COMPONENT = "spa-operator"


def configure_operator(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Watch settings, and the metrics endpoint."""
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    metrics.serve(_config().metrics_port)


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere $KUBECONFIG (read now, not at import time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@cache
def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))


@cache
def _cluster() -> Cluster:
    return Cluster(_api_client())


@cache
def _schedule_cluster() -> ScheduleCluster:
    return ScheduleCluster(_api_client())


@cache
def _config() -> OperatorConfig:
    return OperatorConfig.from_env()


# --- triggers --------------------------------------------------------------------------------

def index_object(namespace: str, name: str, uid: str, **_: Any) -> dict[Any, str]:
    """kopf index of the watched objects, (namespace, name) -> uid: what the resync visits."""
    return {(namespace, name): uid}


def watch_handler(kind: str, body: kopf.Body, event: dict[str, Any], **_: Any) -> None:
    """A watch event: reconcile at once what is new or was edited; forget what was deleted."""
    meta = body["metadata"]
    if event.get("type") == "DELETED":
        if kind == RUN_KIND:
            metrics.forget_run(meta["namespace"], meta["name"])
        with _locks_guard:
            _locks.pop(meta["uid"], None)
        return
    status = body.get("status") or {}
    # Status writes (ours) change no generation: the resync takes them from there.
    if event.get("type") in (None, "ADDED") or \
            meta.get("generation", 1) != status.get("observedGeneration"):
        reconcile(kind, meta["namespace"], meta["name"], meta["uid"])


async def start_resync(**kwargs: Any) -> None:
    """Start the resync loop over kopf's indices of runs and schedules (a startup activity)."""
    interval = float(OperatorConfig.from_env().reconcile_seconds)
    indices = {RUN_KIND: kwargs["run_objects"], SCHEDULE_KIND: kwargs["schedule_objects"]}
    task = asyncio.create_task(_resync(indices, interval), name="spa resync")
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


async def _resync(indices: dict[str, kopf.Index[Any, str]], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        for kind, index in indices.items():
            for (namespace, name), uids in list(index.items()):
                for uid in list(uids):
                    # A thread, as kopf runs sync handlers; one object at a time.
                    await asyncio.to_thread(_reconcile_logged, kind, namespace, name, uid)


def _reconcile_logged(kind: str, namespace: str, name: str, uid: str) -> None:
    try:
        reconcile(kind, namespace, name, uid)
    except kopf.PermanentError:
        pass  # its status says why
    except Exception:  # counted by _counted; the next pass retries
        log.exception("reconciling %s %s/%s failed; retrying in the next pass", kind,
                      namespace, name)


# --- one reconciliation ----------------------------------------------------------------------

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@contextmanager
def _latest(kind: str, namespace: str, name: str, uid: str) -> Iterator[dict[str, Any] | None]:
    """The object as the API server has it now (None once deleted or replaced), one
    reconciliation at a time per object.

    The watch and the resync can both reconcile one object at once. Holding its lock and
    reading it again means a reconciliation always starts from the status the previous one
    wrote (`_write_status`, under the same lock), so a transition is acted on and announced
    once."""
    with _locks_guard:
        lock = _locks.setdefault(uid, threading.Lock())
    with lock:
        try:
            latest = _cluster().custom.get_namespaced_custom_object(
                API_GROUP, VERSION, namespace, _PLURALS[kind], name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            latest = None
        yield latest if latest is not None and latest["metadata"]["uid"] == uid else None


def _write_status(kind: str, obj: dict[str, Any], status: dict[str, Any]) -> None:
    """Merge `status` into the object's status subresource."""
    meta = obj["metadata"]
    _cluster().custom.patch_namespaced_custom_object_status(
        API_GROUP, VERSION, meta["namespace"], _PLURALS[kind], meta["name"], {"status": status})


def _poster(obj: dict[str, Any]) -> Callable[[str, str, str], None]:
    """post_event(type, reason, message) on `obj`, messages cut to the Event API's size."""
    meta = obj["metadata"]
    involved = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta["uid"]}

    def post_event(kind: str, reason: str, message: str) -> None:
        now = stamp(datetime.now(UTC))
        event = {"metadata": {"generateName": f"{meta['name']}.",
                              "namespace": meta["namespace"]},
                 "involvedObject": involved, "type": kind, "reason": reason,
                 "message": message[:1024], "count": 1,
                 "firstTimestamp": now, "lastTimestamp": now,
                 "source": {"component": COMPONENT},
                 "reportingComponent": COMPONENT, "reportingInstance": socket.gethostname()}
        try:
            _cluster().core.create_namespaced_event(meta["namespace"], event)
        except ApiException as exc:  # an event is a courtesy: never fail the reconciliation
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"],
                        meta["name"], exc.reason)

    return post_event


@contextmanager
def _counted(kind: str, obj: dict[str, Any],
             on_invalid: Callable[[dict[str, Any]], None] | None = None) -> Iterator[None]:
    """Map a reconciliation's failures onto kopf and the error counter: a spec that can never
    run writes its status (after `on_invalid(status)`) and is permanent; anything else is
    counted and retried."""
    try:
        yield
    except InvalidObject as exc:
        metrics.RECONCILE_ERRORS.labels(kind=kind, error="InvalidSpec").inc()
        if on_invalid is not None:
            on_invalid(exc.status)
        _write_status(kind, obj, exc.status)
        raise kopf.PermanentError(str(exc)) from None
    except Exception as exc:
        metrics.RECONCILE_ERRORS.labels(kind=kind, error=type(exc).__name__).inc()
        raise


def reconcile(kind: str, namespace: str, name: str, uid: str) -> None:
    """One reconciliation of the object as it is now; its status is written before the next
    one starts."""
    with _latest(kind, namespace, name, uid) as obj:
        if obj is None:
            return
        if kind == RUN_KIND:
            _reconcile_run(obj)
        else:
            _reconcile_schedule(obj)


def _reconcile_run(obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    run = RunObject(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                    generation=meta.get("generation", 1), spec=dict(obj.get("spec") or {}),
                    status=dict(obj.get("status") or {}),
                    annotations=dict(meta.get("annotations") or {}))
    now = datetime.now(UTC)

    def failed(status: dict[str, Any]) -> None:
        metrics.observe_run(run.namespace, run.name, status.get("phase"))

    with _counted(RUN_KIND, obj, on_invalid=failed):
        status = reconcile_run(run, _cluster(), _config(), _poster(obj), now)
    metrics.observe_run(run.namespace, run.name, (status or run.status).get("phase"))
    if status:
        metrics.observe_stage_end(run.status, status, now)
        _write_status(RUN_KIND, obj, status)


def _reconcile_schedule(obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    schedule = ScheduleObject(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                              generation=meta.get("generation", 1),
                              created=parse_time(meta["creationTimestamp"]),
                              spec=dict(obj.get("spec") or {}),
                              status=dict(obj.get("status") or {}))
    with _counted(SCHEDULE_KIND, obj):
        status = reconcile_schedule(schedule, _schedule_cluster(), _poster(obj))
    if status:
        _write_status(SCHEDULE_KIND, obj, status)
