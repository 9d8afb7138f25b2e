"""The evaluation Job: `spa evaluate`, before vs after training, with models in-process."""

from __future__ import annotations

from typing import Any

from spa_core.spec import RunSpec
from spa_operator import names
from spa_operator.builders.common import (
    JUDGE_API_KEY_ENV,
    Owner,
    container_defaults,
    model_cache,
    pod_placement,
    pod_security_context,
    resources,
    secret_env,
    shm_volume,
    storage,
    training_gpus,
)
from spa_operator.builders.jobs import build_job, spec_path, spec_volume, stage_args, stage_env
from spa_operator.builders.spec_config_map import TRAINER_SPEC_KEY
from spa_operator.config import OperatorConfig

__all__ = ["COMPONENT", "build_evaluation_job"]

COMPONENT = "evaluation"


def build_evaluation_job(owner: Owner, spec: RunSpec, config: OperatorConfig,
                         iteration: int) -> dict[str, Any]:
    """Job `<run>-eval-<i>`: `spa evaluate` (one GPU when training used GPUs), then
    `spa report`; the evaluate container's termination message holds the headline."""
    st = storage(owner, spec, config)
    spec_vol, spec_mount = spec_volume(owner, config)
    shm, shm_mount = shm_volume(config)
    cache_volumes, cache_mounts, cache_env = model_cache(spec, config)
    container = {
        "name": "evaluate",
        "image": config.trainer_image,
        **container_defaults(config),
        "args": stage_args("evaluate", spec_path(config, TRAINER_SPEC_KEY), st, iteration),
        "env": [*stage_env(spec), *secret_env(
            JUDGE_API_KEY_ENV, spec.evaluation.judge.api_key_secret_ref
            if spec.evaluation.judge else None), *cache_env],
        "envFrom": st.env_from,
        "resources": resources(min(training_gpus(spec), 1), config.trainer_cpu,
                               config.trainer_memory),
        "volumeMounts": [spec_mount, shm_mount, *st.mounts, *cache_mounts],
    }
    # Then the run report (report/ in the run directory), from everything so far.
    report = {
        "name": "report",
        "image": config.trainer_image,
        **container_defaults(config),
        "args": ["spa", "report", st.run_dir, "--spec", spec_path(config, TRAINER_SPEC_KEY)],
        "env": stage_env(spec),
        "envFrom": st.env_from,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        "volumeMounts": [spec_mount, *st.mounts],
    }
    pod_spec = {
        **pod_placement(spec, spec.scheduling.evaluation),
        "securityContext": pod_security_context(config),
        "initContainers": [container],
        "containers": [report],
        "volumes": [spec_vol, shm, *st.volumes, *cache_volumes],
    }
    return build_job(owner, spec, names.evaluation_job(owner.name, iteration), COMPONENT,
                     iteration, pod_spec)
