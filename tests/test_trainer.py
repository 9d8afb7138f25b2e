"""The trainer on a tiny random Llama: weights reach the loss, every loss trains and saves a
loadable checkpoint, simpo is TRL's SimPO, killed runs resume, bad pairs files fail clearly."""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import torch
from training_helpers import PAIRS, build_tiny_model, write_pairs

from spa_core.spec import TrainingSpec
from spa_core.training.data import (
    PairsError,
    load_pairs,
    preference_dataset,
    sft_dataset,
)

# TRL 1.16's DPOTrainer reads `model.is_gradient_checkpointing`, which transformers 5.2x
# deprecates with a FutureWarning on every step; the warning is theirs to fix, not ours.
IGNORE_TRL_DPO_DEPRECATION = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide random Llama with a 320-token BPE tokenizer and a ChatML template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def pairs_path(tmp_path: Path) -> str:
    return write_pairs(tmp_path / "pairs.parquet")


def spec(**kw: Any) -> TrainingSpec:
    """Two quick steps that visibly move a tiny model."""
    base = dict(max_steps=2, per_device_batch_size=2, learning_rate=1e-2, warmup_ratio=0.0,
                max_length=64, max_completion_length=32)
    return TrainingSpec(**{**base, **kw})


def run(pairs: str, model: str, out: Path, training: TrainingSpec, **kw: Any):
    from spa_core.training import train

    kw.setdefault("gguf_file", None)
    return train(pairs, model_path=model, output_dir=str(out), spec=training, device="cpu", **kw)


def state_dict(path: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True).state_dict()


def losses(log_history: list[dict[str, Any]]) -> list[float]:
    return [r["loss"] for r in log_history if "loss" in r]


# --- data ---------------------------------------------------------------------------


def test_pairs_become_conversational_preferences_with_weights(tmp_path):
    path = write_pairs(tmp_path / "p.parquet", system_prompt=["Be honest.", None, None, None])
    dataset = preference_dataset(load_pairs(path))
    assert dataset.column_names == ["prompt", "chosen", "rejected", "weight"]
    assert dataset[0]["prompt"] == [{"role": "system", "content": "Be honest."},
                                    {"role": "user", "content": PAIRS["prompt"][0]}]
    assert dataset[1]["prompt"] == [{"role": "user", "content": PAIRS["prompt"][1]}]
    assert dataset[0]["chosen"] == [{"role": "assistant", "content": PAIRS["chosen"][0]}]
    assert dataset[0]["rejected"] == [{"role": "assistant", "content": PAIRS["rejected"][0]}]
    assert dataset["weight"] == PAIRS["weight"]
    assert "weight" not in preference_dataset(load_pairs(path), with_weight=False).column_names


def test_sft_data_is_each_distinct_chosen_response_once(tmp_path):
    path = write_pairs(tmp_path / "p.parquet",
                       chosen=[PAIRS["chosen"][0]] * 2 + PAIRS["chosen"][2:],
                       prompt=[PAIRS["prompt"][0]] * 2 + PAIRS["prompt"][2:])
    dataset = sft_dataset(load_pairs(path))
    assert len(dataset) == 3
    assert dataset[0]["completion"] == [{"role": "assistant", "content": PAIRS["chosen"][0]}]


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "chosen": ["y"]}), path)
    with pytest.raises(PairsError, match=r"missing column\(s\) rejected, weight"):
        load_pairs(str(path))


def test_no_pairs_is_an_error(tmp_path):
    path = write_pairs(tmp_path / "p.parquet", **{k: [] for k in PAIRS})
    with pytest.raises(PairsError, match="no preference pairs"):
        load_pairs(path)


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf])
def test_bad_weights_are_rejected(tmp_path, weight):
    path = write_pairs(tmp_path / "p.parquet", weight=[1.0, weight, 1.0, 1.0])
    with pytest.raises(PairsError, match="row 1"):
        load_pairs(path)


def test_train_fails_on_missing_columns_before_loading_the_model(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "chosen": ["y"], "rejected": ["z"]}), path)
    with pytest.raises(PairsError, match="weight"):
        run(str(path), str(tmp_path / "no-such-model"), tmp_path / "out", spec())


