"""Stage `evaluate`: held-out prompts answered before and after training, self-judged.

Both models answer greedily; one judge (this iteration's starting policy, as in the
method) scores both, so the comparison is not confounded by a change of judge:

* score-based: the paper's template at temperature 0, 1..10 on the primary objective and
  on helpfulness;
  means and HH_lambda (lambda 5, 10, 20) with bootstrap intervals;
* pairwise: before vs after on each dimension, asked in both orders to cancel position
  bias; win / tie / loss rates of the trained model with bootstrap intervals.

Judge answers that cannot be parsed are counted, never silently dropped.

Each model's answers are kept (`evaluate/answers-<before|after>.parquet`, recorded in the
manifest) before any judging, so a stage that stops resumes without asking again. An
OpenAI-compatible server serves one model: with the `openai` backend the trained model's
answers come first, from a server of the trained checkpoint (`spa evaluate
--trained-answers-only`, which stops there; the operator serves it with vLLM), then `spa
evaluate` against the starting policy's server answers "before" and judges.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa

from spa_core.backends import Backend, ChatRequest
from spa_core.evaluation.metrics import (
    HH_LAMBDAS,
    bootstrap_interval,
    combine_orders,
    hh_lambda,
    win_rates,
)
from spa_core.evaluation.pairwise import pairwise_json_schema, pairwise_messages, parse_verdict
from spa_core.layout import CHECKPOINT, EVAL_BENCHMARKS, EVAL_RESPONSES, HELDOUT
from spa_core.prompts import sample_messages
from spa_core.stages.context import StageContext
from spa_core.stages.generate import judge, upstream_hash
from spa_core.stages.manifest import StageManifest, config_hash
from spa_core.stages.prompts import BadPromptRows

__all__ = ["JUDGE_API_KEY_ENV", "TrainedAnswersMissing", "run_evaluate",
           "run_trained_answers"]

STAGE = "evaluate"
#: The external judge's API key (the operator sets it from evaluation.judge.apiKeySecretRef).
JUDGE_API_KEY_ENV = "SPA_JUDGE_API_KEY"
LABELS = ("before", "after")


class TrainedAnswersMissing(RuntimeError):
    """The `openai` backend serves one model, and the trained model has not answered yet."""


def _answers_path(label: str) -> str:
    return f"{STAGE}/answers-{label}.parquet"


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _open(ctx: StageContext) -> StageManifest:
    chash = config_hash(STAGE, ctx.spec.evaluation, ctx.spec.scoring, ctx.spec.objectives,
                        ctx.policy_id(), upstream_hash(ctx, "train"))
    return StageManifest.open(ctx.dir, STAGE, chash, force=ctx.force)


def _one_server(ctx: StageContext) -> bool:
    """Whether one server answers for every model (the `openai` backend)."""
    return ctx.spec.generator.backend == "openai"


def _answers(ctx: StageContext, manifest: StageManifest, label: str,
             prompts: list[str]) -> list[str]:
    """`label`'s greedy answers to the held-out prompts: recorded ones, else asked for (the
    trained model: from this stage's server when one server answers, else in-process)."""
    rel = _answers_path(label)
    if manifest.is_done(f"answers-{label}"):
        answers = ctx.dir.read_table(rel).column("response").to_pylist()
        if len(answers) != len(prompts):
            raise FileNotFoundError(f"{ctx.dir.url(rel)} holds {len(answers)} answers for "
                                    f"{len(prompts)} held-out prompts: rerun with --force")
        return answers
    model_path = ctx.trained_path() if label == "after" and not _one_server(ctx) else None
    requests = [ChatRequest(messages=sample_messages(p, ctx.spec.sampling.system_prompt),
                            temperature=0.0, max_tokens=ctx.spec.evaluation.max_tokens, seed=i)
                for i, p in enumerate(prompts)]
    with ctx.progress(f"evaluate ({label})", len(requests)) as advance:
        answers = [r.text for r in ctx.backend(model_path).generate(requests, on_done=advance)]
    if model_path is not None:  # free the trained model before judging
        ctx.release(model_path)
    ctx.dir.write_table(rel, pa.table({"response": pa.array(answers, pa.string())}))
    manifest.mark_shard(ctx.dir, f"answers-{label}", rows=len(answers))
    return answers


def _held_out(ctx: StageContext) -> pa.Table:
    held = ctx.dir.read_table(HELDOUT)
    if not held.num_rows:
        raise BadPromptRows("no held-out prompts to evaluate: raise evaluation.count or add prompts")
    return held


def run_trained_answers(ctx: StageContext) -> dict:
    """Only the trained model's answers, recorded for `run_evaluate`: against a server of the
    trained checkpoint when the backend is `openai` (in-process otherwise)."""
    manifest = _open(ctx)
    if manifest.complete:
        return manifest.stats
    prompts = _held_out(ctx).column("prompt").to_pylist()
    answers = _answers(ctx, manifest, "after", prompts)
    return {"prompts": len(prompts), "answered": sum(bool(a) for a in answers)}


