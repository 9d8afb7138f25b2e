"""The evaluate stage against a real OpenAI-compatible server (llama.cpp, the embedded model).

Both "before" and "after" answers come from the one served model here (the server cannot
swap weights), so the test checks what the stage records, not that training helped: every
prompt judged on scores and pairwise in both orders, unparsed answers counted, intervals.
As with any OpenAI-compatible server, the trained model's answers are asked first (`spa
evaluate --trained-answers-only`, here from the same server), then the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from rich.console import Console

from spa_core.rundir import RunDir
from spa_core.spec import SPAAlignmentRun, parse_run
from spa_core.stages.context import StageContext
from spa_core.stages.evaluate import TrainedAnswersMissing, run_evaluate, run_trained_answers
from spa_core.stages.manifest import StageManifest
from spa_core.stages.prompts import run_prompts

pytestmark = pytest.mark.server


def served(server: str, builtin: str, prompts: int, judge_tokens: int,
           **evaluation: object) -> SPAAlignmentRun:
    """A run whose models the llama.cpp server answers for, greedy judging."""
    return parse_run({
        "apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
        "metadata": {"name": "eval"},
        "spec": {"prompts": {"builtin": builtin, "count": prompts},
                 "generator": {"backend": "openai", "url": server,
                               "servedModelName": "smollm2"},
                 "scoring": {"maxTokens": judge_tokens, "temperature": 0.0},
                 "evaluation": evaluation}})


def trained(run: SPAAlignmentRun, tmp_path: Path) -> StageContext:
    """Prompts drawn and a finished train stage (training is not under test)."""
    ctx = StageContext(run=run, root=RunDir(tmp_path / "run"), iteration=0, force=False,
                       console=Console(quiet=True))
    run_prompts(ctx)
    manifest = StageManifest.open(ctx.dir, "train", "test-train")
    Path(ctx.dir.path("train/checkpoint-final")).mkdir(parents=True)
    manifest.finish(ctx.dir, steps=0)
    return ctx


def evaluated(run: SPAAlignmentRun, tmp_path: Path) -> tuple[StageContext, dict]:
    """The trained model's answers, then the evaluation."""
    ctx = trained(run, tmp_path)
    try:
        run_trained_answers(ctx)
        return ctx, run_evaluate(ctx)
    finally:
        ctx.close()


def test_evaluate_scores_and_compares_before_and_after(llama_server: str,
                                                       tmp_path: Path) -> None:
    run = served(llama_server, "harmlessness", 4, 48, count=3, maxTokens=48)
    ctx, stats = evaluated(run, tmp_path)

    assert stats["prompts"] == 3 and stats["judge"].startswith("self-judged")
    iv = stats["intervals"]
    for key in ("before_primary", "after_helpfulness", "before_hh5", "after_hh20"):
        assert set(iv[key]) == {"mean", "low", "high", "n"}
        if iv[key]["n"]:
            assert iv[key]["low"] <= iv[key]["mean"] <= iv[key]["high"]
    for dim in ("primary", "helpfulness"):
        p = stats["pairwise"][dim]
        assert p["compared"] + p["unparsed"] + p["missing_response"] == 3
        if p["compared"]:
            assert p["win"] + p["tie"] + p["loss"] == pytest.approx(1.0)
    table = ctx.dir.read_table("evaluate/responses.parquet")
    assert {"before_response", "after_score_a", "pairwise_primary_after_first",
            "pairwise_helpfulness_after_second"} <= set(table.column_names)
    verdicts = table.column("pairwise_primary_after_first").to_pylist()
    assert all(v in (None, "A", "B", "tie") for v in verdicts)
    # The stage is done: a second call returns the recorded stats without judging again.
    assert run_evaluate(StageContext(run=run, root=RunDir(tmp_path / "run"), iteration=0,
                                     force=False, console=Console(quiet=True))) == stats


def test_one_server_answers_for_the_trained_model_first_then_for_the_policy(
        llama_server: str, tmp_path: Path) -> None:
    run = served(llama_server, "honesty", 3, 24, count=2, maxTokens=16)
    ctx = trained(run, tmp_path)
    with pytest.raises(TrainedAnswersMissing, match="--trained-answers-only"):
        run_evaluate(ctx)
    assert not ctx.dir.exists("evaluate/responses.parquet")

    stats = run_trained_answers(ctx)
    assert stats["prompts"] == 2
    manifest = StageManifest.load(ctx.dir, "evaluate")
    assert manifest.is_done("answers-after") and not manifest.complete
    # What a server of the trained checkpoint answered (marked, to follow them through).
    ctx.dir.write_table("evaluate/answers-after.parquet", pa.table(
        {"response": [f"trained answer {i}" for i in range(2)]}))
    run_trained_answers(ctx)  # recorded: not asked again
    assert ctx.dir.read_table("evaluate/answers-after.parquet").column(
        "response").to_pylist() == ["trained answer 0", "trained answer 1"]

    stats = run_evaluate(ctx)
    ctx.close()
    table = ctx.dir.read_table("evaluate/responses.parquet")
    assert table.column("after_response").to_pylist() == ["trained answer 0",
                                                           "trained answer 1"]
    assert table.column("before_response").to_pylist() == ctx.dir.read_table(
        "evaluate/answers-before.parquet").column("response").to_pylist()
    assert stats["prompts"] == 2 and StageManifest.load(ctx.dir, "evaluate").complete


def test_an_external_judge_is_named_in_the_stats(llama_server: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluation.judge: any OpenAI-compatible endpoint (here the same llama.cpp server, under
    another model name), its key from $SPA_JUDGE_API_KEY."""
    monkeypatch.setenv("SPA_JUDGE_API_KEY", "sk-test")
    run = served(llama_server, "honesty", 3, 40, count=2, maxTokens=32,
                 judge={"url": llama_server, "model": "strong-judge"})
    _, stats = evaluated(run, tmp_path)
    assert stats["judge"] == f"strong-judge at {llama_server}"
    assert stats["pairwise"]["primary"]["compared"] + \
        stats["pairwise"]["primary"]["unparsed"] + \
        stats["pairwise"]["primary"]["missing_response"] == 2


def test_tune_rho_compares_the_self_judge_with_a_stronger_one(llama_server: str,
                                                              tmp_path: Path) -> None:
    """`spa tune-rho` on the recorded run, the llama.cpp server standing in for a stronger
    judge (the same small model: the point is the plumbing, not the verdict)."""
    import json
    import shutil
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    shutil.copytree(Path(__file__).resolve().parent / "data" / "recorded-run", run_dir)
    out = subprocess.run(
        [sys.executable, "-m", "spa_core.cli", "tune-rho", str(run_dir), "--judge-url",
         llama_server, "--judge-model", "strong", "--max-samples", "12"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "suggested rho" in out.stdout
    result = json.loads((run_dir / "iter-00" / "tune-rho.json").read_text())
    assert result["samples"] == 12 and result["judge"] == f"strong at {llama_server}"
    dets = [p["det_max"] for p in result["curve"]]
    assert dets == sorted(dets)  # groups enter by increasing det(Sigma)
    assert all(-1e-9 <= p["rv"] <= 1 + 1e-9 or p["rv"] != p["rv"] for p in result["curve"])
