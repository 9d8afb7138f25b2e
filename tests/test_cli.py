"""The `spa` command as a user runs it: errors, resumption after a kill, the whole loop.

These run the real CLI in a subprocess with the real embedded model (SmolLM2-135M-Instruct
on the CPU), at tiny sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SPA = [sys.executable, "-m", "spa_core.cli"]
#: The training Job's entry point (torchrun that keeps a rank's usage-error exit code).
SPA_TORCHRUN = [str(Path(sys.executable).parent / "spa-torchrun"), "--standalone",
                "--nproc-per-node", "1", "--no-python"]
RECORDED_RUN = Path(__file__).resolve().parent / "data" / "recorded-run"


def write_spec(path: Path, **spec: object) -> Path:
    doc = {"apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
           "metadata": {"name": "tiny"}, "spec": spec}
    path.write_text(yaml.safe_dump(doc))
    return path


def spa(*args: str, timeout: float = 900,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([*SPA, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_validate_prints_every_default(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "run.yaml", sampling={"numSamples": 5})
    out = spa("validate", spec)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["spec"]["sampling"]["numSamples"] == 5
    assert data["spec"]["denoising"] == {"rho": 30.0, "delta": 2.0, "consistency": True,
                                         "informativeness": True}


def test_invalid_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "run.yaml", denoising={"rho": -3})
    out = spa("run", spec, "--run-dir", tmp_path / "run")
    assert out.returncode == 2
    assert "spec.denoising.rho" in out.stderr and "> 0.0" in out.stderr
    assert not (tmp_path / "run").exists()


def test_stage_before_its_input_exists_says_which_command_to_run(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "run.yaml", prompts={"builtin": "honesty", "count": 2})
    out = spa("score", spec, "--run-dir", tmp_path / "run")
    assert out.returncode == 1
    assert "run `spa sample` first" in out.stderr


def test_a_stage_leaves_its_counts_or_its_error_as_the_termination_message(
        tmp_path: Path) -> None:
    """What the operator reads from a finished (or failed) stage container."""
    spec = write_spec(tmp_path / "run.yaml", prompts={"builtin": "honesty", "count": 3})
    log = tmp_path / "termination-log"
    env = {"SPA_TERMINATION_LOG": str(log)}
    out = spa("prompts", spec, "--run-dir", tmp_path / "run", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(log.read_text()) == {"stage": "prompts", "prompts": 3}

    out = spa("score", spec, "--run-dir", tmp_path / "run", env=env)
    assert out.returncode == 1
    assert log.read_text().startswith("error: ") and "run `spa sample` first" in log.read_text()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_training_that_asked_for_gpus_and_finds_none_fails_at_once_under_torchrun(
        tmp_path: Path) -> None:
    """What a training pod does on a node whose GPUs are not usable: no silent CPU fallback;
    exit code 2 (the Job's pod failure policy fails it at once), the versions in the message."""
    run_dir = tmp_path / "run"
    shutil.copytree(RECORDED_RUN, run_dir)
    doc = json.loads((RECORDED_RUN / "spec.json").read_text())
    doc["spec"]["training"]["gpusPerNode"] = 1
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(doc))
    log = tmp_path / "termination-log"
    out = subprocess.run([*SPA_TORCHRUN, *SPA, "train", str(spec), "--run-dir", str(run_dir),
                          "--force"], capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "SPA_TERMINATION_LOG": str(log)})
    assert out.returncode == 2, out.stderr[-3000:]
    message = log.read_text()
    assert message.startswith("error: training.gpusPerNode is 1, but 0 GPU(s) are usable"), \
        message
    assert "torch " in message and "NVIDIA driver" in message
    assert not (run_dir / "iter-00" / "train" / "checkpoint-final").exists()


