"""FSDP2 on two CPU processes (gloo) under torchrun: checkpoint-N is sharded (each rank writes
its part), a killed run resumes from it and trains exactly as one process would, and
checkpoint-final is one safetensors model. The shipped accelerate config is the fsdp.json."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import build_tiny_model, write_pairs

from spa_core.layout import DISTRIBUTED_CONFIG_ENV
from spa_core.spec import TrainingSpec
from spa_core.training.distributed import config_file

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("fsdp_worker.py")
EXAMPLE = ROOT / "examples" / "accelerate-fsdp.yaml"
LAUNCH_TIMEOUT = 300.0
MAX_STEPS = 3


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def _env(fsdp_json: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT") and not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update({
        DISTRIBUTED_CONFIG_ENV: str(fsdp_json),
        "OMP_NUM_THREADS": "1",  # two ranks on a small CPU box
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def launch(env: dict[str, str], *args: str, **options: int) -> tuple[int, str]:
    """torchrun with two local ranks (the rendezvous on a free port); (exit code, output)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(WORKER), *args]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks
        output, _ = process.communicate()
        pytest.fail(f"torchrun ran over {LAUNCH_TIMEOUT:.0f} s:\n{output[-8000:]}")
    return process.returncode, output


def logged(output: str) -> dict[int, float]:
    """Losses the worker printed, by step."""
    return {int(s): float(x) for s, x in re.findall(r"^logged step (\d+) loss (\S+)$",
                                                      output, re.MULTILINE)}


def state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True).state_dict()


def shard_offsets(dcp_dir: Path) -> dict[str, list[tuple[int, ...]]]:
    """Each tensor of a torch.distributed.checkpoint directory -> its chunks' offsets."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(dcp_dir)).read_metadata()
    return {key: sorted(tuple(chunk.offsets) for chunk in item.chunks)
            for key, item in metadata.state_dict_metadata.items()
            if isinstance(item, TensorStorageMetadata)}


@pytest.mark.slow
def test_two_ranks_save_sharded_checkpoints_resume_and_publish_one_model(tiny_model, tmp_path):
    from spa_core.training import train
    from spa_core.training.trainer import last_checkpoint

    pairs = write_pairs(tmp_path / "pairs.parquet")
    name, content = config_file("fsdp")
    (tmp_path / name).write_text(json.dumps(content))
    env = _env(tmp_path / name)
    out = tmp_path / "out"
    args = (tiny_model, pairs, str(out))

    # 1. Killed when step 2 is logged: checkpoint-1 is complete, checkpoint-2 never was.
    code, output = launch(env, *args, str(tmp_path / "killed.json"), max_steps=MAX_STEPS,
                          die_at_step=2)
    assert code != 0 and "Killed: killed at step 2" in output, output[-8000:]
    killed = logged(output)
    assert sorted(killed) == [1, 2], output[-8000:]
    checkpoint = out / "checkpoint-1"
    assert last_checkpoint(out) == str(checkpoint)
    assert not (out / "checkpoint-final").exists()

    # Sharded: every rank wrote its own part of the weights and of the optimizer state, and
    # its RNG state; no gathered model.
    files = {p.name for p in checkpoint.iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model_fsdp.bin", "optimizer.bin"}
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        shards = sorted(p.name for p in (checkpoint / part).glob("*.distcp"))
        assert shards == ["__0_0.distcp", "__1_0.distcp"], part
    offsets = shard_offsets(checkpoint / "pytorch_model_fsdp_0")
    up_proj = next(v for k, v in offsets.items() if k.endswith("layers.0.mlp.up_proj.weight"))
    assert up_proj == [(0, 0), (32, 0)]  # (64, 32) split in halves along dim 0, one per rank

    # 2. Relaunched: resumes from the shards at step 2 and finishes.
    code, output = launch(env, *args, str(tmp_path / "resumed.json"), max_steps=MAX_STEPS)
    assert code == 0, output[-8000:]
    record: dict[str, Any] = json.loads((tmp_path / "resumed.json").read_text())
    assert record["world_size"] == 2
    assert (record["distributed_type"], record["fsdp_version"]) == ("DistributedType.FSDP", 2)
    resumed = logged(output)
    assert sorted(resumed) == [2, 3]  # step 1 was not redone
    assert [r["step"] for r in record["logs"] if "loss" in r] == [2, 3]
    result = record["result"]
    assert result["steps"] == MAX_STEPS
    assert [r["step"] for r in result["log_history"] if "loss" in r] == [1, 2, 3]
    # Step 2 ran on the weights read back from the shards: the same loss as before the kill.
    assert resumed[2] == pytest.approx(killed[2], abs=1e-6)

    # checkpoint-final: one full safetensors model; the sharded checkpoints are gone.
    final = out / "checkpoint-final"
    assert result["checkpoint_dir"] == str(final)
    assert sorted(p.name for p in final.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(final.glob("pytorch_model_fsdp*")) and not list(final.glob("*.distcp"))
    assert [p.name for p in out.iterdir() if p.name.startswith(("checkpoint", "."))] == [
        "checkpoint-final"]
    before, after = state_dict(tiny_model), state_dict(final)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # Two ranks of one pair per step train as one process of two pairs per step, so the
    # killed-and-resumed run (weights, optimizer, scheduler and data order restored) matches
    # one uninterrupted process step for step.
    straight = train(pairs, model_path=tiny_model, gguf_file=None, output_dir=str(tmp_path / "one"),
                     spec=TrainingSpec(max_steps=MAX_STEPS, per_device_batch_size=2,
                                       learning_rate=1e-2, warmup_ratio=0.0, max_length=64,
                                       max_completion_length=32),
                     device="cpu")
    expected = [r["loss"] for r in straight.log_history if "loss" in r]
    assert [killed[1], resumed[2], resumed[3]] == pytest.approx(expected, abs=1e-5)
    reference = state_dict(straight.checkpoint_dir)
    assert all(torch.allclose(after[k], reference[k], atol=1e-3) for k in after)


def test_accelerate_launch_reads_the_shipped_config_as_the_fsdp_json(tmp_path, monkeypatch):
    """`accelerate launch --config_file examples/accelerate-fsdp.yaml` hands the processes the
    FSDP plugin that $SPA_DISTRIBUTED_CONFIG=fsdp.json gives the Trainer under torchrun."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers import TrainingArguments

    for key in [k for k in os.environ if k.startswith(("FSDP_", "ACCELERATE_"))]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("FSDP_CPU_RAM_EFFICIENT_LOADING", raising=False)  # set by both below

    parser = launch_command_parser()
    launch_args = parser.parse_args(["--config_file", str(EXAMPLE), "--main_process_port", "0",
                                     "--no_python", "spa", "train", "run.yaml"])
    launch_args = _validate_launch_command(launch_args)[0]
    launched = prepare_multi_gpu_env(launch_args)
    assert launched["ACCELERATE_USE_FSDP"] == "true"

    name, content = config_file("fsdp")
    (tmp_path / name).write_text(json.dumps(content))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), fsdp=True,
                             fsdp_config=str(tmp_path / name), use_cpu=True)
    from_json = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    for key, value in launched.items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    from_yaml = FullyShardedDataParallelPlugin()
    for field in ("fsdp_version", "state_dict_type", "reshard_after_forward", "auto_wrap_policy",
                  "transformer_cls_names_to_wrap", "cpu_ram_efficient_loading",
                  "activation_checkpointing", "cpu_offload", "mixed_precision_policy"):
        assert getattr(from_yaml, field) == getattr(from_json, field), field
    assert "SHARDED_STATE_DICT" in str(from_yaml.state_dict_type)
