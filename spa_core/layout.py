"""The run directory's layout: where each stage leaves its output, and the names the operator
and the trainer agree on.

The stages write these paths; the summary, the report, `tune-rho`, the termination message,
the stage benchmark and the operator read them. They all import the names from here rather
than from each other, so none of them depends on another's code. Light: the standard
library only (no pyarrow, fsspec, rich, torch or stage code), for the operator's image.

    <run>/spec.json                        the validated spec (`spa` stages record it)
    <run>/report/report.html, report.md    `spa report`
    <run>/iter-NN/<stage>/_manifest.json   each stage's finished shards and stats
    <run>/iter-NN/prompts/prompts.parquet, heldout.parquet
    <run>/iter-NN/{samples,scores,refined}/shard-NNNNN.parquet
    <run>/iter-NN/pairs/pairs.parquet, responses.parquet
    <run>/iter-NN/train/checkpoint-final, log_history.json
    <run>/iter-NN/evaluate/responses.parquet, benchmarks.json
    <run>/iter-NN/tune-rho.json            `spa tune-rho`
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spa_core.rundir import RunDir

__all__ = [
    "CHECKPOINT",
    "DISTRIBUTED_CONFIG_ENV",
    "DISTRIBUTED_CONFIG_FILES",
    "EVAL_BENCHMARKS",
    "EVAL_RESPONSES",
    "FINAL_CHECKPOINT",
    "HELDOUT",
    "MANIFEST",
    "PAIRS",
    "PAIR_RESPONSES",
    "PROMPTS",
    "REPORT_DIR",
    "REPORT_HTML",
    "REPORT_MD",
    "SPEC_FILE",
    "STAGE_DIRS",
    "TRAIN_LOG",
    "TUNE_RHO",
    "finished_stats",
    "iteration_dir",
    "shard_glob",
    "shard_name",
    "shard_path",
]

# --- the run directory ------------------------------------------------------------------------

#: The validated spec of the run, kept in its run directory (for `spa report RUN_DIR`).
SPEC_FILE = "spec.json"
#: The run report's directory, and its two files in it.
REPORT_DIR = "report"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"


def iteration_dir(iteration: int) -> str:
    """An iteration's directory, relative to the run directory."""
    return f"iter-{iteration:02d}"


# --- inside an iteration directory ------------------------------------------------------------

#: Stage output directories in pipeline order (a stage's manifest is `<dir>/MANIFEST`).
STAGE_DIRS = ("prompts", "samples", "scores", "refined", "pairs", "train", "evaluate")
#: A stage directory's manifest (`spa_core.stages.manifest` writes it).
MANIFEST = "_manifest.json"

#: The drawn prompts, and those held out for the evaluation.
PROMPTS = "prompts/prompts.parquet"
HELDOUT = "prompts/heldout.parquet"
#: The preference pairs with their weights, and every scored response with its group's fate.
PAIRS = "pairs/pairs.parquet"
PAIR_RESPONSES = "pairs/responses.parquet"
#: The published checkpoint in a training output directory, and where a finished training
#: stage leaves the model.
FINAL_CHECKPOINT = "checkpoint-final"
CHECKPOINT = f"train/{FINAL_CHECKPOINT}"
#: The trainer's log history (loss, reward margins per step).
TRAIN_LOG = "train/log_history.json"
#: The evaluation's responses and judgements, before and after training.
EVAL_RESPONSES = "evaluate/responses.parquet"
#: lm-evaluation-harness's results before and after training (`evaluation.benchmarks`).
EVAL_BENCHMARKS = "evaluate/benchmarks.json"
#: `spa tune-rho`'s result.
TUNE_RHO = "tune-rho.json"


def shard_name(index: int) -> str:
    """The name of a stage's `index`-th shard (sample, score and refine keep one file each)."""
    return f"shard-{index:05d}"


def shard_path(stage: str, name: str) -> str:
    """A shard's file in a stage directory."""
    return f"{stage}/{name}.parquet"


def shard_glob(stage: str) -> str:
    """Every shard file of a stage directory, as a glob pattern."""
    return shard_path(stage, "shard-*")


def finished_stats(it: RunDir, stage: str) -> dict[str, Any]:
    """The stats of a finished stage of the iteration directory `it`; {} while it is not
    finished. (Reading only: `spa_core.stages.manifest.StageManifest` writes manifests.)"""
    rel = f"{stage}/{MANIFEST}"
    if not it.exists(rel):
        return {}
    manifest = it.read_json(rel)
    return manifest.get("stats", {}) if manifest.get("complete") else {}


# --- the distributed training configuration ---------------------------------------------------

#: The variable naming the distributed-training file the operator mounts in training pods.
DISTRIBUTED_CONFIG_ENV = "SPA_DISTRIBUTED_CONFIG"
#: That file's name per `training.strategy` (its content: `spa_core.training.distributed`).
DISTRIBUTED_CONFIG_FILES: dict[str, str] = {"fsdp": "fsdp.json", "deepspeed": "deepspeed.json"}
