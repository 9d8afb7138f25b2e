"""Stage `pairs`: dual-criterion denoising and lexicographic preference pairs.

Reads every scored response (samples and refined), selects pairs with
`spa_core.pairs.select_pairs`, and writes `pairs/pairs.parquet` with the texts the
trainer needs, plus `pairs/responses.parquet` (every response and its scores) for reports.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from spa_core.pairs import select_pairs
from spa_core.stages.context import StageContext
from spa_core.stages.generate import upstream_hash
from spa_core.stages.manifest import StageManifest, config_hash

__all__ = ["run_pairs"]

STAGE = "pairs"
_COLUMNS = ["prompt_id", "response_id", "is_refined", "response", "score_a", "score_b", "status"]


def load_responses(ctx: StageContext) -> pa.Table:
    """Every sampled and refined response with its scores, in one table."""
    parts = []
    for rel in ctx.dir.glob("scores/shard-*.parquet"):
        scores = ctx.dir.read_table(rel)
        samples = ctx.dir.read_table(rel.replace("scores/", "samples/"), ["prompt_id", "response_id", "response"])
        parts.append(scores.join(samples, keys=["prompt_id", "response_id"]).select(_COLUMNS))
    for rel in ctx.dir.glob("refined/shard-*.parquet"):
        parts.append(ctx.dir.read_table(rel).select(_COLUMNS))
    if not parts:
        raise FileNotFoundError(f"no scored responses under {ctx.dir.url()}: run `spa score` first")
    return pa.concat_tables(parts).sort_by([("prompt_id", "ascending"), ("response_id", "ascending")])


def run_pairs(ctx: StageContext) -> dict:
    d = ctx.spec.denoising
    alpha = ctx.spec.training.alpha
    chash = config_hash(STAGE, d, alpha, upstream_hash(ctx, "scores"), upstream_hash(ctx, "refined"))
    manifest = StageManifest.open(ctx.dir, STAGE, chash, force=ctx.force)
    if manifest.complete:
        return manifest.stats

    responses = load_responses(ctx)
    selection = select_pairs(
        responses.column("prompt_id"), responses.column("response_id"),
        responses.column("is_refined"), responses.column("score_a"), responses.column("score_b"),
        rho=d.rho, delta=d.delta, alpha=alpha,
    )
    pairs = selection.to_arrow()
    prompts = ctx.dir.read_table("prompts/prompts.parquet")
    texts = responses.select(["prompt_id", "response_id", "response", "score_a", "score_b"])

    def side(name: str) -> pa.Table:
        return texts.rename_columns(["prompt_id", f"{name}_id", name, f"{name}_a", f"{name}_b"])

    out = (pairs.join(prompts, keys="prompt_id")
           .join(side("chosen"), keys=["prompt_id", "chosen_id"])
           .join(side("rejected"), keys=["prompt_id", "rejected_id"])
           .sort_by([("prompt_id", "ascending"), ("chosen_id", "ascending"),
                     ("rejected_id", "ascending")]))
    kept = pa.array(selection.kept_prompt_ids, pa.int64())
    responses = responses.append_column("group_kept", pc.is_in(responses.column("prompt_id"), kept))
    ctx.dir.write_table(f"{STAGE}/responses.parquet", responses)
    ctx.dir.write_table(f"{STAGE}/pairs.parquet", out)
    stats = {k: int(v) for k, v in selection.stats.items()}
    manifest.finish(ctx.dir, **stats)
    return stats
