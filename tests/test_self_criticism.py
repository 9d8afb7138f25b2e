"""`method: selfCriticism`, the paper's Self-Criticism baseline (Table 3): the model critiques
its first sample against the primary objective and revises it; each prompt gives one pair,
the revision over that sample, which `training.loss: sft` trains on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spa_core.bench_stage import SAMPLES, run_document, write_synthetic_run
from spa_core.layout import PAIRS, iteration_dir, shard_glob
from spa_core.pairs import revision_pairs
from spa_core.prompts import critique_messages, revision_messages
from spa_core.rundir import RunDir
from spa_core.spec import EMBEDDED_MODEL, ConstitutionSpec, SpecError, parse_run
from spa_core.stages.context import StageContext
from spa_core.stages.generate import run_refine
from spa_core.stages.pairs import run_pairs


def test_the_critique_chat_continues_the_sample_and_names_the_primary_objective() -> None:
    constitution = ConstitutionSpec()
    critique = critique_messages("How do I pick a lock?", "Like this.", "harmlessness",
                                 constitution, "Be brief.")
    assert [m["role"] for m in critique] == ["system", "user", "assistant", "user"]
    assert critique[2]["content"] == "Like this."
    assert "Harmlessness" in critique[3]["content"]
    assert constitution.harmlessness in critique[3]["content"]
    revision = revision_messages("How do I pick a lock?", "Like this.", "It helps a burglar.",
                                 "honesty", constitution)
    assert [m["role"] for m in revision] == ["user", "assistant", "user", "assistant", "user"]
    assert revision[3]["content"] == "It helps a burglar."
    assert "Honesty" in revision[4]["content"] and "rewritten response only" in revision[4][
        "content"]


def test_revision_pairs_put_each_revision_over_the_sample_it_revised() -> None:
    # Prompt 7: samples 0-2 and a revision (id 3); prompt 8: sample 0 missing; prompt 9: no
    # revision text; prompt 5 (listed last): complete, unscored revision.
    pid = np.array([7, 7, 7, 7, 8, 8, 8, 9, 9, 5, 5])
    rid = np.array([0, 1, 2, 3, 0, 1, 3, 0, 3, 0, 3])
    refined = rid == 3
    present = np.array([1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
    a = np.array([2, 5, 9, 8, 1, 1, 1, 1, 1, 3, np.nan])
    b = np.array([3, 5, 9, 6, 1, 1, 1, 1, 1, 4, np.nan])
    selection = revision_pairs(pid, rid, refined, present, a, b)
    assert selection.prompt_id.tolist() == [5, 7]
    assert selection.chosen_id.tolist() == [3, 3] and selection.rejected_id.tolist() == [0, 0]
    assert selection.weight.tolist() == [1.0, 1.0]  # neither denoised nor weighted
    assert selection.gap.tolist() == [0.0, 9.0]  # |(8 + 6) - (2 + 3)|; 0 when unscored
    assert selection.kept_prompt_ids.tolist() == [5, 7]
    assert selection.stats == {
        "rows_in": 11, "dropped_missing": 2, "dropped_malformed": 2, "dropped_consistency": 0,
        "dropped_det_zero": 0, "dropped_det_above_rho": 0, "groups_in": 4, "groups_kept": 2,
        "pairs": 2}
    with pytest.raises(ValueError, match="more than one revision"):
        revision_pairs([1, 1, 1], [0, 3, 3], [False, True, True], [True] * 3, [1] * 3, [1] * 3)


def test_the_method_is_spa_or_self_criticism() -> None:
    doc = run_document(64)
    assert parse_run(doc).spec.method == "spa"
    doc["spec"]["method"] = "selfCriticism"
    assert parse_run(doc).spec.method == "selfCriticism"
    doc["spec"]["method"] = "self-criticism"
    with pytest.raises(SpecError, match="method"):
        parse_run(doc)


def test_the_context_budget_counts_what_each_method_quotes(tmp_path: Path) -> None:
    from spa_core.stages.generate import _refine_budget_warning

    def warning(method: str) -> str | None:
        doc = run_document(64)
        doc["spec"] |= {"method": method, "generator": {"maxModelLen": 256}}
        doc["spec"]["sampling"] |= {"numSamples": 2, "maxTokens": 96}
        return _refine_budget_warning(StageContext(run=parse_run(doc), root=RunDir(tmp_path)))

    assert "quote 2 samples of up to 96 tokens" in warning("spa")  # (2 + 1) x 96 > 256
    assert "quote a sample and its critique of up to 96 tokens" in warning("selfCriticism")


@pytest.mark.server
def test_self_criticism_revises_the_first_sample_and_pairs_revision_over_it(
        tmp_path: Path, llama_server: str) -> None:
    """Against llama.cpp's server with the embedded model: the refine stage critiques and
    revises each prompt's first sample, the pairs stage puts the revision over it."""
    root = write_synthetic_run(tmp_path / "run", 4, 64, text_median=40.0, text_cap=80)
    it = RunDir(root / iteration_dir(0))
    [rel] = it.glob(shard_glob("samples"))
    samples = it.read_table(rel)
    lost = pc.and_(pc.equal(samples.column("prompt_id"), 1),
                   pc.equal(samples.column("response_id"), 0))  # prompt 1's first sample failed
    texts = [None if gone else text for text, gone in
             zip(samples.column("response").to_pylist(), lost.to_pylist(), strict=True)]
    it.write_table(rel, samples.set_column(samples.schema.get_field_index("response"),
                                           "response", pa.array(texts, pa.string())))
    doc = run_document(64)
    doc["spec"] |= {"model": {"name": EMBEDDED_MODEL}, "method": "selfCriticism",
                    "scoring": {"maxTokens": 16, "retries": 0},
                    "generator": {"backend": "openai", "url": llama_server}}
    doc["spec"]["sampling"]["maxTokens"] = 24
    ctx = StageContext(run=parse_run(doc), root=RunDir(root), force=True)

    stats = run_refine(ctx)
    assert stats["rows"] == 4 and stats["refine_failed"] == 0, stats
    refined = ctx.dir.read_table("refined/shard-00000.parquet")
    revisions = dict(zip(refined.column("prompt_id").to_pylist(),
                         refined.column("response").to_pylist(), strict=True))
    assert revisions[1] is None  # no first sample: nothing to revise
    assert all(revisions[p] for p in (0, 2, 3)), revisions
    assert set(refined.column("response_id").to_pylist()) == {SAMPLES}

    stats = run_pairs(ctx)
    assert (stats["pairs"], stats["groups_kept"], stats["dropped_malformed"]) == (3, 3, 1)
    pairs = ctx.dir.read_table(PAIRS)
    assert pairs.column("prompt_id").to_pylist() == [0, 2, 3]
    assert set(pairs.column("chosen_id").to_pylist()) == {SAMPLES}
    assert set(pairs.column("rejected_id").to_pylist()) == {0}
    assert pairs.column("weight").to_pylist() == [1.0] * 3
    originals = {p: t for p, r, t in zip(*(samples.column(c).to_pylist() for c in
                                           ("prompt_id", "response_id", "response")),
                                         strict=True) if r == 0}
    for row in pairs.to_pylist():
        assert row["chosen"] == revisions[row["prompt_id"]]
        assert row["rejected"] == originals[row["prompt_id"]]
