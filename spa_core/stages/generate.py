"""Stages `sample`, `score` and `refine`: the model answers, judges itself, and refines.

All three work shard by shard (`storage.shardSize` prompts each) and record a shard in
their manifest only once its Parquet file is in place, so a restarted stage picks up at
the first unfinished shard.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spa_core.backends import Backend, ChatRequest
from spa_core.layout import shard_glob, shard_path
from spa_core.prompts import (
    critique_messages,
    dimension_names,
    judge_messages,
    refine_messages,
    revision_messages,
    sample_messages,
    score_json_schema,
)
from spa_core.scoring import parse_scores
from spa_core.stages.context import StageContext
from spa_core.stages.manifest import StageManifest, config_hash
from spa_core.stages.prompts import prompt_count, prompt_cursor, prompt_shards

__all__ = ["judge", "method_key", "over_context", "run_refine", "run_sample", "run_score",
           "upstream_hash"]

log = logging.getLogger(__name__)

#: The command that produces each stage directory.
COMMAND = {"prompts": "prompts", "samples": "sample", "scores": "score", "refined": "refine",
           "pairs": "pairs", "train": "train"}


def upstream_hash(ctx: StageContext, stage: str) -> str:
    """Config hash of a finished upstream stage; a clear error when it is not finished."""
    manifest = StageManifest.load(ctx.dir, stage)
    if manifest is None or not manifest.complete:
        raise FileNotFoundError(
            f"{ctx.dir.url(stage)} is not finished: run `spa {COMMAND[stage]}` first")
    return manifest.config_hash


def method_key(ctx: StageContext) -> tuple[str, ...]:
    """What `method` adds to a stage's configuration hash: nothing for `spa`, so that run
    directories made before the setting existed keep their hashes."""
    return () if ctx.spec.method == "spa" else (ctx.spec.method,)


def _system_prompts(ctx: StageContext, prompt_ids: np.ndarray) -> tuple[list[str | None], list[bool]]:
    """Each sample's system prompt: varied with the configured probability, reproducibly."""
    s = ctx.spec.sampling
    p = ctx.spec.variation_probability
    systems, varied = [], []
    for pid in prompt_ids:
        rng = np.random.default_rng([s.seed, ctx.iteration, int(pid)])
        draws = rng.random(s.num_samples)
        for i in range(s.num_samples):
            swap = bool(draws[i] < p)
            varied.append(swap)
            systems.append(s.variation_system_prompt if swap else s.system_prompt)
    return systems, varied


