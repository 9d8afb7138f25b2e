"""The status the operator writes on its custom resources (the CRDs' status schemas).

Pydantic models like the specs, so the status schema in the CRD is generated too and the
handlers write status through these models rather than hand-built dicts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "Artifacts",
    "Condition",
    "Counts",
    "Evaluation",
    "JobStage",
    "RunPhase",
    "RunStage",
    "RunStatus",
    "ScheduleStatus",
]

RunPhase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]
RunStage = Literal["Generator", "Pipeline", "Training", "Evaluation", "Done"]
JobStage = Literal["Pipeline", "Training", "TrainedAnswers", "Evaluation"]
"""The stages that run as a Job."""


class _Status(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )


class Condition(_Status):
    """A metav1.Condition: the latest observation of one aspect of the object."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """Condition type: Ready, Suspended, Failed, GeneratorReady, ..."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: Annotated[str, Field(min_length=1, max_length=1024)]
    """CamelCase reason of the last transition."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""
    last_transition_time: datetime
    """When the status last changed."""
    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The .metadata.generation the condition was set for."""


class Counts(_Status):
    """What the pipeline produced in the current iteration."""

    prompts: Annotated[int | None, Field(ge=0)] = None
    """Prompts drawn."""
    samples: Annotated[int | None, Field(ge=0)] = None
    """Sampled responses."""
    kept: Annotated[int | None, Field(ge=0)] = None
    """Prompt groups kept by dual-criterion denoising."""
    pairs: Annotated[int | None, Field(ge=0)] = None
    """Preference pairs."""


class Evaluation(_Status):
    """Headline of the latest evaluation: did the trained model get safer AND more helpful?"""

    before_primary: float | None = None
    """Mean primary-objective score (1..10) of the starting model on held-out prompts."""
    after_primary: float | None = None
    """Same, trained model."""
    before_helpfulness: float | None = None
    """Mean helpfulness score of the starting model."""
    after_helpfulness: float | None = None
    """Same, trained model."""
    win_rate_primary: Annotated[float | None, Field(ge=0, le=1)] = None
    """Pairwise win rate of the trained model on the primary objective (both orders)."""
    win_rate_helpfulness: Annotated[float | None, Field(ge=0, le=1)] = None
    """Pairwise win rate of the trained model on helpfulness."""


class Artifacts(_Status):
    """Where the run's outputs are."""

    run_dir: Annotated[str | None, Field(max_length=4096)] = None
    """Run directory (path on the run's volume, or an fsspec URI)."""
    pairs: Annotated[str | None, Field(max_length=4096)] = None
    """Pairs Parquet of the latest finished iteration."""
    model: Annotated[str | None, Field(max_length=4096)] = None
    """Checkpoint trained by the latest finished iteration."""
    report: Annotated[str | None, Field(max_length=4096)] = None
    """The run report (HTML), once an evaluation has finished."""


class RunStatus(_Status):
    """Progress of an SPAAlignmentRun."""

    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The .metadata.generation the operator last acted on."""
    phase: RunPhase | None = None
    """Pending, Running, Suspended, Succeeded or Failed."""
    stage: RunStage | None = None
    """Stage of the current iteration."""
    iteration: Annotated[int | None, Field(ge=0)] = None
    """Current iteration (0-based)."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = []
    """Latest observations (type Ready is the summary)."""
    finished_stages: Annotated[list[JobStage], Field(max_length=4)] = []
    """Stages of the current iteration whose Job succeeded; they are not run again, even when
    their Job has been deleted since."""
    counts: Counts | None = None
    """Counts from the current iteration's pipeline."""
    training_restarts: Annotated[int | None, Field(ge=0)] = None
    """Restarts of the current iteration's training group (each from its last checkpoint)."""
    retries: Annotated[int | None, Field(ge=0)] = None
    """Times the failed run was run again from its finished stages (the
    `alignment.spa.dev/retry` annotation)."""
    retried_for: Annotated[str | None, Field(max_length=256)] = None
    """The value of `alignment.spa.dev/retry` last acted on."""
    last_retry_time: datetime | None = None
    """When the run was last retried; `spec.activeDeadlineSeconds` counts from then."""
    evaluation: Evaluation | None = None
    """Headline numbers of the latest evaluation."""
    artifacts: Artifacts | None = None
    """Artifact locations."""
    start_time: datetime | None = None
    """When the run started; from then on the spec is immutable except `suspend`."""
    stage_start_time: datetime | None = None
    """When the current stage (or phase, while suspended or finished) began."""
    completion_time: datetime | None = None
    """When the run succeeded or failed."""
    message: Annotated[str | None, Field(max_length=32768)] = None
    """Why the run is in its phase (failures name the child and its termination message)."""


class ScheduleStatus(_Status):
    """Progress of an SPAAlignmentSchedule."""

    observed_generation: Annotated[int | None, Field(ge=0)] = None
    """The .metadata.generation the operator last acted on."""
    active: Annotated[list[str], Field(max_length=1000)] = []
    """Names of the schedule's runs that have not finished."""
    last_schedule_time: datetime | None = None
    """When a run was last created."""
    last_successful_time: datetime | None = None
    """When a run of the schedule last succeeded."""
    last_successful_run: Annotated[str | None, Field(max_length=253)] = None
    """Name of the last run that succeeded."""
    last_model: Annotated[str | None, Field(max_length=4096)] = None
    """Model trained by the last successful run; the next run starts from it (`chain`)."""
    conditions: Annotated[list[Condition], Field(max_length=32)] = []
    """Latest observations."""
