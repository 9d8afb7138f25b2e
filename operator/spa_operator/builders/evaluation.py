"""The evaluation Jobs: `spa evaluate` against vLLM, one model at a time.

vLLM serves one model, so an iteration's evaluation is two Jobs against the generator Service:

1. `<run>-answers-<i>`: `spa evaluate --trained-answers-only` while the generator serves the
   trained checkpoint (`<run>-generator-<i+1>`, the next iteration's policy);
2. `<run>-eval-<i>`: `spa evaluate` while it serves the starting policy again
   (`<run>-generator-<i>`), which answers and judges both sets of answers, then `spa report`.

Models of any size are served as for generation (tensor parallelism included); the Jobs
themselves are clients in the slim worker image, except with `evaluation.benchmarks`, which
run lm-evaluation-harness in-process on one GPU in the trainer image.
"""

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
from spa_operator.builders.jobs import (
    build_job,
    client_env,
    client_resources,
    spec_path,
    spec_volume,
    stage_args,
    stage_env,
)
from spa_operator.builders.spec_config_map import PIPELINE_SPEC_KEY
from spa_operator.config import OperatorConfig

__all__ = ["COMPONENT", "build_evaluation_job", "build_trained_answers_job"]

COMPONENT = "evaluation"


def _client_env(spec: RunSpec) -> list[dict[str, Any]]:
    """A stage talking to the generator Service and to an external judge, if any."""
    return [*client_env(spec),
            *secret_env(JUDGE_API_KEY_ENV, spec.evaluation.judge.api_key_secret_ref
                        if spec.evaluation.judge else None)]


def build_trained_answers_job(owner: Owner, spec: RunSpec, config: OperatorConfig,
                              iteration: int) -> dict[str, Any]:
    """Job `<run>-answers-<i>`: the trained checkpoint's answers to the held-out prompts,
    asked of the generator Service while it serves that checkpoint."""
    st = storage(owner, spec, config)
    spec_vol, spec_mount = spec_volume(owner, config)
    container = {
        "name": "answers",
        "image": config.worker_image,
        **container_defaults(config),
        "args": [*stage_args("evaluate", spec_path(config, PIPELINE_SPEC_KEY), st, iteration),
                 "--trained-answers-only"],
        "env": _client_env(spec),
        "envFrom": st.env_from,
        "resources": client_resources(config),
        "volumeMounts": [spec_mount, *st.mounts],
    }
    pod_spec = {
        **pod_placement(spec, spec.scheduling.evaluation),
        "securityContext": pod_security_context(config),
        "containers": [container],
        "volumes": [spec_vol, *st.volumes],
    }
    return build_job(owner, spec, names.trained_answers_job(owner.name, iteration), COMPONENT,
                     iteration, pod_spec)


def build_evaluation_job(owner: Owner, spec: RunSpec, config: OperatorConfig,
                         iteration: int) -> dict[str, Any]:
    """Job `<run>-eval-<i>`: `spa evaluate` against the starting policy's generator, then
    `spa report`; the evaluate container's termination message holds the headline."""
    st = storage(owner, spec, config)
    spec_vol, spec_mount = spec_volume(owner, config)
    volumes, mounts = [spec_vol, *st.volumes], [spec_mount, *st.mounts]
    container: dict[str, Any] = {
        "name": "evaluate",
        "image": config.worker_image,
        **container_defaults(config),
        "args": stage_args("evaluate", spec_path(config, PIPELINE_SPEC_KEY), st, iteration),
        "env": _client_env(spec),
        "envFrom": st.env_from,
        "resources": client_resources(config),
    }
    if spec.evaluation.benchmarks is not None:
        # lm-evaluation-harness loads both models in-process: torch, one GPU when training
        # had GPUs, the model cache.
        shm, shm_mount = shm_volume(config)
        cache_volumes, cache_mounts, cache_env = model_cache(spec, config)
        volumes += [shm, *cache_volumes]
        mounts += [shm_mount, *cache_mounts]
        container |= {"image": config.trainer_image, "env": [*container["env"], *cache_env],
                      "resources": resources(min(training_gpus(spec), 1), config.trainer_cpu,
                                             config.trainer_memory)}
    container["volumeMounts"] = mounts
    # Then the run report (report/ in the run directory), from everything so far.
    report = {
        "name": "report",
        "image": config.trainer_image,
        **container_defaults(config),
        "args": ["spa", "report", st.run_dir, "--spec", spec_path(config, PIPELINE_SPEC_KEY)],
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
        "volumes": volumes,
    }
    return build_job(owner, spec, names.evaluation_job(owner.name, iteration), COMPONENT,
                     iteration, pod_spec)
