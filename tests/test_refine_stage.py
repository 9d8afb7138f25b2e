"""Stage `refine` against llama.cpp's server (context 2048): a group whose samples do not fit
the context beside the instruction fails its refinement under its own name, not silently."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spa_core.bench_stage import run_document, write_synthetic_run
from spa_core.layout import iteration_dir, shard_glob
from spa_core.rundir import RunDir
from spa_core.spec import EMBEDDED_MODEL, parse_run
from spa_core.stages.context import StageContext
from spa_core.stages.generate import over_context, run_refine
from spa_core.summary import collect

pytestmark = pytest.mark.server

LONG_PROMPT = 2  # its samples: 5 x ~2,400 characters, far over the server's 2,048 tokens


def refine_context(root: Path, url: str, max_tokens: int = 8, **generator: object) -> StageContext:
    doc = run_document(64)
    doc["spec"]["model"] = {"name": EMBEDDED_MODEL}
    doc["spec"]["sampling"]["maxTokens"] = max_tokens
    doc["spec"]["scoring"] = {"maxTokens": 16, "retries": 0}
    doc["spec"]["generator"] = {"backend": "openai", "url": url, **generator}
    return StageContext(run=parse_run(doc), root=RunDir(root), force=True)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Four prompts with short samples, but prompt 2's samples are long."""
    root = write_synthetic_run(tmp_path / "run", 4, 64, text_median=20.0, text_cap=40)
    it = RunDir(root / iteration_dir(0))
    [rel] = it.glob(shard_glob("samples"))
    samples = it.read_table(rel)
    long = pc.equal(samples.column("prompt_id"), LONG_PROMPT)
    texts = [("the same sentence, over and over, " * 70) if is_long else text
             for text, is_long in zip(samples.column("response").to_pylist(),
                                      long.to_pylist(), strict=True)]
    it.write_table(rel, samples.set_column(samples.schema.get_field_index("response"),
                                           "response", pa.array(texts, pa.string())))
    return root


def test_a_refinement_over_the_context_is_counted_by_name(
        run_dir: Path, llama_server: str, caplog: pytest.LogCaptureFixture) -> None:
    ctx = refine_context(run_dir, llama_server)
    with caplog.at_level(logging.WARNING, logger="spa_core.stages.generate"):
        stats = run_refine(ctx)
    assert stats["rows"] == 4
    assert stats["refine_over_context"] == 1 and stats["refine_failed"] == 0, stats
    refined = ctx.dir.read_table("refined/shard-00000.parquet")
    by_prompt = dict(zip(refined.column("prompt_id").to_pylist(),
                         refined.column("response").to_pylist(), strict=True))
    assert by_prompt[LONG_PROMPT] is None
    assert all(by_prompt[p] is not None for p in by_prompt if p != LONG_PROMPT)
    # 1 of 4 is over the 2 % warning line; the summary names the count.
    assert any("1 of 4 refinements failed" in r.getMessage() for r in caplog.records)
    assert collect(ctx.root, 0)["refine_over_context"] == 1


def test_the_context_budget_is_checked_before_sending(
        run_dir: Path, llama_server: str, caplog: pytest.LogCaptureFixture) -> None:
    """(5 samples + 1 answer) x maxTokens against generator.maxModelLen, before any request."""

    def warnings(max_tokens: int) -> list[str]:
        caplog.clear()
        ctx = refine_context(run_dir, llama_server, max_tokens, maxModelLen=256)
        with caplog.at_level(logging.WARNING, logger="spa_core.stages.generate"):
            run_refine(ctx)
        return [r.getMessage() for r in caplog.records if "generator.maxModelLen" in r.getMessage()]

    assert warnings(8) == []  # 48 tokens
    [warning] = warnings(64)  # 384 tokens
    assert "5 samples of up to 64 tokens" in warning and "up to 384 tokens" in warning


@pytest.mark.parametrize(("error", "over"), [
    ("HTTP 400: This model's maximum context length is 8192 tokens. However, you requested "
     + "9000 tokens", True),
    ("Requested tokens (2400) exceed context window of 2048", True),
    ("prompt of 9000 tokens exceeds the model's context of 8192", True),
    ("HTTP 500: internal error", False),
])
def test_context_errors_are_told_from_other_failures(error: str, over: bool) -> None:
    assert over_context(error) is over
