"""The training-throughput benchmark at its CPU smoke size: every variant trains and reports,
on the length mix and on fixed lengths."""

from __future__ import annotations

import json
import statistics

import pytest

from spa_core.training.throughput import draw_lengths, main, parse_variant

PAIRS, WARMUP, STEPS, PROMPT, COMPLETION, SEED = 2, 1, 2, 16, 24, 0


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


def test_the_length_mix_is_ragged_capped_and_seeded():
    mix = draw_lengths("mix", 4000, 1024, 1024, seed=3)
    assert mix == draw_lengths("mix", 4000, 1024, 1024, seed=3)
    assert mix != draw_lengths("mix", 4000, 1024, 1024, seed=4)
    # Log-normal medians of 120 prompt and 250 completion tokens at the default caps.
    assert statistics.median(mix.prompt) == pytest.approx(120, rel=0.1)
    assert statistics.median(mix.chosen) == pytest.approx(250, rel=0.1)
    assert statistics.median(mix.rejected) == pytest.approx(250, rel=0.1)
    assert sum(c != r for c, r in zip(mix.chosen, mix.rejected, strict=True)) > 3900
    for lengths in (mix.prompt, mix.chosen, mix.rejected):
        assert 2 <= min(lengths) and max(lengths) == 1024  # the long tail meets the cap
    # Small caps scale the medians down in proportion: 64 / 1024 of 250 tokens.
    small = draw_lengths("mix", 4000, 32, 64, seed=3)
    assert statistics.median(small.chosen) == pytest.approx(250 * 64 / 1024, rel=0.15)
    assert max(small.prompt) <= 32 and max(small.chosen) <= 64
    fixed = draw_lengths("fixed", 3, 16, 24, seed=3)
    assert fixed.prompt == [16] * 3 and fixed.chosen == fixed.rejected == [24] * 3
    with pytest.raises(ValueError, match="'mix' or 'fixed'"):
        draw_lengths("ragged", 3, 16, 24, seed=3)


def test_the_benchmark_runs_the_project_trainer_against_trl_on_a_cpu_in_both_modes(capsys):
    variants = ["trl", "spa", "spa:padding_free=false,chunked_logprobs=false"]
    assert main(["--shapes", "tiny", "--steps", str(STEPS), "--warmup", str(WARMUP),
                 "--pairs-per-step", str(PAIRS), "--prompt-tokens", str(PROMPT),
                 "--completion-tokens", str(COMPLETION), "--seed", str(SEED), "--cpu",
                 "--lengths", "mix", "fixed", "--variant", *variants]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["lengths"], r["variant"]) for r in records] == [
        (mode, v) for mode in ("mix", "fixed") for v in variants]
    for record in records:
        assert record["shape"] == "tiny" and record["device"] == "cpu"
        assert (record["prompt_tokens"], record["completion_tokens"]) == (PROMPT, COMPLETION)
        assert record["steps"] == STEPS and record["tokens_per_s"] > 0
        assert record["mfu"] is None and record["peak_memory_gb"] is None
        assert record["train_loss"] > 0
        assert len(record["step_tokens"]) == WARMUP + STEPS
        measured = sum(record["step_tokens"][WARMUP:])
        assert record["tokens_per_pair"] == pytest.approx(measured / (STEPS * PAIRS))
    mix, fixed = records[:3], records[3:]

    # The mix: what the trainers train on is the drawn lengths, BOS + prompt words and
    # completion words + EOS on both sides of every pair (the caps are the trainers'
    # limits, so nothing is truncated), the same batches for TRL and for ours.
    drawn = draw_lengths("mix", (WARMUP + STEPS) * PAIRS, PROMPT, COMPLETION, SEED)
    assert len(set(drawn.chosen + drawn.rejected)) > 1
    pair_tokens = [2 * p + c + r for p, c, r in zip(drawn.prompt, drawn.chosen, drawn.rejected,
                                                   strict=True)]
    for record in mix:
        assert record["step_tokens"] == mix[0]["step_tokens"]
        assert sum(record["step_tokens"]) == sum(pair_tokens)
        assert record["padding_in_trl_batches"] > 0
    # Fixed lengths: every pair 2 x (16 + 24) tokens, no padding.
    for record in fixed:
        assert record["step_tokens"] == [PAIRS * 2 * (PROMPT + COMPLETION)] * (WARMUP + STEPS)
        assert record["tokens_per_pair"] == 2 * (PROMPT + COMPLETION)
        assert record["padding_in_trl_batches"] == 0

    for trl, spa, plain in (mix, fixed):
        assert "tokens_per_s_vs_trl" not in trl
        assert spa["tokens_per_s_vs_trl"] == pytest.approx(
            spa["tokens_per_s"] / trl["tokens_per_s"])
        # Same model, data and weights: the fast (packed) and the plain (padded) path train
        # to the same loss, ragged pairs included.
        assert spa["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-5)
