"""Multi-GPU training settings: the files the operator mounts and what the trainer makes of them.

The operator puts one file in the training pods, named by `SPA_DISTRIBUTED_CONFIG`:
`fsdp.json` (transformers' `fsdp_config`: FSDP2, transformer-block wrapping, sharded
`checkpoint-N` that each rank writes its part of; `train` gathers the full state dict for
`checkpoint-final`, plain safetensors vLLM can serve) or `deepspeed.json` (ZeRO-3, batch
sizes `auto` from the Trainer). Under torchrun with more than one process, the trainer
passes it to its TrainingArguments. `accelerate_config` is the same FSDP setup as an
`accelerate launch --config_file` YAML (examples/accelerate-fsdp.yaml). The variable and the
file names are the run layout's (`spa_core.layout`); their content is here. Light: no torch import.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any, Literal

from spa_core.layout import DISTRIBUTED_CONFIG_ENV, DISTRIBUTED_CONFIG_FILES

__all__ = [
    "accelerate_config",
    "config_file",
    "deepspeed_config",
    "fsdp_config",
    "training_arguments",
]

Strategy = Literal["fsdp", "deepspeed"]


def fsdp_config() -> dict[str, Any]:
    """transformers' `fsdp_config` for FSDP2 full sharding."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True,
        "cpu_ram_efficient_loading": True,
        # checkpoint-N: each rank writes its shard (torch.distributed.checkpoint) and reads it
        # back on resume, nothing gathered. `train` switches to FULL_STATE_DICT for
        # checkpoint-final, one safetensors model.
        "state_dict_type": "SHARDED_STATE_DICT",
        "activation_checkpointing": False,
    }


def accelerate_config(
    num_processes: int = 8, num_machines: int = 1, mixed_precision: str = "bf16"
) -> dict[str, Any]:
    """`fsdp_config` as an `accelerate launch --config_file` file, for running `spa train`
    under accelerate rather than torchrun + $SPA_DISTRIBUTED_CONFIG.

    `num_processes` counts every process on every machine. accelerate's launcher insists on
    `fsdp_sync_module_states` with `cpu_ram_efficient_loading` (FSDP2 ignores it).
    """
    fsdp = {f"fsdp_{key}": value for key, value in fsdp_config().items()}
    fsdp["fsdp_sync_module_states"] = True
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP",
        "mixed_precision": mixed_precision,
        "num_machines": num_machines,
        "num_processes": num_processes,
        "machine_rank": 0,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "fsdp_config": fsdp,
    }


def deepspeed_config() -> dict[str, Any]:
    """DeepSpeed ZeRO-3 with bf16; batch sizes follow the Trainer's (`auto`)."""
    return {
        "bf16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }


def config_file(strategy: Strategy) -> tuple[str, dict[str, Any]]:
    """(file name, content) of a strategy's configuration."""
    content = fsdp_config() if strategy == "fsdp" else deepspeed_config()
    return DISTRIBUTED_CONFIG_FILES[strategy], content


def training_arguments(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """TrainingArguments for the file in $SPA_DISTRIBUTED_CONFIG, when several processes run.

    A single process (no torchrun, or one GPU) trains plainly; an unknown file name is an
    error that names the variable, so a bad mount fails before the model loads.
    """
    env = os.environ if environ is None else environ
    path = env.get(DISTRIBUTED_CONFIG_ENV)
    if not path or int(env.get("WORLD_SIZE", "1")) <= 1:
        return {}
    name = PurePosixPath(path).name
    files = DISTRIBUTED_CONFIG_FILES
    if name == files["fsdp"]:
        return {"fsdp": True, "fsdp_config": path}
    if name == files["deepspeed"]:
        return {"deepspeed": path}
    raise ValueError(f"${DISTRIBUTED_CONFIG_ENV}={path!r}: expected a file named "
                     f"{files['fsdp']!r} or {files['deepspeed']!r}")
