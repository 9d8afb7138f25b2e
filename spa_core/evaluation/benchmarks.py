"""Standard benchmarks of the model before and after training: EleutherAI's
lm-evaluation-harness (`lm_eval.simple_evaluate`), in-process through transformers.

The evaluate stage calls `run_benchmarks` when `evaluation.benchmarks` is set; the results
go to `evaluate/benchmarks.json` (lm-eval's own results per model) and, as
`{task: {metric: {"before": x, "after": y}}}`, into the stage's stats, which the report
shows beside the judge's scores.
"""

from __future__ import annotations

import logging
from typing import Any

from spa_core.models import resolve_device, resolve_model
from spa_core.spec import BenchmarksSpec, ModelSpec

__all__ = ["compare", "run_benchmarks", "run_lm_eval", "task_manager"]

log = logging.getLogger(__name__)


def task_manager(spec: BenchmarksSpec) -> Any:
    """lm-eval's index of its tasks and `includePath`'s (indexing takes a while: build once);
    an unknown task is named before any model loads."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:  # pragma: no cover - depends on extras
        raise ImportError("evaluation.benchmarks needs the `benchmarks` extra: "
                          "pip install 'spa-core[benchmarks]'") from None
    manager = TaskManager(include_path=spec.include_path)
    unknown = [t for t in spec.tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"evaluation.benchmarks.tasks: lm-evaluation-harness has no task "
                         f"{', '.join(map(repr, unknown))}"
                         + ("" if spec.include_path else " (your own tasks need includePath)"))
    return manager


def run_lm_eval(spec: BenchmarksSpec, model: ModelSpec, model_path: str | None,
                manager: Any = None) -> dict[str, Any]:
    """lm-eval's results (`{task: {"acc,none": ..., ...}}`) for `model`, or for the
    checkpoint at `model_path` when given."""
    manager = manager or task_manager(spec)
    import lm_eval

    path, gguf_file = resolve_model(model, model_path)
    args: dict[str, Any] = {"pretrained": path, "device": resolve_device(),
                            "dtype": model.dtype}
    if gguf_file:
        args["gguf_file"] = gguf_file
    if model_path is None and model.revision:
        args["revision"] = model.revision
    out = lm_eval.simple_evaluate(
        model="hf", model_args=args, tasks=list(spec.tasks), task_manager=manager,
        num_fewshot=spec.num_fewshot, limit=spec.limit, batch_size=spec.batch_size,
        apply_chat_template=spec.apply_chat_template, log_samples=False,
    )
    return out["results"]


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, dict]]:
    """`{task: {metric: {"before": x, "after": y}}}` of the numeric metrics both runs have
    (lm-eval's `metric,filter` keys; standard errors left out)."""
    table: dict[str, dict[str, dict]] = {}
    for task, metrics in after.items():
        for key, value in metrics.items():
            old = before.get(task, {}).get(key)
            if "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key == "sample_len" or not isinstance(old, (int, float)):
                continue
            table.setdefault(task, {})[key.removesuffix(",none")] = {"before": old, "after": value}
    return table


def run_benchmarks(spec: BenchmarksSpec, model: ModelSpec, before_path: str | None,
                   after_path: str | None) -> tuple[dict[str, Any], dict[str, dict[str, dict]]]:
    """lm-eval on the starting policy (`model`, or `before_path`) and on the trained
    checkpoint: (both runs' results, their comparison)."""
    manager, results = task_manager(spec), {}
    for label, path in (("before", before_path), ("after", after_path)):
        log.info("lm-evaluation-harness: %s on the %s model", ", ".join(spec.tasks), label)
        results[label] = run_lm_eval(spec, model, path, manager)
    return results, compare(results["before"], results["after"])
