"""Stage `pairs`: dual-criterion denoising and lexicographic preference pairs.

Selects pairs with `spa_core.pairs.select_pairs` over every scored response (samples and
refined), and writes `pairs/pairs.parquet` with the texts the trainer needs, plus
`pairs/responses.parquet` (every response, its scores and whether its group was kept) for
reports.

In two passes, so that memory holds the score columns and one shard's texts, never all the
texts of an iteration: the selection reads only the ids and scores of every shard (the pair
weights are normalised over all pairs); then, shard by shard, the texts are read and joined
to that shard's pairs, and both files are written as streams of row groups. Shards are
slices of `prompts/prompts.parquet`, which is sorted by prompt id, so shard order is prompt
order and the files come out sorted as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spa_core.layout import PAIR_RESPONSES, PAIRS, shard_glob
from spa_core.pairs import PairSelection, revision_pairs, select_pairs
from spa_core.stages.context import StageContext
from spa_core.stages.generate import method_key, upstream_hash
from spa_core.stages.manifest import StageManifest, config_hash
from spa_core.stages.prompts import prompt_cursor

__all__ = ["run_pairs"]

STAGE = "pairs"
_COLUMNS = ["prompt_id", "response_id", "is_refined", "response", "score_a", "score_b", "status"]
#: What the selection reads: no texts.
_SCORE_COLUMNS = ["prompt_id", "response_id", "is_refined", "score_a", "score_b"]
_SORT_RESPONSES = [("prompt_id", "ascending"), ("response_id", "ascending")]
_SORT_PAIRS = [("prompt_id", "ascending"), ("chosen_id", "ascending"),
               ("rejected_id", "ascending")]


@dataclass(frozen=True)
class _Shard:
    """One shard's scored files and the prompt ids they hold."""

    name: str
    files: tuple[str, ...]  # scores/<name>.parquet and/or refined/<name>.parquet
    first: int
    last: int


def _shard_files(ctx: StageContext) -> dict[str, tuple[str, ...]]:
    """Each shard's scored files (scores/ before refined/), by shard name, in name order:
    from one listing per directory, not a lookup per file (each one a request on a store)."""
    files: dict[str, list[str]] = {}
    for rel in ctx.dir.glob(shard_glob("scores")) + ctx.dir.glob(shard_glob("refined")):
        files.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)
    return {name: tuple(files[name]) for name in sorted(files)}


def _select(ctx: StageContext, scores: pa.Table) -> PairSelection:
    """The method's pairs (`method`): SPA's denoised lexicographic pairs, or Self-Criticism's
    revision over original."""
    d, alpha = ctx.spec.denoising, ctx.spec.training.alpha
    columns = [scores.column(c) for c in ("prompt_id", "response_id", "is_refined")]
    if ctx.spec.method == "selfCriticism":
        present = pc.fill_null(pc.not_equal(scores.column("status"), "no_response"), False)
        return revision_pairs(*columns, present, scores.column("score_a").to_numpy(
            zero_copy_only=False), scores.column("score_b").to_numpy(zero_copy_only=False))
    return select_pairs(*columns, scores.column("score_a"), scores.column("score_b"),
                        rho=d.rho, delta=d.delta, alpha=alpha, consistency=d.consistency,
                        informativeness=d.informativeness)


def _score_columns(ctx: StageContext, with_status: bool = False) -> tuple[pa.Table, list[_Shard]]:
    """The ids and scores of every response (pass 1), and the shards in prompt order."""
    parts, shards = [], []
    columns = [*_SCORE_COLUMNS, "status"] if with_status else _SCORE_COLUMNS
    for name, files in _shard_files(ctx).items():
        table = pa.concat_tables([ctx.dir.read_table(rel, columns) for rel in files])
        if table.num_rows == 0:
            continue
        bounds = pc.min_max(table.column("prompt_id"))
        shard = _Shard(name, files, bounds["min"].as_py(), bounds["max"].as_py())
        if shards and shard.first <= shards[-1].last:
            raise ValueError(
                f"{ctx.dir.url('scores', name)} holds prompt ids from {shard.first}, not after "
                f"those of {shards[-1].name} (up to {shards[-1].last}): the shards must follow "
                "prompts/prompts.parquet's order (by prompt id); run `spa prompts` and the "
                "stages after it again")
        shards.append(shard)
        parts.append(table)
    if not parts:
        raise FileNotFoundError(f"no scored responses under {ctx.dir.url()}: run `spa score` first")
    return pa.concat_tables(parts), shards


