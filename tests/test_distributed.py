"""What the trainer makes of the sharding file the operator mounts (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spa_core.training.distributed import accelerate_config, config_file, training_arguments

EXAMPLE = Path(__file__).parents[1] / "examples" / "accelerate-fsdp.yaml"


def test_one_process_trains_plainly_whatever_is_mounted() -> None:
    env = {"SPA_DISTRIBUTED_CONFIG": "/spa/distributed/fsdp.json"}
    assert training_arguments(env) == {}
    assert training_arguments({**env, "WORLD_SIZE": "1"}) == {}
    assert training_arguments({"WORLD_SIZE": "8"}) == {}


def test_an_unknown_file_names_the_variable() -> None:
    env = {"SPA_DISTRIBUTED_CONFIG": "/spa/distributed/fsdp.yaml", "WORLD_SIZE": "8"}
    with pytest.raises(ValueError, match=r"\$SPA_DISTRIBUTED_CONFIG='/spa/distributed/fsdp.yaml'"):
        training_arguments(env)


def test_fsdp_checkpoints_are_sharded_and_deepspeed_is_zero3() -> None:
    # checkpoint-N: one shard per rank; train() gathers checkpoint-final (tests/test_fsdp.py).
    name, content = config_file("fsdp")
    assert name == "fsdp.json" and content["version"] == 2
    assert content["state_dict_type"] == "SHARDED_STATE_DICT"
    json.dumps(content)  # the ConfigMap stores it as JSON
    name, content = config_file("deepspeed")
    assert name == "deepspeed.json" and content["zero_optimization"]["stage"] == 3
    json.dumps(content)


def test_the_shipped_accelerate_config_is_the_fsdp_config() -> None:
    shipped = yaml.safe_load(EXAMPLE.read_text())
    assert shipped == accelerate_config()
    assert shipped["distributed_type"] == "FSDP"
    _, fsdp = config_file("fsdp")
    assert {k: shipped["fsdp_config"][f"fsdp_{k}"] for k in fsdp} == fsdp
    assert accelerate_config(num_processes=16, num_machines=2)["num_processes"] == 16


def _train_stage(root: Path, monkeypatch: pytest.MonkeyPatch, rank: int) -> tuple[dict, list]:
    """Stage `train` as rank `rank` of a torchrun group runs it, the trainer replaced by a
    recorder (a stand-in: the real two-rank path is tests/test_object_store.py's slow test)."""
    import spa_core.training
    from spa_core.rundir import RunDir
    from spa_core.spec import parse_run
    from spa_core.stages.context import StageContext
    from spa_core.stages.train import run_train
    from spa_core.training.trainer import TrainResult

    calls: list = []

    def fake_train(pairs: str, **kwargs: object) -> TrainResult:
        calls.append(kwargs)
        return TrainResult(checkpoint_dir=str(kwargs["output_dir"]), steps=3, final_loss=0.5,
                           log_history=[], metrics={}, resumed_from_step=0)

    monkeypatch.setattr(spa_core.training, "train", fake_train)
    monkeypatch.setenv("RANK", str(rank))
    run = parse_run({"apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
                     "metadata": {"name": "ranks"}, "spec": {"model": {"name": "some/model"}}})
    return run_train(StageContext(run=run, root=RunDir(root))), calls


def test_only_rank_zero_starts_clears_and_finishes_the_train_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every rank runs the stage; a rank clearing train/ while rank 0 writes its manifest lost
    # that write (on S3: "The specified key does not exist").
    it = tmp_path / "iter-00"
    (it / "pairs").mkdir(parents=True)
    (it / "pairs" / "_manifest.json").write_text(json.dumps(
        {"stage": "pairs", "config_hash": "p", "complete": True, "stats": {"pairs": 4}}))
    (it / "train" / "checkpoint-1").mkdir(parents=True)
    started = {"stage": "train", "config_hash": "rank zero's", "complete": False}
    (it / "train" / "_manifest.json").write_text(json.dumps(started))
    before = sorted(p.relative_to(it) for p in it.rglob("*"))

    stats, calls = _train_stage(tmp_path, monkeypatch, rank=1)
    assert len(calls) == 1 and stats["steps"] == 3
    assert sorted(p.relative_to(it) for p in it.rglob("*")) == before  # nothing written
    assert json.loads((it / "train" / "_manifest.json").read_text()) == started

    stats, calls = _train_stage(tmp_path, monkeypatch, rank=0)  # starts over, then finishes
    assert len(calls) == 1
    assert not (it / "train" / "checkpoint-1").exists()
    finished = json.loads((it / "train" / "_manifest.json").read_text())
    assert finished["complete"] and finished["stats"]["steps"] == 3

    # A finished stage: every rank returns its stats without training.
    assert _train_stage(tmp_path, monkeypatch, rank=1) == (finished["stats"], [])
    assert _train_stage(tmp_path, monkeypatch, rank=0) == (finished["stats"], [])
