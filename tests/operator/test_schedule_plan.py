"""SPAAlignmentSchedule planning (pure): firings, concurrency, chaining, history, deadlines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spa_core.schedule_spec import ScheduleSpec
from spa_operator.reconcile_schedule import (
    SCHEDULE_LABEL,
    SCHEDULED_AT_ANNOTATION,
    ScheduleObject,
    last_firing,
    plan_schedule,
)

CREATED = datetime(2026, 11, 26, 10, 0, 30, tzinfo=UTC)
TEMPLATE = {"model": {"name": "org/base", "revision": "v1"}, "storage": {"pvc": "spa-runs"},
            "prompts": {"builtin": "harmlessness", "count": 10}}


def t(hh: int, mm: int, ss: int = 0, day: int = 26) -> datetime:
    return datetime(2026, 11, day, hh, mm, ss, tzinfo=UTC)


def schedule(status: dict[str, Any] | None = None, **spec: Any) -> tuple[ScheduleObject,
                                                                          ScheduleSpec]:
    doc = {"schedule": "*/5 * * * *", "runTemplate": TEMPLATE, **spec}
    obj = ScheduleObject(name="weekly", namespace="ml", uid="u-1", generation=1, created=CREATED,
                         spec=doc, status=status or {})
    return obj, ScheduleSpec.model_validate(doc)


def run(name: str, at: datetime, phase: str | None = None,
        model: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
        if phase in ("Succeeded", "Failed"):
            status["completionTime"] = (at + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if model:
        status["artifacts"] = {"model": model}
    return {"metadata": {"name": name, "labels": {SCHEDULE_LABEL: "weekly"},
                         "annotations": {SCHEDULED_AT_ANNOTATION:
                                         at.strftime("%Y-%m-%dT%H:%M:%SZ")}},
            "status": status}


def ready(plan: Any) -> tuple[str, str]:
    (cond,) = [c for c in plan.status["conditions"] if c["type"] == "Ready"]
    return cond["status"], cond["reason"]


def test_nothing_fires_before_the_first_scheduled_time() -> None:
    obj, spec = schedule()
    plan = plan_schedule(obj, spec, [], t(10, 4, 59))
    assert plan.create is None and plan.delete == [] and plan.events == []
    assert "lastScheduleTime" not in plan.status
    assert ready(plan) == ("True", "Scheduled")


def test_a_due_firing_creates_one_run_named_after_its_minute_and_owned_by_the_schedule() -> None:
    obj, spec = schedule()
    plan = plan_schedule(obj, spec, [], t(10, 5, 10))
    assert plan.create is not None
    meta = plan.create["metadata"]
    assert meta["name"] == f"weekly-{int(t(10, 5).timestamp()) // 60}"
    assert meta["labels"] == {SCHEDULE_LABEL: "weekly"}
    assert meta["annotations"] == {SCHEDULED_AT_ANNOTATION: "2026-11-26T10:05:00Z"}
    (ref,) = meta["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == \
        ("SPAAlignmentSchedule", "weekly", "u-1", True)
    assert plan.create["spec"] == TEMPLATE  # only what the template set: defaults stay implicit
    assert plan.status["lastScheduleTime"] == "2026-11-26T10:05:00Z"
    assert plan.status["active"] == [meta["name"]]

    # The next pass, with the run listed and the status written, does nothing more.
    obj, spec = schedule(status=plan.status)
    again = plan_schedule(obj, spec, [run(meta["name"], t(10, 5), "Running")], t(10, 6))
    assert again.create is None and again.status["active"] == [meta["name"]]


def test_many_missed_firings_start_only_the_latest() -> None:
    obj, spec = schedule(schedule="0 * * * *")
    plan = plan_schedule(obj, spec, [], t(15, 30, day=28))  # the operator was down two days
    assert plan.create is not None
    assert plan.create["metadata"]["annotations"][SCHEDULED_AT_ANNOTATION] == \
        "2026-11-28T15:00:00Z"


def test_the_schedule_reads_its_time_zone() -> None:
    obj, spec = schedule(schedule="0 3 * * *", timeZone="Europe/Paris")
    assert plan_schedule(obj, spec, [], t(1, 59, day=27)).create is None
    plan = plan_schedule(obj, spec, [], t(2, 0, 30, day=27))  # 03:00:30 in Paris (UTC+1)
    assert plan.create is not None
    assert plan.status["lastScheduleTime"] == "2026-11-27T02:00:00Z"
    assert last_firing(spec, t(2, 0, day=27), t(2, 0, 30, day=27)) is None


@pytest.mark.parametrize(("policy", "creates", "deletes", "reason"), [
    ("Forbid", False, [], "WaitingForActiveRun"),
    ("Allow", True, [], "Scheduled"),
    ("Replace", True, ["weekly-old"], "Scheduled"),
])
def test_concurrency_policy_decides_what_a_firing_does_while_a_run_is_active(
        policy: str, creates: bool, deletes: list[str], reason: str) -> None:
    obj, spec = schedule(status={"lastScheduleTime": "2026-11-26T10:05:00Z"},
                         concurrencyPolicy=policy)
    plan = plan_schedule(obj, spec, [run("weekly-old", t(10, 5), "Running")], t(10, 10, 5))
    assert (plan.create is not None) == creates
    assert plan.delete == deletes
    assert ready(plan)[1] == reason
    if not creates:  # Forbid: the firing waits (it runs if the active one ends in time)
        assert plan.status["lastScheduleTime"] == "2026-11-26T10:05:00Z"
        assert plan.status["active"] == ["weekly-old"]


def test_each_run_starts_from_the_model_the_last_successful_run_trained() -> None:
    obj, spec = schedule(status={"lastScheduleTime": "2026-11-26T10:10:00Z"})
    runs = [
        run("weekly-a", t(10, 0), "Succeeded", model="/spa/storage/runs/weekly-a/iter-00/m"),
        run("weekly-b", t(10, 5), "Succeeded", model="/spa/storage/runs/weekly-b/iter-00/m"),
        run("weekly-c", t(10, 10), "Failed"),
    ]
    plan = plan_schedule(obj, spec, runs, t(10, 15))
    assert plan.create is not None
    assert plan.create["spec"]["model"] == {"name": "/spa/storage/runs/weekly-b/iter-00/m"}
    assert plan.status["lastSuccessfulRun"] == "weekly-b"
    assert plan.status["lastModel"] == "/spa/storage/runs/weekly-b/iter-00/m"
    assert plan.status["lastSuccessfulTime"] == "2026-11-26T11:05:00Z"
    assert any("from /spa/storage/runs/weekly-b" in e[2] for e in plan.events)

    obj, spec = schedule(status={"lastScheduleTime": "2026-11-26T10:10:00Z"}, chain=False)
    plan = plan_schedule(obj, spec, runs, t(10, 15))
    assert plan.create is not None and plan.create["spec"]["model"] == TEMPLATE["model"]


def test_the_last_model_is_remembered_after_its_run_is_pruned() -> None:
    status = {"lastScheduleTime": "2026-11-26T10:10:00Z", "lastSuccessfulRun": "weekly-b",
              "lastModel": "/m/b", "lastSuccessfulTime": "2026-11-26T11:05:00Z"}
    obj, spec = schedule(status=status, successfulRunsHistoryLimit=0)
    plan = plan_schedule(obj, spec, [], t(10, 15))
    assert plan.create is not None and plan.create["spec"]["model"]["name"] == "/m/b"
    assert plan.status["lastModel"] == "/m/b"


def test_history_limits_delete_the_oldest_finished_runs() -> None:
    obj, spec = schedule(status={"lastScheduleTime": "2026-11-26T11:00:00Z"},
                         successfulRunsHistoryLimit=2, failedRunsHistoryLimit=1)
    runs = [run(f"weekly-s{i}", t(10, i), "Succeeded") for i in range(5)]
    runs += [run(f"weekly-f{i}", t(10, 10 + i), "Failed") for i in range(3)]
    runs.append(run("weekly-active", t(10, 30), "Running"))
    plan = plan_schedule(obj, spec, runs, t(11, 1))
    assert sorted(plan.delete) == ["weekly-f0", "weekly-f1", "weekly-s0", "weekly-s1",
                                   "weekly-s2"]
    assert plan.status["active"] == ["weekly-active"]


def test_a_firing_later_than_the_starting_deadline_is_skipped_with_a_warning() -> None:
    obj, spec = schedule(status={"lastScheduleTime": "2026-11-26T10:05:00Z"},
                         schedule="10 * * * *", startingDeadlineSeconds=60)
    plan = plan_schedule(obj, spec, [], t(10, 12))
    assert plan.create is None
    assert [e[:2] for e in plan.events] == [("Warning", "MissedSchedule")]
    assert plan.status["lastScheduleTime"] == "2026-11-26T10:10:00Z"  # not reported again
    assert plan_schedule(obj, spec, [], t(10, 10, 59)).create is not None


def test_a_suspended_schedule_creates_nothing_and_says_so() -> None:
    obj, spec = schedule(suspend=True)
    plan = plan_schedule(obj, spec, [], t(12, 0))
    assert plan.create is None
    assert ready(plan) == ("False", "Suspended")