def run_sample(ctx: StageContext) -> dict:
    """n responses per prompt at the sampling temperature."""
    s = ctx.spec.sampling
    chash = config_hash("sample", s, ctx.spec.variation_probability, ctx.policy_id(),
                        ctx.spec.storage.shard_size, upstream_hash(ctx, "prompts"))
    manifest = StageManifest.open(ctx.dir, "samples", chash, force=ctx.force)
    if not manifest.complete:
        done = sum(shard["rows"] for shard in manifest.shards.values())
        total = prompt_count(ctx) * s.num_samples - done
        with ctx.progress("sample", total) as advance:
            for name, table in prompt_shards(ctx):  # one shard's prompts in memory at a time
                if manifest.is_done(name):
                    continue
                ids = table.column("prompt_id").to_numpy()
                texts = table.column("prompt").to_pylist()
                systems, varied = _system_prompts(ctx, ids)
                requests = [
                    ChatRequest(
                        messages=sample_messages(texts[j // s.num_samples], systems[j]),
                        temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                        seed=s.seed + ctx.iteration * 1_000_003 + int(ids[j // s.num_samples]) * s.num_samples + j % s.num_samples,
                    )
                    for j in range(len(ids) * s.num_samples)
                ]
                results = ctx.backend().generate(requests, on_done=advance)
                out = pa.table({
                    "prompt_id": pa.array(np.repeat(ids, s.num_samples), pa.int64()),
                    "response_id": pa.array(np.tile(np.arange(s.num_samples), len(ids)), pa.int64()),
                    "system_prompt": pa.array(systems, pa.string()),
                    "system_varied": pa.array(varied, pa.bool_()),
                    "response": pa.array([r.text for r in results], pa.string()),
                    "finish_reason": pa.array([r.finish_reason for r in results], pa.string()),
                    "error": pa.array([r.error for r in results], pa.string()),
                })
                ctx.dir.write_table(shard_path("samples", name), out)
                manifest.mark_shard(ctx.dir, name, rows=out.num_rows,
                                    failed=sum(r.text is None for r in results))
        shards = manifest.shards.values()
        manifest.finish(ctx.dir, samples=sum(x["rows"] for x in shards),
                        samples_failed=sum(x["failed"] for x in shards))
    return manifest.stats


def judge(ctx: StageContext, instructions: Sequence[str], responses: Sequence[str | None],
          advance: Callable[[int], None] | None = None, model_path: str | None = None,
          backend: Backend | None = None, temperature: float | None = None,
          ) -> tuple[list[float | None], list[float | None], list[str], list[str | None]]:
    """Score responses on (primary, secondary); retry unparseable answers.

    The judge is `backend`, else the policy at `model_path` (this iteration's by default);
    its first attempt samples at `temperature` (default: `scoring.temperature`).
    Returns score_a, score_b (None when missing), the parse status and the raw judge text.
    A response that is itself missing is not sent to the judge and scores as missing.
    """
    sc, obj = ctx.spec.scoring, ctx.spec.objectives
    names = dimension_names(obj.primary, obj.secondary)
    backend = backend or ctx.backend(model_path)
    first_temperature = sc.temperature if temperature is None else temperature
    use_schema = sc.structured_output == "on" or (
        sc.structured_output == "auto" and backend.supports_json_schema)
    schema = score_json_schema(obj.primary, obj.secondary) if use_schema else None

    n = len(responses)
    a: list[float | None] = [None] * n
    b: list[float | None] = [None] * n
    status = ["no_response"] * n
    raw: list[str | None] = [None] * n
    pending = [i for i in range(n) if responses[i]]
    for attempt in range(sc.retries + 1):
        if not pending:
            break
        requests = [
            ChatRequest(
                messages=judge_messages(
                    responses[i], obj.primary, obj.constitution, obj.secondary,
                    instruction=instructions[i] if sc.include_instruction else None),
                temperature=first_temperature if attempt == 0 else max(first_temperature,
                                                                       sc.retry_temperature),
                max_tokens=sc.max_tokens, json_schema=schema,
                seed=attempt * 7919 + i,
            )
            for i in pending
        ]
        results = backend.generate(requests, on_done=advance if attempt == 0 else None)
        still = []
        for i, result in zip(pending, results, strict=True):
            parsed = parse_scores(result.text, names)
            raw[i] = result.text if result.text is not None else f"error: {result.error}"
            a[i], b[i], status[i] = parsed.a, parsed.b, parsed.status
            if not parsed.ok:
                still.append(i)
        pending = still
    return a, b, status, raw


def run_score(ctx: StageContext) -> dict:
    """Self-evaluation of every sampled response."""
    chash = config_hash("score", ctx.spec.scoring, ctx.spec.objectives, ctx.policy_id(),
                        upstream_hash(ctx, "samples"))
    manifest = StageManifest.open(ctx.dir, "scores", chash, force=ctx.force)
    if not manifest.complete:
        todo = _unfinished(ctx, "samples", manifest)
        sample_rows = StageManifest.load(ctx.dir, "samples").shards
        with ctx.progress("score", sum(sample_rows[name]["rows"] for name in todo)) as advance, \
                prompt_cursor(ctx) as cursor:
            for name in todo:
                samples = ctx.dir.read_table(shard_path("samples", name))
                ids = samples.column("prompt_id").to_numpy()
                prompts = cursor.texts(int(ids.min()), int(ids.max())) if ids.size else {}
                a, b, status, raw = judge(ctx, [prompts[int(p)] for p in ids],
                                          samples.column("response").to_pylist(), advance)
                out = _scored_table(samples.column("prompt_id"), samples.column("response_id"),
                                    False, a, b, status, raw)
                ctx.dir.write_table(shard_path("scores", name), out)
                manifest.mark_shard(ctx.dir, name, rows=out.num_rows, **Counter(status))
        manifest.finish(ctx.dir, **_status_totals(manifest))
    return manifest.stats


def run_refine(ctx: StageContext) -> dict:
    """One refined response per prompt from all samples and their scores, then scored; with
    `method: selfCriticism`, the first sample critiqued and revised instead."""
    s, obj = ctx.spec.sampling, ctx.spec.objectives
    method = ctx.spec.method
    chash = config_hash("refine", s.max_tokens, ctx.spec.scoring, obj, ctx.policy_id(),
                        upstream_hash(ctx, "scores"), *method_key(ctx))
    manifest = StageManifest.open(ctx.dir, "refined", chash, force=ctx.force)
    if not manifest.complete:
        if (budget := _refine_budget_warning(ctx)) is not None:
            _warn(ctx, budget)
        todo = _unfinished(ctx, "scores", manifest)
        with ctx.progress("refine", len(todo)) as advance, prompt_cursor(ctx) as cursor:
            for name in todo:
                samples = ctx.dir.read_table(shard_path("samples", name))
                shard_ids = samples.column("prompt_id")
                prompts = cursor.texts(pc.min(shard_ids).as_py(), pc.max(shard_ids).as_py()) \
                    if len(shard_ids) else {}
                if method == "selfCriticism":
                    ids, texts, failed = _revise(ctx, samples, prompts)
                else:
                    ids, texts, failed = _refine(ctx, samples, name, prompts)
                over = sum(map(over_context, failed))
                a, b, status, raw = judge(ctx, [prompts[p] for p in ids], texts)
                out = _scored_table(
                    pa.array(ids, pa.int64()),
                    pa.array(np.full(len(ids), s.num_samples), pa.int64()),
                    True, a, b, status, raw, response=texts)
                ctx.dir.write_table(shard_path("refined", name), out)
                manifest.mark_shard(ctx.dir, name, rows=out.num_rows, **Counter(status),
                                    refine_failed=len(failed) - over, refine_over_context=over)
                if failed:
                    log.warning("refine: %d of %d requests of %s failed, e.g. %s", len(failed),
                                len(ids), name, failed[0])
                advance(1)
        manifest.finish(ctx.dir, **_status_totals(manifest))
    _warn_about_failed_refinements(ctx, manifest.stats)
    return manifest.stats


def _refine(ctx: StageContext, samples: pa.Table, name: str,
            prompts: dict[int, str]) -> tuple[list[int], list[str | None], list[str]]:
    """SPA's self-refinement of one shard: per prompt, one answer written from all its scored
    samples. (prompt ids, refined texts or None, the failed requests' errors)."""
    s, obj = ctx.spec.sampling, ctx.spec.objectives
    groups = _groups(samples, ctx.dir.read_table(shard_path("scores", name)))
    ids = sorted(groups)
    requests = [
        ChatRequest(messages=refine_messages(prompts[pid], groups[pid], obj.primary,
                                             obj.constitution, obj.secondary),
                    temperature=0.0, max_tokens=s.max_tokens, seed=s.seed + pid)
        for pid in ids
    ]
    results = ctx.backend().generate(requests)
    return (ids, [r.text.strip() if r.text else None for r in results],
            [r.error or "empty answer" for r in results if not r.text])


def _revise(ctx: StageContext, samples: pa.Table,
            prompts: dict[int, str]) -> tuple[list[int], list[str | None], list[str]]:
    """Self-Criticism of one shard: per prompt, its first sample critiqued against the primary
    objective, then revised, both greedily in one chat. (prompt ids, revisions or None, the
    failed requests' errors; a prompt whose first sample is missing is not asked)."""
    s, obj = ctx.spec.sampling, ctx.spec.objectives
    first = samples.filter(pc.equal(samples.column("response_id"), 0)).sort_by("prompt_id")
    ids = first.column("prompt_id").to_pylist()
    originals = first.column("response").to_pylist()
    systems = first.column("system_prompt").to_pylist()
    live = [k for k, text in enumerate(originals) if text]

    def ask(messages: Callable[[int], list], rows: list[int]) -> list:
        return ctx.backend().generate([
            ChatRequest(messages=messages(k), temperature=0.0, max_tokens=s.max_tokens,
                        seed=s.seed + ids[k]) for k in rows])

    critiques = ask(lambda k: critique_messages(prompts[ids[k]], originals[k], obj.primary,
                                                obj.constitution, systems[k]), live)
    failed = [r.error or "empty answer" for r in critiques if not r.text]
    critiqued = {k: r.text for k, r in zip(live, critiques, strict=True) if r.text}
    rows = list(critiqued)
    revisions = ask(lambda k: revision_messages(prompts[ids[k]], originals[k], critiqued[k],
                                                obj.primary, obj.constitution, systems[k]), rows)
    failed += [r.error or "empty answer" for r in revisions if not r.text]
    texts: list[str | None] = [None] * len(ids)
    for k, r in zip(rows, revisions, strict=True):
        texts[k] = r.text.strip() if r.text else None
    return ids, texts, failed


#: Refinements that failed, as a share of the prompts, above which the stage warns.
REFINE_FAILURE_WARNING = 0.02
#: What servers say when a prompt and its answer do not fit the model's context (vLLM,
#: llama.cpp's servers, `TransformersBackend`).
_OVER_CONTEXT = re.compile(r"context (length|window)|exceeds? the model's context|too many tokens",
                           re.IGNORECASE)


def over_context(error: str) -> bool:
    """Whether a failed request's error says the request did not fit the context."""
    return bool(_OVER_CONTEXT.search(error))


def _refine_budget_warning(ctx: StageContext) -> str | None:
    """Why refinement prompts may not fit `generator.maxModelLen`, before any is sent."""
    limit, s = ctx.spec.generator.max_model_len, ctx.spec.sampling
    if limit is None:
        return None
    # The refinement prompt quotes every sample (each up to maxTokens) and asks for an answer
    # of up to maxTokens more; the instruction, scores and template come on top. A
    # Self-Criticism chat holds one sample and its critique, and asks for the revision.
    if ctx.spec.method == "selfCriticism":
        quoted, what = 2, "a sample and its critique"
    else:
        quoted, what = s.num_samples, f"{s.num_samples} samples"
    worst = (quoted + 1) * s.max_tokens
    if worst <= limit:
        return None
    return (f"refinement prompts quote {what} of up to {s.max_tokens} tokens "
            f"and ask for {s.max_tokens} more: up to {worst} tokens before the instruction, "
            f"over generator.maxModelLen ({limit}); a group whose samples are long fails its "
            "refinement (counted as refine_over_context): raise maxModelLen or lower "
            "sampling.maxTokens")


def _warn_about_failed_refinements(ctx: StageContext, stats: dict) -> None:
    failed = stats.get("refine_failed", 0) + stats.get("refine_over_context", 0)
    prompts = stats.get("rows", 0)
    if prompts and failed / prompts > REFINE_FAILURE_WARNING:
        message = (f"{failed} of {prompts} refinements failed ({failed / prompts:.1%}; "
                   f"{stats.get('refine_over_context', 0)} did not fit the context): their "
                   "groups have no refined answer and are dropped as malformed, which drops "
                   "long answers more often")
        _warn(ctx, message)


def _warn(ctx: StageContext, message: str) -> None:
    """A refine-stage warning, in the log and on the console."""
    log.warning("refine: %s", message)
    ctx.console.print(f"[yellow]warning:[/] {message}")


def _scored_table(prompt_id: pa.Array, response_id: pa.Array, is_refined: bool,
                  a: list[float | None], b: list[float | None], status: list[str],
                  raw: list[str | None], response: list[str | None] | None = None) -> pa.Table:
    """The columns `score` and `refine` write: ids, optionally the response, and its scores."""
    columns = {
        "prompt_id": prompt_id,
        "response_id": response_id,
        "is_refined": pa.array(np.full(len(prompt_id), is_refined)),
    }
    if response is not None:
        columns["response"] = pa.array(response, pa.string())
    return pa.table(columns | {
        "score_a": pa.array(a, pa.float64()),
        "score_b": pa.array(b, pa.float64()),
        "status": pa.array(status, pa.string()),
        "judge_output": pa.array(raw, pa.string()),
    })


def _unfinished(ctx: StageContext, upstream: str, manifest: StageManifest) -> list[str]:
    """Shards of the upstream stage that this stage has not finished yet."""
    names = [rel.split("/")[-1].removesuffix(".parquet")
             for rel in ctx.dir.glob(shard_glob(upstream))]
    return [name for name in names if not manifest.is_done(name)]


def _groups(samples: pa.Table, scores: pa.Table) -> dict[int, list[tuple[str, float | None, float | None]]]:
    """Per prompt, its sampled responses with their scores (missing responses left out)."""
    joined = samples.join(scores.select(["prompt_id", "response_id", "score_a", "score_b"]),
                          keys=["prompt_id", "response_id"])
    joined = joined.filter(pc.is_valid(joined.column("response"))).sort_by(
        [("prompt_id", "ascending"), ("response_id", "ascending")])
    groups: dict[int, list[tuple[str, float | None, float | None]]] = {}
    for pid, text, a, b in zip(*(joined.column(c).to_pylist() for c in
                                 ("prompt_id", "response", "score_a", "score_b")), strict=True):
        groups.setdefault(pid, []).append((text, a, b))
    return groups


def _status_totals(manifest: StageManifest) -> dict:
    total: Counter[str] = Counter()
    for shard in manifest.shards.values():
        total.update({k: v for k, v in shard.items() if k != "finished_at"})
    return dict(total)
