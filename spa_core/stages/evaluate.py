"""Stage `evaluate`: held-out prompts answered before and after training, self-judged.

Both models answer greedily; one judge (this iteration's starting policy, as in the
method) scores both, so the comparison is not confounded by a change of judge. Judge
answers that cannot be parsed are counted, never silently dropped.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from spa_core.backends import ChatRequest
from spa_core.prompts import sample_messages
from spa_core.stages.context import StageContext
from spa_core.stages.generate import judge, upstream_hash
from spa_core.stages.prompts import BadPromptRows
from spa_core.stages.manifest import StageManifest, config_hash

__all__ = ["run_evaluate"]

STAGE = "evaluate"


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def run_evaluate(ctx: StageContext) -> dict:
    ev = ctx.spec.evaluation
    trained = ctx.trained_path()
    chash = config_hash(STAGE, ev, ctx.spec.scoring, ctx.spec.objectives,
                        ctx.policy_path() or ctx.spec.model, upstream_hash(ctx, "train"))
    manifest = StageManifest.open(ctx.dir, STAGE, chash, force=ctx.force)
    if manifest.complete:
        return manifest.stats
    held = ctx.dir.read_table("prompts/heldout.parquet")
    prompts = held.column("prompt").to_pylist()
    if not prompts:
        raise BadPromptRows("no held-out prompts to evaluate: raise evaluation.count or add prompts")

    stats: dict[str, object] = {"prompts": len(prompts), "judge": "self-judged (starting policy)"}
    columns: dict[str, pa.Array] = {"prompt_id": held.column("prompt_id")}
    for label, model_path in (("before", None), ("after", trained)):
        requests = [ChatRequest(messages=sample_messages(p, ctx.spec.sampling.system_prompt),
                                temperature=0.0, max_tokens=ev.max_tokens, seed=i)
                    for i, p in enumerate(prompts)]
        with ctx.progress(f"evaluate ({label})", len(requests)) as advance:
            answers = [r.text for r in ctx.backend(model_path).generate(requests, on_done=advance)]
        if model_path is not None:  # free the trained model before judging
            ctx.release(model_path)
        a, b, status, _ = judge(ctx, prompts, answers)
        columns |= {
            f"{label}_response": pa.array(answers, pa.string()),
            f"{label}_score_a": pa.array(a, pa.float64()),
            f"{label}_score_b": pa.array(b, pa.float64()),
            f"{label}_status": pa.array(status, pa.string()),
        }
        stats |= {
            f"{label}_primary": _mean(a),
            f"{label}_helpfulness": _mean(b),
            f"{label}_unparsed": sum(x is None or y is None for x, y in zip(a, b, strict=True)),
        }
    for dim in ("primary", "helpfulness"):
        before, after = stats[f"before_{dim}"], stats[f"after_{dim}"]
        stats[f"delta_{dim}"] = (after - before) if before is not None and after is not None else None
    stats = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in stats.items()}
    ctx.dir.write_table(f"{STAGE}/responses.parquet", pa.table(columns))
    manifest.finish(ctx.dir, **stats)
    return stats