def test_a_rank_that_fails_otherwise_makes_torchrun_exit_1() -> None:
    """A lost peer or a crash: exit 1, so the operator restarts the group from a checkpoint."""
    out = subprocess.run([*SPA_TORCHRUN, sys.executable, "-c", "raise SystemExit(3)"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1, out.stderr[-3000:]
    out = subprocess.run([*SPA_TORCHRUN, sys.executable, "-c", "pass"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]


def test_unreachable_server_is_a_clear_error_and_nothing_is_marked_done(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "run.yaml",
        prompts={"builtin": "honesty", "count": 2},
        generator={"backend": "openai", "url": "http://127.0.0.1:9/v1", "maxRetries": 1,
                   "timeoutSeconds": 2},
    )
    run_dir = tmp_path / "run"
    assert spa("prompts", spec, "--run-dir", run_dir).returncode == 0
    out = spa("sample", spec, "--run-dir", run_dir, timeout=120)
    assert out.returncode == 1
    assert "http://127.0.0.1:9/v1" in out.stderr
    manifest = json.loads((run_dir / "iter-00/samples/_manifest.json").read_text())
    assert manifest["shards"] == {} and not manifest["complete"]


def test_spa_run_refuses_at_once_what_one_external_server_cannot_serve(tmp_path: Path) -> None:
    server = {"backend": "openai", "url": "http://127.0.0.1:9/v1"}
    spec = write_spec(tmp_path / "run.yaml", prompts={"builtin": "honesty", "count": 2},
                      generator=server, iterations={"count": 2})
    out = spa("run", spec, "--run-dir", tmp_path / "run")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "evaluation.enabled" in out.stderr and "iterations.count = 2" in out.stderr
    assert "--trained-answers-only" in out.stderr
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_killed_stage_resumes_without_redoing_finished_shards(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "run.yaml",
        prompts={"builtin": "harmlessness", "count": 8},
        sampling={"numSamples": 2, "maxTokens": 24},
        storage={"shardSize": 1},
        generator={"batchSize": 2},
    )
    run_dir = tmp_path / "run"
    assert spa("prompts", spec, "--run-dir", run_dir).returncode == 0
    manifest = run_dir / "iter-00/samples/_manifest.json"
    proc = subprocess.Popen([*SPA, "sample", str(spec), "--run-dir", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if manifest.exists() and json.loads(manifest.read_text())["shards"]:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(manifest.read_text())["shards"]
    assert 1 <= len(done) < 8, "the stage must be killed part-way"
    first = run_dir / "iter-00/samples/shard-00000.parquet"
    stamp = first.stat().st_mtime_ns

    out = spa("sample", spec, "--run-dir", run_dir)
    assert out.returncode == 0, out.stderr
    final = json.loads(manifest.read_text())
    assert final["complete"] and len(final["shards"]) == 8
    assert first.stat().st_mtime_ns == stamp, "a finished shard was redone"
    assert final["shards"]["shard-00000"]["finished_at"] == done["shard-00000"]["finished_at"]


@pytest.mark.slow
def test_spa_run_of_the_shipped_example_goes_from_prompts_to_a_trained_checkpoint(
        tmp_path: Path) -> None:
    """The README's main job, examples/local.yaml, as a user runs it (minutes on a CPU)."""
    example = Path(__file__).resolve().parents[1] / "examples" / "local.yaml"
    run_dir = tmp_path / "run"
    out = spa("run", example, "--run-dir", run_dir, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "preference pairs" in out.stdout and "final training loss" in out.stdout

    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM

    pairs = pq.read_table(run_dir / "iter-00/pairs/pairs.parquet")
    assert pairs.num_rows > 0
    assert {"prompt", "chosen", "rejected", "weight", "gap"} <= set(pairs.column_names)
    spec = yaml.safe_load(example.read_text())["spec"]
    assert spec["training"]["alpha"] == 1.0  # so the weights are gap / mean gap: mean 1
    assert sum(pairs.column("weight").to_pylist()) / pairs.num_rows == pytest.approx(1.0)
    train = json.loads((run_dir / "iter-00/train/_manifest.json").read_text())
    assert train["complete"] and train["stats"]["steps"] == spec["training"]["maxSteps"]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "iter-00/train/checkpoint-final")
    assert model.num_parameters() > 100_000_000
    evaluation = json.loads((run_dir / "iter-00/evaluate/_manifest.json").read_text())
    assert evaluation["complete"]
    assert evaluation["stats"]["prompts"] == spec["evaluation"]["count"]
    assert set(evaluation["stats"]["pairwise"]) == {"primary", "helpfulness"}
    # It ends by writing the report, every section filled.
    from spa_core.evaluation.report import SECTIONS

    assert f"report: {run_dir / 'report' / 'report.html'}" in out.stdout
    report = (run_dir / "report" / "report.html").read_text()
    assert all(f"<h3>{title}</h3>" in report for title in SECTIONS)
    assert 'class="missing"' not in report
    assert len(list((run_dir / "report").glob("iter-00-*.png"))) == 5
    assert list((run_dir / "iter-00/train/runs").glob("*/events.out.tfevents.*"))

    again = spa("run", example, "--run-dir", run_dir)  # everything is done: nothing is redone
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run_dir / "iter-00/train/_manifest.json").read_text()) == train


@pytest.mark.slow
def test_export_model_writes_the_embedded_model_as_a_folder_vllm_loads(tmp_path: Path) -> None:
    """The generator pod's init container: the GGUF file dequantised into safetensors, with
    the tokenizer and its chat template, giving the same logits as the GGUF model."""
    import torch

    from spa_core.models import load_causal_lm, load_tokenizer, resolve_model
    from spa_core.spec import ModelSpec

    out = tmp_path / "base"
    result = spa("export-model", "embedded:smollm2-135m-instruct", str(out),
                 "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (tmp_path / "base.partial").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"

    exported_tok = load_tokenizer(str(out))
    path, gguf = resolve_model(ModelSpec())
    gguf_tok = load_tokenizer(path, gguf)
    messages = [{"role": "user", "content": "Is it safe to mix bleach and ammonia?"}]
    ids = gguf_tok.apply_chat_template(messages, add_generation_prompt=True,
                                       return_dict=True, return_tensors="pt")["input_ids"]
    assert exported_tok.apply_chat_template(messages, add_generation_prompt=True,
                                            return_dict=True, return_tensors="pt")[
        "input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        expected = load_causal_lm(path, gguf, dtype="float32", device="cpu")(ids).logits
        got = load_causal_lm(str(out), dtype="float32", device="cpu")(ids).logits
    torch.testing.assert_close(got, expected)


def test_export_model_of_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = spa("export-model", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert result.returncode != 0
    assert "error:" in result.stderr and "nowhere" in result.stderr
    assert not (tmp_path / "out").exists()
