"""A run directory on an object store (`storage.uri: s3://...`), against a real S3-compatible
server (moto's, on loopback) reached through the environment, as a pod's credentials Secret
sets it: the pipeline's stages write and read it, and training on two ranks keeps its
checkpoints there, resumes from them after a kill and publishes `checkpoint-final` once."""

from __future__ import annotations

import contextlib
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
from object_store_helpers import S3Bucket
from test_fsdp import MAX_STEPS, _env, launch, logged
from training_helpers import build_tiny_model, write_pairs

from spa_core.training.checkpoints import CHECKPOINT_MARKER, RESULT_FILE
from spa_core.training.distributed import config_file

SPA = [sys.executable, "-m", "spa_core.cli"]
RECORDED_RUN = Path(__file__).resolve().parent / "data" / "recorded-run"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def put_last(bucket: S3Bucket, prefix: str, key: str) -> bool:
    """Whether `key` (under `prefix`) was written once, after every other key there."""
    puts = bucket.puts(prefix)
    return puts.count(key) == 1 and puts[-1] == key and len(puts) == len(set(puts))


def spa(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPA, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "COLUMNS": "200", **env})


@pytest.mark.slow
def test_two_ranks_keep_checkpoints_on_s3_resume_from_them_and_publish_once(
        tiny_model: str, tmp_path: Path, s3_bucket: S3Bucket) -> None:
    pairs = write_pairs(tmp_path / "pairs.parquet")
    name, content = config_file("fsdp")
    (tmp_path / name).write_text(json.dumps(content))
    scratch = tmp_path / "node-disk"  # the pods' local disk: TMPDIR of both ranks
    scratch.mkdir()
    env = {**_env(tmp_path / name), **s3_bucket.env, "TMPDIR": str(scratch)}
    prefix = "runs/r/iter-00/train"
    store = s3_bucket.url(prefix)

    # 1. Killed when step 2 is logged: checkpoint-1 was saved and uploaded, by both ranks.
    code, output = launch(env, tiny_model, pairs, store, str(tmp_path / "killed.json"),
                          max_steps=MAX_STEPS, die_at_step=2)
    assert code != 0 and "Killed: killed at step 2" in output, output[-8000:]
    killed = logged(output)
    assert sorted(killed) == [1, 2], output[-8000:]
    assert s3_bucket.keys(prefix) and all(k.startswith("checkpoint-1/")
                                          for k in s3_bucket.keys(prefix))
    files = set(s3_bucket.keys(f"{prefix}/checkpoint-1"))
    # Each rank's shard of the weights and of the optimizer state, and its RNG state.
    assert {"pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp",
            "optimizer_0/__0_0.distcp", "optimizer_0/__1_0.distcp", "pytorch_model_fsdp_0/.metadata",
            "rng_state_0.pth", "rng_state_1.pth", CHECKPOINT_MARKER} <= files, files
    assert put_last(s3_bucket, f"{prefix}/checkpoint-1", CHECKPOINT_MARKER)

    # 2. A new pod: nothing on local disk; the run resumes from the store's checkpoint-1.
    shutil.rmtree(scratch)
    scratch.mkdir()
    code, output = launch(env, tiny_model, pairs, store, str(tmp_path / "resumed.json"),
                          max_steps=MAX_STEPS)
    assert code == 0, output[-8000:]
    resumed = logged(output)
    assert sorted(resumed) == [2, 3], output[-8000:]  # step 1 was not redone
    # Step 2 ran on the weights and optimizer state read back from the store's shards.
    assert resumed[2] == pytest.approx(killed[2], abs=1e-6)
    result = json.loads((tmp_path / "resumed.json").read_text())["result"]
    assert result["steps"] == MAX_STEPS and result["resumed_from_step"] == 1
    assert result["checkpoint_dir"] == f"{store}/checkpoint-final"
    assert not list(scratch.glob("spa-train-*"))  # the node's scratch directory was removed

    # checkpoint-final was written once, its result file last; every checkpoint-N was
    # uploaded (2 and 3 by this attempt) and is gone now that checkpoint-final supersedes it.
    assert all(k.startswith("checkpoint-final/") for k in s3_bucket.keys(prefix))
    final = s3_bucket.versions(f"{prefix}/checkpoint-final")
    assert {"model.safetensors", "config.json", RESULT_FILE} <= final.keys()
    assert all(len(v) == 1 and not v[0]["deleted"] for v in final.values()), final
    assert put_last(s3_bucket, f"{prefix}/checkpoint-final", RESULT_FILE)
    versions = s3_bucket.versions(prefix)
    for step in (1, 2, 3):
        marker = versions[f"checkpoint-{step}/{CHECKPOINT_MARKER}"]
        assert [v["deleted"] for v in marker] == [False, True], (step, marker)

    from transformers import AutoModelForCausalLM

    s3_bucket.fs.get(f"{s3_bucket.name}/{prefix}/checkpoint-final/", str(tmp_path / "final/"),
                     recursive=True)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "final").state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert trained.keys() == initial.keys()
    assert any(not (trained[k] == initial[k]).all() for k in trained)

    # 3. Run again: the stored result comes back at once, nothing is trained or written.
    code, output = launch(env, tiny_model, pairs, store, str(tmp_path / "again.json"),
                          max_steps=MAX_STEPS)
    assert code == 0, output[-8000:]
    assert logged(output) == {}
    assert json.loads((tmp_path / "again.json").read_text())["result"]["steps"] == MAX_STEPS
    assert s3_bucket.versions(f"{prefix}/checkpoint-final") == final


