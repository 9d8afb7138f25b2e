"""The pipeline Job: prompts, sample, score, refine and pairs against the generator Service.

Each stage is one container, in order (init containers, then the last stage as the main
container), so a failure names its stage and carries that stage's last log lines as the
termination message. Stages are idempotent and resumable: a retried pod skips finished shards.
"""

from __future__ import annotations

from typing import Any

from spa_core.spec import RunSpec
from spa_operator import names
from spa_operator.builders.common import (
    Owner,
    container_defaults,
    pod_placement,
    pod_security_context,
    storage,
)
from spa_operator.builders.jobs import (
    build_job,
    client_env,
    client_resources,
    spec_path,
    spec_volume,
    stage_args,
)
from spa_operator.builders.spec_config_map import PIPELINE_SPEC_KEY
from spa_operator.config import OperatorConfig

__all__ = ["COMPONENT", "PIPELINE_STAGES", "build_pipeline_job"]

COMPONENT = "pipeline"
#: The stages the pipeline Job runs, in order (`spa <stage>` subcommands).
PIPELINE_STAGES = ("prompts", "sample", "score", "refine", "pairs")


def build_pipeline_job(owner: Owner, spec: RunSpec, config: OperatorConfig,
                       iteration: int) -> dict[str, Any]:
    """Job `<run>-pipeline-<i>`: one container per stage, writing to the run directory."""
    st = storage(owner, spec, config)
    spec_vol, spec_mount = spec_volume(owner, config)
    env, resources = client_env(spec), client_resources(config)
    containers = [
        {
            "name": stage,
            "image": config.worker_image,
            **container_defaults(config),
            "args": stage_args(stage, spec_path(config, PIPELINE_SPEC_KEY), st, iteration),
            "env": env,
            "envFrom": st.env_from,
            "resources": resources,
            "volumeMounts": [spec_mount, *st.mounts],
        }
        for stage in PIPELINE_STAGES
    ]
    pod_spec = {
        **pod_placement(spec, spec.scheduling.pipeline),
        "securityContext": pod_security_context(config),
        "initContainers": containers[:-1],
        "containers": containers[-1:],
        "volumes": [spec_vol, *st.volumes],
    }
    return build_job(owner, spec, names.pipeline_job(owner.name, iteration), COMPONENT,
                     iteration, pod_spec)
