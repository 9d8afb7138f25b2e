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