def _upload(bucket: S3Bucket, local: Path, prefix: str) -> None:
    bucket.fs.put(str(local) + "/", f"{bucket.name}/{prefix}/", recursive=True)


@pytest.mark.slow
def test_pipeline_stages_write_and_read_an_s3_run_dir(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """`spa` stages in separate processes against s3://, credentials and endpoint from the
    environment only: each reads what the one before it wrote there."""
    env = {**s3_bucket.env, "SPA_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump({
        "apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
        "metadata": {"name": "tiny"},
        "spec": {"prompts": {"builtin": "honesty", "count": 2},
                 "sampling": {"numSamples": 2, "maxTokens": 8},
                 "storage": {"uri": s3_bucket.url("runs/{name}")}}}))
    # The run directory comes from storage.uri: s3://BUCKET/runs/tiny.
    for stage in ("prompts", "sample"):
        out = spa(stage, spec, env=env)
        assert out.returncode == 0, out.stderr[-4000:]
    keys = s3_bucket.keys("runs/tiny")
    assert {"spec.json", "iter-00/prompts/prompts.parquet", "iter-00/prompts/_manifest.json",
            "iter-00/samples/shard-00000.parquet", "iter-00/samples/_manifest.json"} <= set(keys)
    assert not [k for k in keys if ".tmp-" in k]  # every write was committed
    samples = json.loads(s3_bucket.fs.cat_file(
        f"{s3_bucket.name}/runs/tiny/iter-00/samples/_manifest.json"))
    assert samples["complete"] and samples["stats"]["samples"] == 2 * 2

    # Training, evaluation and the report, from a recorded run's pairs put on the store.
    prefix = "runs/recorded"
    for stage in ("prompts", "samples", "scores", "refined", "pairs"):
        _upload(s3_bucket, RECORDED_RUN / "iter-00" / stage, f"{prefix}/iter-00/{stage}")
    doc = json.loads((RECORDED_RUN / "spec.json").read_text())
    doc["spec"]["training"].update(maxSteps=2, saveSteps=1)
    doc["spec"]["evaluation"].update(maxTokens=8)
    spec.write_text(yaml.safe_dump(doc))
    run_dir = s3_bucket.url(prefix)
    out = spa("train", spec, "--run-dir", run_dir, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    train = json.loads(s3_bucket.fs.cat_file(f"{s3_bucket.name}/{prefix}/iter-00/train/_manifest.json"))
    assert train["complete"] and train["stats"]["steps"] == 2
    files = s3_bucket.keys(f"{prefix}/iter-00/train")
    assert {"checkpoint-final/model.safetensors", f"checkpoint-final/{RESULT_FILE}",
            "log_history.json", "_manifest.json"} <= set(files)
    assert any(k.startswith("runs/") and "tfevents" in k for k in files)  # TensorBoard's logs
    assert not [k for k in files if k.startswith("checkpoint-") and
                not k.startswith("checkpoint-final/")]  # superseded, removed
    marker = s3_bucket.versions(f"{prefix}/iter-00/train")[f"checkpoint-1/{CHECKPOINT_MARKER}"]
    assert [v["deleted"] for v in marker] == [False, True]  # checkpoint-1 was kept there
    assert put_last(s3_bucket, f"{prefix}/iter-00/train/checkpoint-final", RESULT_FILE)

    for args in (("evaluate", spec, "--run-dir", run_dir), ("report", run_dir)):
        out = spa(*args, env=env)
        assert out.returncode == 0, out.stderr[-4000:]
    evaluation = json.loads(s3_bucket.fs.cat_file(
        f"{s3_bucket.name}/{prefix}/iter-00/evaluate/_manifest.json"))
    assert evaluation["complete"]
    assert evaluation["stats"]["prompts"] == doc["spec"]["evaluation"]["count"]
    assert {"report.html", "report.md"} <= set(s3_bucket.keys(f"{prefix}/report"))
    assert f"report: {run_dir}/report/report.html" in out.stdout + out.stderr


def test_a_later_iteration_names_its_policy_by_uri_and_a_served_one_is_not_fetched(
        tmp_path: Path, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """Iteration 1 of a run on S3: its stages hash the previous checkpoint by URI (the same
    in every pod), and a client of a server that names its model downloads nothing."""
    from spa_core.rundir import RunDir
    from spa_core.spec import parse_run
    from spa_core.stages.context import StageContext

    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPA_CACHE", str(cache))
    checkpoint = "runs/it/iter-00/train/checkpoint-final"
    s3_bucket.fs.pipe_file(f"{s3_bucket.name}/{checkpoint}/config.json", b"{}")

    def context(root: str = "runs/it", **generator: object) -> StageContext:
        run = parse_run({"apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
                         "metadata": {"name": "it"},
                         "spec": {"model": {"name": "org/model"}, "iterations": {"count": 2},
                                  "generator": generator}})
        return StageContext(run=run, root=RunDir(s3_bucket.url(root)), iteration=1)

    ctx = context(backend="openai", url="http://127.0.0.1:9/v1", servedModelName="policy")
    assert ctx.policy_id() == s3_bucket.url(checkpoint)
    backend = ctx.backend()
    assert backend.model_name == "policy"
    assert not cache.exists()  # nothing fetched
    # A server without a name for its model is asked for the checkpoint's local path, as
    # vLLM names a model it loaded from a directory: that needs the copy.
    ctx = context(backend="openai", url="http://127.0.0.1:9/v1")
    assert ctx.backend().model_name == ctx.policy_path()
    assert (Path(ctx.policy_path()) / "config.json").is_file()
    assert ctx.policy_path().startswith(str(cache))
    # Iteration 1 before iteration 0 has trained: a clear error, naming what is missing.
    with pytest.raises(FileNotFoundError, match="finish iteration 0 first"):
        context("runs/untrained", backend="openai", url="http://127.0.0.1:9/v1").policy_id()


@pytest.mark.slow
def test_train_stage_on_two_ranks_resumes_from_the_store_after_the_group_is_killed(
        tiny_model: str, tmp_path: Path, s3_bucket: S3Bucket) -> None:
    """`spa train` under spa-torchrun, as the training Job runs it, on s3://: killed once a
    checkpoint is on the store, run again as a new group, it resumes from that checkpoint."""
    prefix = "runs/two-ranks"
    pairs = f"{s3_bucket.name}/{prefix}/iter-00/pairs"
    s3_bucket.fs.put_file(write_pairs(tmp_path / "pairs.parquet"), f"{pairs}/pairs.parquet")
    s3_bucket.fs.pipe_file(f"{pairs}/_manifest.json", json.dumps({
        "stage": "pairs", "config_hash": "recorded", "complete": True,
        "stats": {"pairs": 4}}).encode())
    spec = tmp_path / "run.yaml"
    steps = 40
    spec.write_text(yaml.safe_dump({
        "apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
        "metadata": {"name": "two-ranks"},
        "spec": {"model": {"name": tiny_model},
                 "training": {"maxSteps": steps, "saveSteps": 1, "perDeviceBatchSize": 1,
                              "maxLength": 64, "maxCompletionLength": 32, "gpusPerNode": 0,
                              "reportTo": []}}}))
    env = {**os.environ, **s3_bucket.env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [str(Path(sys.executable).parent / "spa-torchrun"), "--standalone",
               "--nproc-per-node", "2", "--no-python", *SPA, "train", str(spec),
               "--run-dir", s3_bucket.url(prefix)]
    train = f"{prefix}/iter-00/train"

    log = tmp_path / "killed.log"
    with log.open("wb") as sink:
        group = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and group.poll() is None:
            if f"checkpoint-2/{CHECKPOINT_MARKER}" in s3_bucket.keys(train):
                break
            time.sleep(0.1)
    finally:  # the group's pods are lost: torchrun and its ranks (each in its own session)
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            for process in [*psutil.Process(group.pid).children(recursive=True),
                            psutil.Process(group.pid)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        group.wait()
    assert group.returncode == -signal.SIGKILL, log.read_text()[-6000:]
    saved = max(int(k.split("/")[0].split("-")[1]) for k in s3_bucket.keys(train)
                if k.endswith(f"/{CHECKPOINT_MARKER}"))
    assert 2 <= saved < steps
    assert not [k for k in s3_bucket.keys(train) if k.startswith("checkpoint-final/")]

    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert out.returncode == 0, out.stderr[-6000:]
    manifest = json.loads(s3_bucket.fs.cat_file(f"{s3_bucket.name}/{train}/_manifest.json"))
    assert manifest["complete"] and manifest["stats"]["steps"] == steps
    assert manifest["stats"]["resumed_from_step"] >= saved, out.stderr[-6000:]
    # Both ranks finished; checkpoint-final was written once, by one of them.
    final = s3_bucket.versions(f"{train}/checkpoint-final")
    assert {"model.safetensors", RESULT_FILE} <= final.keys()
    assert all(len(v) == 1 and not v[0]["deleted"] for v in final.values()), final
    assert all(k.startswith("checkpoint-final/") or "/" not in k
               for k in s3_bucket.keys(train))
