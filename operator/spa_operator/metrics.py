"""The operator's Prometheus metrics, served on $SPA_OPERATOR_METRICS_PORT (the chart's
ServiceMonitor scrapes them): runs by phase, reconcile errors, stage durations."""

from __future__ import annotations

import threading
from collections import Counter as Tally
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from spa_operator.status import RunPhase
from spa_operator.timestamps import parse_time

__all__ = [
    "RECONCILE_ERRORS",
    "RUNS",
    "STAGE_DURATION",
    "forget_run",
    "observe_run",
    "serve",
]

RUNS = Gauge("spa_runs", "SPAAlignmentRuns by namespace and phase", ["namespace", "phase"])
RECONCILE_ERRORS = Counter(
    "spa_reconcile_errors_total",
    "Reconciliations that failed, by resource kind and error (InvalidSpec: permanent)",
    ["kind", "error"])
STAGE_DURATION = Histogram(
    "spa_stage_duration_seconds",
    "Wall time of a run's stages: Generator (vLLM start-up), Pipeline, Training, Evaluation",
    ["stage"],
    buckets=(30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800))

_PHASES: tuple[RunPhase, ...] = ("Pending", "Running", "Suspended", "Succeeded", "Failed")
_lock = threading.Lock()
_phase_of: dict[tuple[str, str], str] = {}
_server_started = False


def _publish(namespace: str) -> None:
    counts = Tally(p for (ns, _), p in _phase_of.items() if ns == namespace)
    for phase in _PHASES:
        RUNS.labels(namespace=namespace, phase=phase).set(counts.get(phase, 0))


def observe_run(namespace: str, name: str, phase: str | None) -> None:
    """Record a run's phase after a reconciliation."""
    with _lock:
        _phase_of[(namespace, name)] = phase or "Pending"
        _publish(namespace)


def forget_run(namespace: str, name: str) -> None:
    """A run was deleted."""
    with _lock:
        _phase_of.pop((namespace, name), None)
        _publish(namespace)


def observe_stage_end(old: dict[str, Any], new: dict[str, Any], now: datetime) -> None:
    """When a reconciliation moved a run to another stage, how long the last one took."""
    moved = (old.get("stage"), old.get("iteration")) != (new.get("stage"), new.get("iteration"))
    started = parse_time(old.get("stageStartTime"))
    if moved and old.get("stage") and started is not None:
        STAGE_DURATION.labels(stage=old["stage"]).observe((now - started).total_seconds())


def serve(port: int) -> None:
    """Serve /metrics on `port` (once per process; 0 serves nothing)."""
    global _server_started
    with _lock:
        if port and not _server_started:
            start_http_server(port)
            _server_started = True
