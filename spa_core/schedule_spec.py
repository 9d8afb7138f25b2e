"""The SPAAlignmentSchedule spec: a cron schedule creating SPAAlignmentRuns (recurring alignment).

Like a CronJob whose job template is a RunSpec. Each firing creates a run; with `chain`, the
run starts from the model the last successful run of the schedule trained. Importing this
module stays as cheap as importing spa_core.spec.
"""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from spa_core.spec import ObjectMeta, RunSpec, _Spec, parse_document

__all__ = ["CRON_PATTERN", "SPAAlignmentSchedule", "ScheduleSpec", "parse_schedule"]

_CRON_FIELD = r"[0-9A-Za-z*/,?-]+"
#: Five cron fields (minute hour day-of-month month day-of-week) or a macro, as CronJob accepts.
CRON_PATTERN = (
    rf"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    rf"{_CRON_FIELD}( +{_CRON_FIELD}){{4}})$"
)


class ScheduleSpec(_Spec):
    """When to create runs, from which template, and how many finished runs to keep."""

    schedule: Annotated[str, Field(min_length=1, max_length=256, pattern=CRON_PATTERN)]
    """Cron schedule (`0 3 * * 0`, `@weekly`), in `timeZone`."""
    time_zone: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    """IANA time zone of the schedule (`Europe/Paris`); UTC when unset."""
    run_template: RunSpec
    """The spec of every run the schedule creates."""
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Forbid"
    """While a run is still going: start another (Allow), skip the firing (Forbid), or delete
    the running one and start a new one (Replace)."""
    chain: bool = True
    """Start each run from the model trained by the schedule's last successful run."""
    successful_runs_history_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Succeeded runs to keep; older ones are deleted (their artifacts stay in storage)."""
    failed_runs_history_limit: Annotated[int, Field(ge=0, le=100)] = 1
    """Failed runs to keep."""
    suspend: bool = False
    """Create no new runs (runs already created are not affected)."""
    starting_deadline_seconds: Annotated[int | None, Field(ge=0, le=31_536_000)] = None
    """A firing missed by more than this (operator down) is skipped; no deadline when unset."""

    @field_validator("time_zone")
    @classmethod
    def _known_time_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (use an IANA name such as "
                                 "'Europe/Paris' or 'UTC')") from None
        return value


class SPAAlignmentSchedule(_Spec):
    """A whole schedule document, as applied with kubectl."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    api_version: Annotated[Literal["alignment.spa.dev/v1alpha1"], Field(alias="apiVersion")]
    kind: Literal["SPAAlignmentSchedule"]
    metadata: ObjectMeta
    spec: ScheduleSpec

    @property
    def name(self) -> str:
        return self.metadata.name


def parse_schedule(document: dict[str, Any], *, source: str = "<spec>") -> SPAAlignmentSchedule:
    """Validate a schedule document; raise SpecError naming every bad field and its bounds."""
    return parse_document(SPAAlignmentSchedule, document, source=source)
