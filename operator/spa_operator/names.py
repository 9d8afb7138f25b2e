"""Deterministic names of a run's children, and the name lengths that keep them valid.

Every child name is `<run>-<suffix>` and must be a DNS label (at most 63 characters, starting
with a letter for Services). The longest suffixes bound the run's own name; the CRD enforces
that bound with a CEL rule, so a run the API server accepts never yields an invalid child.
"""

from __future__ import annotations

from pydantic import BaseModel

from spa_core.spec import MAX_TRAINING_RESTARTS, IterationsSpec, TrainingSpec

__all__ = [
    "DNS_LABEL_MAX",
    "MAX_RUN_NAME_LENGTH",
    "MAX_SCHEDULE_NAME_LENGTH",
    "evaluation_job",
    "generator_deployment",
    "generator_service",
    "pipeline_job",
    "scheduled_run",
    "spec_config_map",
    "trained_answers_job",
    "training_config_map",
    "training_job",
    "training_pod_hostname",
    "training_service",
]

DNS_LABEL_MAX = 63



def _upper_bound(model: type[BaseModel], field: str) -> int:
    return next(m.le for m in model.model_fields[field].metadata if getattr(m, "le", None))


#: Highest iteration index and training node index the spec allows.
_MAX_ITERATION = _upper_bound(IterationsSpec, "count") - 1
_MAX_NODE_INDEX = _upper_bound(TrainingSpec, "nodes") - 1
#: Digits of a schedule firing's timestamp (minutes since the epoch: 8 digits until 2160).
_SCHEDULE_STAMP_DIGITS = 8


def spec_config_map(run: str) -> str:
    """ConfigMap holding the run's YAML as the stage commands read it."""
    return f"{run}-spec"


def generator_service(run: str) -> str:
    """Service in front of the current iteration's vLLM pods (stable across iterations)."""
    return f"{run}-generator"


def generator_deployment(run: str, iteration: int) -> str:
    """vLLM Deployment serving iteration `iteration`'s policy."""
    return f"{run}-generator-{iteration}"


def pipeline_job(run: str, iteration: int) -> str:
    """Job running prompts, sample, score, refine and pairs for one iteration."""
    return f"{run}-pipeline-{iteration}"


def training_job(run: str, iteration: int, attempt: int = 0) -> str:
    """Indexed Job training one iteration, one pod per node. A group restart is a new Job,
    `-r<attempt>`: the failed attempt stays, with its pods' logs, and its count is the run's
    memory of the restarts made."""
    return f"{run}-train-{iteration}" + (f"-r{attempt}" if attempt else "")


def training_service(run: str, iteration: int) -> str:
    """Headless Service giving every attempt's training pods stable DNS names."""
    return training_job(run, iteration)


def training_config_map(run: str) -> str:
    """ConfigMap with the accelerate (FSDP / DeepSpeed) configuration."""
    return f"{run}-accelerate"


def training_pod_hostname(run: str, iteration: int, index: int, attempt: int = 0) -> str:
    """Hostname of an Indexed Job pod: `<job>-<completion index>`."""
    return f"{training_job(run, iteration, attempt)}-{index}"


def trained_answers_job(run: str, iteration: int) -> str:
    """Job recording the trained model's answers to the held-out prompts, from the vLLM
    Deployment of iteration `iteration`'s checkpoint (`<run>-generator-<iteration + 1>`)."""
    return f"{run}-answers-{iteration}"


def evaluation_job(run: str, iteration: int) -> str:
    """Job comparing the model before and after one iteration."""
    return f"{run}-eval-{iteration}"


def scheduled_run(schedule: str, scheduled_minutes: int) -> str:
    """Run created by a schedule's firing: `<schedule>-<minutes since the epoch>`, like CronJob."""
    return f"{schedule}-{scheduled_minutes}"


def _longest_suffix() -> int:
    it, node = _MAX_ITERATION, _MAX_NODE_INDEX
    names = [
        spec_config_map(""),
        generator_service(""),
        generator_deployment("", it + 1),  # the last iteration's trained checkpoint
        pipeline_job("", it),
        training_job("", it, MAX_TRAINING_RESTARTS),
        training_service("", it),
        training_config_map(""),
        training_pod_hostname("", it, node, MAX_TRAINING_RESTARTS),
        trained_answers_job("", it),
        evaluation_job("", it),
    ]
    return max(len(n) for n in names)


#: Longest run name whose every child name fits a DNS label.
MAX_RUN_NAME_LENGTH = DNS_LABEL_MAX - _longest_suffix()
#: Longest schedule name whose runs' names fit MAX_RUN_NAME_LENGTH.
MAX_SCHEDULE_NAME_LENGTH = MAX_RUN_NAME_LENGTH - 1 - _SCHEDULE_STAMP_DIGITS