def test_gpus_per_node_decides_the_device_and_never_falls_back_to_the_cpu(tmp_path):
    import torch

    from spa_core.models import GPUsUnavailable, resolve_device, training_device

    assert training_device(None) == resolve_device(None)  # `spa run`: what is visible
    assert training_device(0) == "cpu"  # asked for explicitly, even where a GPU is visible
    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(GPUsUnavailable, match=rf"gpusPerNode is {usable + 1}, but {usable} GPU"):
        training_device(usable + 1)
    # train() checks before it reads the pairs or loads the model.
    from spa_core.training import train

    with pytest.raises(GPUsUnavailable):
        train(str(tmp_path / "no-pairs.parquet"), model_path=str(tmp_path / "no-such-model"),
              gguf_file=None, output_dir=str(tmp_path / "out"), spec=spec(gpus_per_node=usable + 1))


# --- trainer ------------------------------------------------------------------------


def test_weights_reach_the_batch_and_the_loss(tiny_model, pairs_path, tmp_path):
    """The batch the trainer computes the loss on carries each pair's own weight, and the
    per-pair losses are spa_simpo_loss with those weights."""
    from spa_core.models import load_causal_lm, load_tokenizer
    from spa_core.training.loss import spa_simpo_loss
    from spa_core.training.trainer import _build_trainer, _common_args

    training = spec(max_steps=1, per_device_batch_size=4)
    args = _common_args(training, str(tmp_path / "out"), "cpu", None, save_steps=50)
    trainer = _build_trainer(training, load_causal_lm(tiny_model, device="cpu"),
                             load_tokenizer(tiny_model), load_pairs(pairs_path), args, [])
    seen: dict[str, Any] = {}
    get_batch_loss_metrics, policy_logps = trainer.get_batch_loss_metrics, trainer.policy_logps

    def record_batch(model, batch, train_eval="train"):
        seen["batch"] = batch
        seen["loss"], _ = get_batch_loss_metrics(model, batch, train_eval)
        return seen["loss"], _

    def record_logps(model, batch):
        seen["chosen"], seen["rejected"], logits = policy_logps(model, batch)
        return seen["chosen"], seen["rejected"], logits

    trainer.get_batch_loss_metrics, trainer.policy_logps = record_batch, record_logps
    trainer.train()

    batch = seen["batch"]
    assert batch["weight"].dtype == torch.float32
    by_prompt = dict(zip(PAIRS["prompt"], PAIRS["weight"], strict=True))
    expected = [next(w for p, w in by_prompt.items() if p in text) for text in batch["prompt"]]
    assert sorted(batch["weight"].tolist()) == sorted(PAIRS["weight"])
    assert batch["weight"].tolist() == expected
    assert torch.equal(seen["loss"], spa_simpo_loss(
        seen["chosen"], seen["rejected"], batch["weight"], beta=training.beta,
        gamma=training.gamma))
    unweighted = spa_simpo_loss(seen["chosen"], seen["rejected"], beta=training.beta,
                                gamma=training.gamma)
    assert not torch.allclose(seen["loss"], unweighted)


@pytest.mark.parametrize("loss", [
    "spa", "simpo", pytest.param("dpo", marks=IGNORE_TRL_DPO_DEPRECATION), "sft",
])
def test_each_loss_trains_and_saves_a_loadable_checkpoint(tiny_model, pairs_path, tmp_path, loss):
    from transformers import AutoTokenizer

    logs: list[dict[str, Any]] = []
    result = run(pairs_path, tiny_model, tmp_path / "out", spec(loss=loss), on_log=logs.append,
                 report_to=["tensorboard"])
    # The standard integration logged too: TensorBoard event files under out/runs/.
    assert list((tmp_path / "out" / "runs").glob("*/events.out.tfevents.*"))

    final = tmp_path / "out" / "checkpoint-final"
    assert result.checkpoint_dir == str(final)
    assert result.steps == 2
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    assert [r["step"] for r in logs if "loss" in r] == [1, 2]
    if loss != "sft":
        assert "rewards/margins" in result.log_history[0]
    if loss == "spa":
        assert "weights/mean" in result.log_history[0]
    assert (final / "model.safetensors").is_file()
    # The training-only attention (varlen, registered in this process) stays out of the
    # saved config: vLLM and a fresh process load the model as it was.
    assert "spa_varlen" not in (final / "config.json").read_text()
    out = tmp_path / "out"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(("checkpoint", "."))]
    assert leftovers == ["checkpoint-final"]  # no checkpoint-N, no partial save
    before, after = state_dict(tiny_model), state_dict(str(final))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    tokenizer = AutoTokenizer.from_pretrained(final, local_files_only=True)
    assert tokenizer.chat_template


