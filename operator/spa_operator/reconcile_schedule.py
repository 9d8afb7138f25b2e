"""One reconciliation of an SPAAlignmentSchedule: fire due runs, chain models, prune history.

Like the CronJob controller, level-based: each pass looks at the schedule's runs (labelled
with the schedule's name, owned by it) and its status, and decides from those alone, so a
missed event or an operator restart changes nothing. A firing's run is named after its
scheduled minute, so creating it twice is impossible (the second create finds it).

`plan_schedule` is pure; `reconcile_schedule` does the API calls it asks for.
"""

from __future__ import annotations

import copy
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter

from spa_core.schedule_spec import ScheduleSpec, parse_schedule
from spa_core.spec import API_GROUP, API_VERSION, SpecError
from spa_operator import names
from spa_operator.builders.common import Owner, training_gpus
from spa_operator.conditions import set_condition
from spa_operator.errors import ClusterSpecError, InvalidObject
from spa_operator.timestamps import parse_time, stamp

__all__ = [
    "SCHEDULED_AT_ANNOTATION",
    "SCHEDULE_LABEL",
    "ScheduleObject",
    "SchedulePlan",
    "plan_schedule",
    "reconcile_schedule",
]

SCHEDULE_LABEL = "alignment.spa.dev/schedule"
SCHEDULED_AT_ANNOTATION = "alignment.spa.dev/scheduled-at"
TERMINAL = {"Succeeded", "Failed"}
#: post_event(type, reason, message)
PostEvent = Callable[[str, str, str], None]


@dataclass(frozen=True)
class ScheduleObject:
    """What the reconciler needs from the custom resource."""

    name: str
    namespace: str
    uid: str
    generation: int
    created: datetime
    spec: dict[str, Any]
    status: dict[str, Any]

    @property
    def owner(self) -> Owner:
        return Owner(name=self.name, namespace=self.namespace, uid=self.uid,
                     kind="SPAAlignmentSchedule")


@dataclass
class SchedulePlan:
    """What to do now and what to report."""

    create: dict[str, Any] | None = None
    """A run to create (absent ones only)."""
    delete: list[str] = field(default_factory=list)
    """Runs to delete: replaced, or beyond the history limits."""
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _phase(run: dict[str, Any]) -> str | None:
    return (run.get("status") or {}).get("phase")


def _scheduled_at(run: dict[str, Any]) -> datetime:
    meta = run.get("metadata") or {}
    at = (meta.get("annotations") or {}).get(SCHEDULED_AT_ANNOTATION)
    return parse_time(at) or parse_time(meta.get("creationTimestamp")) or datetime.min.replace(
        tzinfo=UTC)


def last_firing(spec: ScheduleSpec, after: datetime, now: datetime) -> datetime | None:
    """The latest scheduled time in (`after`, `now`], in the schedule's time zone, or None."""
    tz = zoneinfo.ZoneInfo(spec.time_zone or "UTC")
    # croniter steps back from `now` (exclusive); a firing at exactly `now` counts.
    latest = croniter(spec.schedule, now.astimezone(tz) + timedelta(microseconds=1)).get_prev(
        datetime)
    latest = latest.astimezone(UTC)
    return latest if latest > after else None


def _run_document(obj: ScheduleObject, spec: ScheduleSpec, at: datetime,
                  model: str | None) -> dict[str, Any]:
    run_spec = spec.run_template.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if spec.chain and model:
        # The trained checkpoint is a plain directory: no GGUF file, no Hub revision.
        model_spec = {k: v for k, v in (run_spec.get("model") or {}).items()
                      if k not in {"name", "ggufFile", "revision"}}
        run_spec["model"] = {**model_spec, "name": model}
    minutes = int(at.timestamp()) // 60
    return {
        "apiVersion": API_VERSION,
        "kind": "SPAAlignmentRun",
        "metadata": {
            "name": names.scheduled_run(obj.name, minutes),
            "namespace": obj.namespace,
            "labels": {SCHEDULE_LABEL: obj.name},
            "annotations": {SCHEDULED_AT_ANNOTATION: stamp(at)},
            "ownerReferences": [obj.owner.reference()],
        },
        "spec": copy.deepcopy(run_spec),
    }


def _pruned(runs: list[dict[str, Any]], keep: int) -> list[str]:
    """Names of the oldest of `runs` beyond the newest `keep`."""
    ordered = sorted(runs, key=_scheduled_at)
    return [r["metadata"]["name"] for r in ordered[:max(len(ordered) - keep, 0)]]