def _shard_responses(ctx: StageContext, shard: _Shard) -> pa.Table:
    """One shard's responses with their texts and scores, sorted by (prompt, response)."""
    parts = []
    for rel in shard.files:
        if rel.startswith("scores/"):  # the texts are the samples'
            table = ctx.dir.read_table(rel, [c for c in _COLUMNS if c != "response"])
            samples = ctx.dir.read_table(rel.replace("scores/", "samples/", 1),
                                         ["prompt_id", "response_id", "response"])
            table = table.join(samples, keys=["prompt_id", "response_id"])
        else:
            table = ctx.dir.read_table(rel, _COLUMNS)
        parts.append(table.select(_COLUMNS))
    return pa.concat_tables(parts).sort_by(_SORT_RESPONSES)


def _pairs_with_texts(pairs: pa.Table, prompts: pa.Table, responses: pa.Table) -> pa.Table:
    """`pairs` with the prompt's and both responses' texts and scores."""
    texts = responses.select(["prompt_id", "response_id", "response", "score_a", "score_b"])

    def side(name: str) -> pa.Table:
        return texts.rename_columns(["prompt_id", f"{name}_id", name, f"{name}_a", f"{name}_b"])

    return (pairs.join(prompts, keys="prompt_id")
            .join(side("chosen"), keys=["prompt_id", "chosen_id"])
            .join(side("rejected"), keys=["prompt_id", "rejected_id"])
            .sort_by(_SORT_PAIRS))


def run_pairs(ctx: StageContext) -> dict:
    d = ctx.spec.denoising
    alpha = ctx.spec.training.alpha
    chash = config_hash(STAGE, d, alpha, upstream_hash(ctx, "scores"), upstream_hash(ctx, "refined"),
                        *method_key(ctx))
    manifest = StageManifest.open(ctx.dir, STAGE, chash, force=ctx.force)
    if manifest.complete:
        return manifest.stats

    scores, shards = _score_columns(ctx, with_status=ctx.spec.method == "selfCriticism")
    selection = _select(ctx, scores)
    del scores
    pairs = selection.to_arrow()  # sorted by (prompt, chosen, rejected)
    pair_prompts = pairs.column("prompt_id").to_numpy()
    kept = np.asarray(selection.kept_prompt_ids, np.int64)  # ascending

    first = _shard_responses(ctx, shards[0])
    with prompt_cursor(ctx) as prompts:
        # The files' schemas, from empty tables shaped as every shard's will be.
        empty = first.slice(0, 0)
        pair_schema = _pairs_with_texts(pairs.slice(0, 0), prompts.schema.empty_table(),
                                        empty).schema
        response_schema = empty.schema.append(pa.field("group_kept", pa.bool_()))
        with ctx.dir.table_writer(PAIR_RESPONSES, response_schema) as out_responses, \
                ctx.dir.table_writer(PAIRS, pair_schema) as out_pairs:
            for shard in shards:
                responses, first = (first if first is not None
                                    else _shard_responses(ctx, shard)), None
                shard_prompts = prompts.upto(shard.last)
                lo, hi = np.searchsorted(pair_prompts, [shard.first, shard.last + 1])
                if hi > lo:
                    out_pairs.write(_pairs_with_texts(pairs.slice(lo, hi - lo), shard_prompts,
                                                      responses))
                k_lo, k_hi = np.searchsorted(kept, [shard.first, shard.last + 1])
                group_kept = pc.is_in(responses.column("prompt_id"),
                                      pa.array(kept[k_lo:k_hi], pa.int64()))
                out_responses.write(responses.append_column("group_kept", group_kept))
    stats = {k: int(v) for k, v in selection.stats.items()}
    manifest.finish(ctx.dir, **stats)
    return stats