PLAIN = {"chunked_logprobs": False, "padding_free": False, "fused_optimizer": False}
FAST = {"chunked_logprobs": True, "padding_free": True, "attention": "varlen",
        "logprob_chunk_tokens": 16}


@pytest.mark.parametrize("speed", [PLAIN, FAST], ids=["plain", "fast"])
def test_simpo_and_unit_weighted_spa_equal_trl_cpo_simpo(tiny_model, tmp_path, monkeypatch,
                                                         speed):
    """Two steps of TRL's own CPOTrainer (SimPO) and of ours log the same losses, whether
    ours takes TRL's computation or its fast paths (packed, chunked, varlen attention)."""
    from transformers import TrainerCallback

    from spa_core.models import load_causal_lm, load_tokenizer
    from spa_core.training.trainer import _common_args
    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=TRLExperimentalWarning)
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    monkeypatch.setattr(CPOTrainer, "_send_telemetry", lambda self: None)  # offline tests
    # Room for every completion: TRL does not cut completions to max_completion_length.
    long = dict(max_length=128, max_completion_length=100, speed=speed)
    training = spec(loss="simpo", **long)
    weighted = write_pairs(tmp_path / "weighted.parquet")
    unit = write_pairs(tmp_path / "unit.parquet", weight=[1.0] * 4)

    recorded: list[dict[str, Any]] = []

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            recorded.append(dict(logs))

    config = CPOConfig(**_common_args(training, str(tmp_path / "trl"), "cpu", None, save_steps=50),
                       loss_type="simpo", cpo_alpha=0.0, beta=training.beta,
                       simpo_gamma=training.gamma, max_length=training.max_length)
    reference = CPOTrainer(
        model=load_causal_lm(tiny_model, device="cpu"), args=config,
        train_dataset=preference_dataset(load_pairs(weighted), with_weight=False),
        processing_class=load_tokenizer(tiny_model), callbacks=[Record()],
    )
    reference.train()
    expected = losses(recorded)
    assert len(expected) == 2

    simpo = run(weighted, tiny_model, tmp_path / "simpo", training)
    spa = run(unit, tiny_model, tmp_path / "spa", spec(loss="spa", **long))
    # Bit-level agreement for TRL's computation; fp32 rounding (another summation order)
    # for the fast paths, amplified by one large (lr 1e-2) update before step 2.
    tolerance = 1e-6 if speed is PLAIN else 1e-5
    assert losses(simpo.log_history) == pytest.approx(expected, abs=tolerance)
    assert losses(spa.log_history) == pytest.approx(expected, abs=tolerance)


def test_weights_change_the_trained_model(tiny_model, pairs_path, tmp_path):
    unit = write_pairs(tmp_path / "unit.parquet", weight=[1.0] * 4)
    weighted = run(pairs_path, tiny_model, tmp_path / "weighted", spec())
    plain = run(unit, tiny_model, tmp_path / "plain", spec())
    assert losses(weighted.log_history) != pytest.approx(losses(plain.log_history), abs=1e-6)


def test_activation_checkpointing_trains_exactly_as_without(tiny_model, pairs_path, tmp_path):
    """The memory option recomputes the layers (packed, varlen attention) in the backward
    pass and changes nothing else."""
    plain = run(pairs_path, tiny_model, tmp_path / "plain", spec())
    checkpointed = run(pairs_path, tiny_model, tmp_path / "ckpt",
                       spec(gradient_checkpointing=True))
    assert losses(checkpointed.log_history) == pytest.approx(losses(plain.log_history), abs=1e-6)
    before, after = state_dict(plain.checkpoint_dir), state_dict(checkpointed.checkpoint_dir)
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


class Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_model, pairs_path, tmp_path):
    out = tmp_path / "out"
    training = spec(max_steps=2, save_steps=1)

    def die_at_step_2(record: dict[str, Any]) -> None:
        if record["step"] == 2:  # logged before checkpoint-2 would be saved
            raise Killed

    with pytest.raises(Killed):
        run(pairs_path, tiny_model, out, training, on_log=die_at_step_2)
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (out / "checkpoint-2").exists() and not (out / "checkpoint-final").exists()

    logs: list[dict[str, Any]] = []
    resumed = run(pairs_path, tiny_model, out, training, on_log=logs.append)
    assert [r["step"] for r in logs if "loss" in r] == [2]  # step 1 was not redone
    assert (resumed.steps, resumed.resumed_from_step) == (2, 1)
    assert [r["step"] for r in resumed.log_history if "loss" in r] == [1, 2]

    straight = run(pairs_path, tiny_model, tmp_path / "straight", training)
    assert losses(resumed.log_history) == pytest.approx(losses(straight.log_history), abs=1e-5)
    a, b = state_dict(resumed.checkpoint_dir), state_dict(straight.checkpoint_dir)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    # Done is done: the final checkpoint is returned without training again.
    again: list[dict[str, Any]] = []
    started = time.monotonic()
    repeat = run(pairs_path, tiny_model, out, spec(max_steps=5), on_log=again.append)
    assert again == [] and time.monotonic() - started < 5
    assert (repeat.steps, repeat.final_loss, repeat.log_history, repeat.resumed_from_step) == (
        resumed.steps, resumed.final_loss, resumed.log_history, 1)


def test_an_unfinished_final_save_is_not_taken_as_final(tiny_model, pairs_path, tmp_path):
    out = tmp_path / "out"
    (out / ".checkpoint-final.partial").mkdir(parents=True)
    (out / ".checkpoint-final.partial" / "junk").write_text("half a save")
    result = run(pairs_path, tiny_model, out, spec(max_steps=1))
    assert result.steps == 1
    assert not (out / ".checkpoint-final.partial").exists()
    assert not (out / "checkpoint-final" / "junk").exists()


def test_pairs_whose_prompt_fills_max_length_are_dropped(tiny_model, tmp_path, caplog):
    long_prompt = " ".join(["lock weather letter"] * 40)
    path = write_pairs(tmp_path / "p.parquet", prompt=[long_prompt] + PAIRS["prompt"][1:])
    result = run(path, tiny_model, tmp_path / "out", spec(max_steps=1, max_length=48,
                                                          max_completion_length=16))
    assert math.isfinite(result.final_loss)
    assert "dropped 1 of 4 pairs" in caplog.text


@pytest.mark.slow
def test_the_embedded_gguf_model_trains_and_saves_as_safetensors(tmp_path):
    """GGUF weights are unpacked into a plain model the Trainer accepts and can save."""
    from spa_core.models import EMBEDDED_GGUF, embedded_model_dir

    result = run(write_pairs(tmp_path / "p.parquet"), str(embedded_model_dir()), tmp_path / "out",
                 spec(max_steps=1, learning_rate=1e-6), gguf_file=EMBEDDED_GGUF)
    assert math.isfinite(result.final_loss)
    weights = state_dict(result.checkpoint_dir)
    assert all(t.dtype == torch.float32 for t in weights.values())


@pytest.mark.bench
def test_bench_seconds_per_step_on_the_embedded_model(tmp_path, request):
    """Seconds per optimizer step, batch 2, max_length 512, on the embedded 135M model."""
    from spa_core.models import EMBEDDED_GGUF, embedded_model_dir

    words = "the assistant explains carefully why it cannot help and what it can do instead "
    path = write_pairs(tmp_path / "p.parquet", prompt=[words * 20] * 4,
                       chosen=[words * 40] * 4, rejected=[(words * 40).upper()] * 4)
    stamps: list[tuple[float, float]] = []

    def stamp(record: dict[str, Any]) -> None:
        if "loss" in record:
            stamps.append((time.monotonic(), time.process_time()))

    run(path, str(embedded_model_dir()), tmp_path / "out",
        spec(max_steps=3, max_length=512, max_completion_length=256, learning_rate=1e-6),
        gguf_file=EMBEDDED_GGUF, on_log=stamp)
    steps = len(stamps) - 1
    wall = (stamps[-1][0] - stamps[0][0]) / steps
    cpu = (stamps[-1][1] - stamps[0][1]) / steps
    print(f"\nembedded model, batch 2, max_length 512, {os.cpu_count()} CPUs: "
          f"{wall:.1f} s/step wall, {cpu:.1f} CPU-s/step")