def plan_schedule(obj: ScheduleObject, spec: ScheduleSpec, runs: list[dict[str, Any]],
                  now: datetime) -> SchedulePlan:
    """What the schedule should do now, given its runs (those labelled with its name)."""
    old = obj.status
    plan = SchedulePlan()
    active = [r for r in runs if _phase(r) not in TERMINAL]
    succeeded = [r for r in runs if _phase(r) == "Succeeded"]
    failed = [r for r in runs if _phase(r) == "Failed"]

    # The latest success (its trained model seeds the next run when `chain` is on). History
    # pruning deletes the oldest first, so a success still listed is never older than the
    # one the status recorded; with none listed, the status remembers.
    last_run, last_time, last_model = (old.get("lastSuccessfulRun"),
                                       old.get("lastSuccessfulTime"), old.get("lastModel"))
    if succeeded:
        last_ok = max(succeeded, key=_scheduled_at)
        st = last_ok.get("status") or {}
        last_run = last_ok["metadata"]["name"]
        last_time = st.get("completionTime") or last_time
        last_model = (st.get("artifacts") or {}).get("model") or last_model

    plan.delete += _pruned(succeeded, spec.successful_runs_history_limit)
    plan.delete += _pruned(failed, spec.failed_runs_history_limit)

    last_schedule = parse_time(old.get("lastScheduleTime")) or obj.created
    reason, message = "Scheduled", f"next runs on {spec.schedule!r}"
    due = None if spec.suspend else last_firing(spec, last_schedule, now)
    if spec.suspend:
        reason, message = "Suspended", "spec.suspend is true: no new runs"
    elif due is not None:
        late = (now - due).total_seconds()
        if spec.starting_deadline_seconds is not None and late > spec.starting_deadline_seconds:
            reason = "MissedSchedule"
            message = (f"skipped the firing of {stamp(due)}: {late:.0f}s late, more than "
                       f"startingDeadlineSeconds ({spec.starting_deadline_seconds})")
            plan.events.append(("Warning", reason, message))
            last_schedule = due
        elif active and spec.concurrency_policy == "Forbid":
            reason = "WaitingForActiveRun"
            message = (f"the firing of {stamp(due)} waits: "
                       f"{', '.join(sorted(r['metadata']['name'] for r in active))} still running "
                       "(concurrencyPolicy Forbid)")
        else:
            if active and spec.concurrency_policy == "Replace":
                replaced = sorted(r["metadata"]["name"] for r in active)
                plan.delete += replaced
                plan.events.append(("Normal", "Replaced", f"deleted {', '.join(replaced)}"))
                active = []
            plan.create = _run_document(obj, spec, due, last_model)
            chained = f" from {last_model}" if spec.chain and last_model else ""
            created = plan.create["metadata"]["name"]
            plan.events.append(("Normal", "Created", f"created run {created}{chained}"))
            reason, message = "Scheduled", f"created {created} for {stamp(due)}{chained}"
            last_schedule = due
            active = [*active, plan.create]

    conditions = set_condition(old.get("conditions") or [], "Ready",
                               "False" if reason == "Suspended" else "True", reason, message,
                               obj.generation, now)
    plan.status = {
        "observedGeneration": obj.generation,
        "active": sorted(r["metadata"]["name"] for r in active
                         if r["metadata"]["name"] not in plan.delete),
        "conditions": conditions,
    }
    if old.get("lastScheduleTime") or last_schedule != obj.created:
        plan.status["lastScheduleTime"] = stamp(last_schedule)
    for key, value in (("lastSuccessfulRun", last_run), ("lastSuccessfulTime", last_time),
                       ("lastModel", last_model)):
        if value:
            plan.status[key] = value
    return plan


def _invalid_status(obj: ScheduleObject, message: str, now: datetime) -> dict[str, Any]:
    conditions = set_condition(obj.status.get("conditions") or [], "Ready", "False",
                               "InvalidSpec", message, obj.generation, now)
    return {"observedGeneration": obj.generation, "conditions": conditions}


def parse(obj: ScheduleObject) -> ScheduleSpec:
    """The schedule's spec, with what pydantic cannot check (the cron expression itself)."""
    doc = {"apiVersion": API_VERSION, "kind": "SPAAlignmentSchedule",
           "metadata": {"name": obj.name, "namespace": obj.namespace}, "spec": obj.spec}
    spec = parse_schedule(doc, source=f"{obj.namespace}/{obj.name}").spec
    if not croniter.is_valid(spec.schedule):
        raise ClusterSpecError("schedule", f"{spec.schedule!r} is not a valid cron schedule "
                               "(minute hour day-of-month month day-of-week, or @daily etc.)")
    training_gpus(spec.run_template, "runTemplate.training.gpusPerNode")
    return spec


class ScheduleCluster:
    """The API calls a schedule needs (runs are custom objects)."""

    def __init__(self, api_client: Any) -> None:
        from spa_operator.cluster import Cluster

        self._cluster = Cluster(api_client)
        self.custom = self._cluster.custom

    def runs(self, namespace: str, schedule: str) -> list[dict[str, Any]]:
        from spa_operator import crd

        listed = self.custom.list_namespaced_custom_object(
            API_GROUP, crd.VERSION, namespace, crd.RUN_PLURAL,
            label_selector=f"{SCHEDULE_LABEL}={schedule}")
        return list(listed.get("items") or [])

    def create_run(self, run: dict[str, Any]) -> bool:
        from kubernetes.client.rest import ApiException

        from spa_operator import crd

        try:
            self.custom.create_namespaced_custom_object(
                API_GROUP, crd.VERSION, run["metadata"]["namespace"], crd.RUN_PLURAL,
                run)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def delete_run(self, namespace: str, name: str) -> bool:
        from spa_operator import crd

        return self._cluster.delete(namespace, crd.RUN_KIND, name)


def reconcile_schedule(obj: ScheduleObject, cluster: ScheduleCluster, post_event: PostEvent,
                       now: datetime | None = None) -> dict[str, Any]:
    """Fire, prune and report; return the status to write. Raises InvalidObject."""
    now = now or datetime.now(UTC)
    ready = next((c for c in obj.status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("reason") == "InvalidSpec" and obj.status.get("observedGeneration") == \
            obj.generation:
        return {}  # reported once; an edit (a new generation) is looked at again
    try:
        spec = parse(obj)
    except (SpecError, ClusterSpecError) as exc:
        message = str(exc)
        post_event("Warning", "InvalidSpec", message)
        raise InvalidObject(message, _invalid_status(obj, message, now)) from None
    plan = plan_schedule(obj, spec, cluster.runs(obj.namespace, obj.name), now)
    for name in plan.delete:
        cluster.delete_run(obj.namespace, name)
    if plan.create is not None and not cluster.create_run(plan.create):
        # Created by an earlier pass whose status write was lost: nothing to announce.
        plan.events = [e for e in plan.events if e[1] != "Created"]
    for kind, reason, message in plan.events:
        post_event(kind, reason, message)
    return plan.status
