"""What the kopf handlers do: settings, and mapping one reconciliation onto kopf's semantics."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import Any

import kopf
from kubernetes import client, config

from spa_operator import metrics
from spa_operator.cluster import Cluster
from spa_operator.config import OperatorConfig
from spa_operator.errors import InvalidObject
from spa_operator.reconcile_run import RunObject, reconcile_run
from spa_operator.reconcile_schedule import (
    ScheduleCluster,
    ScheduleObject,
    reconcile_schedule,
)
from spa_operator.timestamps import parse_time

__all__ = [
    "configure_operator",
    "forget_handler",
    "login",
    "reconcile_handler",
    "reconcile_schedule_handler",
]

_PREFIX = "alignment.spa.dev"
RUN_KIND, SCHEDULE_KIND = "SPAAlignmentRun", "SPAAlignmentSchedule"


def configure_operator(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping in annotations, never in spec or our status schema."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=_PREFIX, key="last-handled-configuration")
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


def _poster(body: kopf.Body) -> Callable[[str, str, str], None]:
    """post_event(type, reason, message) on `body`, messages cut to the Event API's size."""

    def post_event(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message[:1024])

    return post_event


@contextmanager
def _counted(kind: str, patch: kopf.Patch,
             on_invalid: Callable[[dict[str, Any]], None] | None = None) -> Iterator[None]:
    """Map a reconciliation's failures onto kopf and the error counter: a spec that can never
    run writes its status (after `on_invalid(status)`) and is permanent; anything else is
    counted and retried by kopf."""
    try:
        yield
    except InvalidObject as exc:
        metrics.RECONCILE_ERRORS.labels(kind=kind, error="InvalidSpec").inc()
        if on_invalid is not None:
            on_invalid(exc.status)
        patch.status.update(exc.status)
        raise kopf.PermanentError(str(exc)) from None
    except Exception as exc:
        metrics.RECONCILE_ERRORS.labels(kind=kind, error=type(exc).__name__).inc()
        raise


def reconcile_handler(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """One reconciliation; status goes into kopf's patch, errors into kopf's error kinds."""
    meta = body["metadata"]
    run = RunObject(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                    generation=meta.get("generation", 1), spec=dict(body.get("spec") or {}),
                    status=dict(body.get("status") or {}))
    now = datetime.now(UTC)

    def failed(status: dict[str, Any]) -> None:
        metrics.observe_run(run.namespace, run.name, status.get("phase"))

    with _counted(RUN_KIND, patch, on_invalid=failed):
        status = reconcile_run(run, _cluster(), _config(), _poster(body), now)
    metrics.observe_run(run.namespace, run.name, (status or run.status).get("phase"))
    if status:
        metrics.observe_stage_end(run.status, status, now)
        patch.status.update(status)


def forget_handler(body: kopf.Body, event: dict[str, Any], **_: Any) -> None:
    """Watch events of runs: a deleted run leaves the phase gauge."""
    if event.get("type") == "DELETED":
        meta = body["metadata"]
        metrics.forget_run(meta["namespace"], meta["name"])


def reconcile_schedule_handler(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """One pass over a schedule: fire what is due, chain, prune; status into kopf's patch."""
    meta = body["metadata"]
    obj = ScheduleObject(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                         generation=meta.get("generation", 1),
                         created=parse_time(meta["creationTimestamp"]),
                         spec=dict(body.get("spec") or {}), status=dict(body.get("status") or {}))
    with _counted(SCHEDULE_KIND, patch):
        status = reconcile_schedule(obj, _schedule_cluster(), _poster(body))
    if status:
        patch.status.update(status)