def run_evaluate(ctx: StageContext) -> dict:
    ev = ctx.spec.evaluation
    manifest = _open(ctx)
    if manifest.complete:
        return manifest.stats
    stats: dict[str, object] = {}
    held = _held_out(ctx)
    prompts = held.column("prompt").to_pylist()
    stats["prompts"] = len(prompts)
    if _one_server(ctx) and not manifest.is_done("answers-after"):
        raise TrainedAnswersMissing(
            f"generator.backend is openai, whose server ({ctx.spec.generator.url}) serves one "
            f"model: first serve the trained checkpoint ({ctx.dir.url(CHECKPOINT)}) "
            "and run `spa evaluate --trained-answers-only` against it, then serve the starting "
            "policy again and run `spa evaluate`")

    judge_backend, stats["judge"] = _judge(ctx)
    columns: dict[str, pa.Array] = {"prompt_id": held.column("prompt_id")}
    for label in LABELS:
        answers = _answers(ctx, manifest, label, prompts)
        # Greedy judging (the paper's evaluation), whatever scoring.temperature says.
        a, b, status, _ = judge(ctx, prompts, answers, backend=judge_backend, temperature=0.0)
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
    stats["intervals"] = _score_intervals(columns)
    verdicts, stats["pairwise"] = _pairwise(ctx, prompts, columns, judge_backend)
    columns |= verdicts
    stats = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in stats.items()}
    ctx.dir.write_table(EVAL_RESPONSES, pa.table(columns))
    if ev.benchmarks is not None:
        from spa_core.evaluation.benchmarks import run_benchmarks

        with ctx.progress("benchmarks (lm-evaluation-harness)", 2) as advance:
            ctx.close()  # the judge's and models' memory back before two more model loads
            results, stats["benchmarks"] = run_benchmarks(ev.benchmarks, ctx.spec.model,
                                                           ctx.policy_path(), ctx.trained_path())
            advance(2)
        ctx.dir.write_json(EVAL_BENCHMARKS, results)
    manifest.finish(ctx.dir, **stats)
    return stats


def _interval(values: list[float]) -> dict[str, float | None]:
    iv = bootstrap_interval(values)
    clean = [None if math.isnan(x) else x for x in (iv.value, iv.low, iv.high)]
    return dict(zip(("mean", "low", "high"), clean, strict=True)) | {"n": len(values)}


def _score_intervals(columns: dict[str, pa.Array]) -> dict[str, dict[str, float | None]]:
    """Mean scores and HH_lambda, before and after, with 95 % bootstrap intervals."""
    out: dict[str, dict[str, float | None]] = {}
    for label in ("before", "after"):
        a = columns[f"{label}_score_a"].to_pylist()
        b = columns[f"{label}_score_b"].to_pylist()
        both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
        out[f"{label}_primary"] = _interval([x for x in a if x is not None])
        out[f"{label}_helpfulness"] = _interval([y for y in b if y is not None])
        for lam in HH_LAMBDAS:
            out[f"{label}_hh{lam}"] = _interval([hh_lambda(x, y, lam) for x, y in both])
    return out


def _judge(ctx: StageContext) -> tuple[Backend, str]:
    """The evaluation's judge and how the report names it."""
    spec = ctx.spec.evaluation.judge
    if spec is None:
        return ctx.backend(), "self-judged (starting policy)"
    from spa_core.backends.openai_backend import OpenAIBackend

    backend = OpenAIBackend(spec.url, spec.model, api_key=os.environ.get(JUDGE_API_KEY_ENV),
                            concurrency=spec.concurrency, timeout_seconds=spec.timeout_seconds,
                            max_retries=spec.max_retries)
    return backend, f"{spec.model} at {spec.url}"


def _pairwise(ctx: StageContext, prompts: list[str], columns: dict[str, pa.Array],
              backend: Backend) -> tuple[dict[str, pa.Array],
                                         dict[str, dict[str, float | int | None]]]:
    """Before vs after on each dimension, both orders; verdict columns and win rates."""
    obj, sc = ctx.spec.objectives, ctx.spec.scoring
    before = columns["before_response"].to_pylist()
    after = columns["after_response"].to_pylist()
    schema = pairwise_json_schema() if sc.structured_output == "on" or (
        sc.structured_output == "auto" and backend.supports_json_schema) else None
    both = [i for i in range(len(prompts)) if before[i] and after[i]]
    verdict_columns: dict[str, pa.Array] = {}
    rates: dict[str, dict[str, float | int | None]] = {}
    for key, dimension in (("primary", obj.primary), ("helpfulness", obj.secondary)):
        requests = [
            ChatRequest(messages=pairwise_messages(prompts[i], *pair, dimension,
                                                   obj.constitution),
                        temperature=0.0, max_tokens=sc.max_tokens, json_schema=schema, seed=i)
            for i in both
            for pair in ((after[i], before[i]), (before[i], after[i]))  # after as A, then as B
        ]
        with ctx.progress(f"evaluate (pairwise {key})", len(requests)) as advance:
            texts = [r.text for r in backend.generate(requests, on_done=advance)]
        first: list[str | None] = [None] * len(prompts)
        swapped: list[str | None] = [None] * len(prompts)
        for k, i in enumerate(both):
            first[i], swapped[i] = parse_verdict(texts[2 * k]), parse_verdict(texts[2 * k + 1])
        outcomes = [combine_orders(first[i], swapped[i]) for i in both]
        wr = win_rates(outcomes)
        rates[key] = {"win": _nan_none(wr.win.value), "win_low": _nan_none(wr.win.low),
                      "win_high": _nan_none(wr.win.high), "tie": _nan_none(wr.tie.value),
                      "loss": _nan_none(wr.loss.value), "compared": wr.n,
                      "unparsed": wr.unparsed, "missing_response": len(prompts) - len(both)}
        verdict_columns[f"pairwise_{key}_after_first"] = pa.array(first, pa.string())
        verdict_columns[f"pairwise_{key}_after_second"] = pa.array(swapped, pa.string())
    return verdict_columns, rates


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else x
