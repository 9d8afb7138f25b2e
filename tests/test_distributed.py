"""What the trainer makes of the sharding file the operator mounts (no torch needed)."""

from __future__ import annotations

import json

import pytest

from spa_core.training.distributed import config_file, training_arguments


def test_one_process_trains_plainly_whatever_is_mounted() -> None:
    env = {"SPA_DISTRIBUTED_CONFIG": "/spa/distributed/fsdp.json"}
    assert training_arguments(env) == {}
    assert training_arguments({**env, "WORLD_SIZE": "1"}) == {}
    assert training_arguments({"WORLD_SIZE": "8"}) == {}


def test_an_unknown_file_names_the_variable() -> None:
    env = {"SPA_DISTRIBUTED_CONFIG": "/spa/distributed/fsdp.yaml", "WORLD_SIZE": "8"}
    with pytest.raises(ValueError, match=r"\$SPA_DISTRIBUTED_CONFIG='/spa/distributed/fsdp.yaml'"):
        training_arguments(env)


def test_fsdp_saves_a_full_state_dict_that_vllm_can_load() -> None:
    name, content = config_file("fsdp")
    assert name == "fsdp.json" and content["version"] == 2
    assert content["state_dict_type"] == "FULL_STATE_DICT"
    name, content = config_file("deepspeed")
    assert name == "deepspeed.json" and content["zero_optimization"]["stage"] == 3
    json.dumps(content)  # the ConfigMap stores it as JSON
