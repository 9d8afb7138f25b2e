"""The training-throughput benchmark at its CPU smoke size: every variant trains and reports."""

from __future__ import annotations

import json

import pytest

from spa_core.training.throughput import main, parse_variant


def test_variants_parse_and_bad_ones_are_named():
    assert parse_variant("trl").overrides == {}
    variant = parse_variant("spa:padding_free=false,logprob_chunk_tokens=64,compile=on")
    assert variant.trainer == "spa"
    assert variant.overrides == {"padding_free": False, "logprob_chunk_tokens": "64",
                                 "compile": True}
    with pytest.raises(ValueError, match="'spa' or 'trl'"):
        parse_variant("dpo")
    with pytest.raises(ValueError, match="expected key=value with a key among"):
        parse_variant("spa:warp_speed=true")
    with pytest.raises(ValueError, match="takes no settings"):
        parse_variant("trl:compile=true")


def test_the_benchmark_runs_the_project_trainer_against_trl_on_a_cpu(capsys):
    assert main(["--shapes", "tiny", "--steps", "2", "--warmup", "1", "--pairs-per-step", "2",
                 "--prompt-tokens", "16", "--completion-tokens", "24", "--cpu",
                 "--variant", "trl", "spa", "spa:padding_free=false,chunked_logprobs=false"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["variant"] for r in records] == [
        "trl", "spa", "spa:padding_free=false,chunked_logprobs=false"]
    for record in records:
        assert record["shape"] == "tiny" and record["device"] == "cpu"
        assert record["steps"] == 2 and record["tokens_per_s"] > 0
        # BOS + prompt words, completion words + EOS, both sides of the pair.
        assert record["tokens_per_pair"] == 2 * (16 + 24)
        assert record["mfu"] is None and record["peak_memory_gb"] is None
        assert record["train_loss"] > 0
    trl, spa, plain = records
    assert "tokens_per_s_vs_trl" not in trl
    assert spa["tokens_per_s_vs_trl"] == pytest.approx(spa["tokens_per_s"] / trl["tokens_per_s"])
    # Same model, data and weights: the fast and the plain path train to the same loss.
    assert spa["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-5)
