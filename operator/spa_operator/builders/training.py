"""Training: an Indexed Job (one pod per node) and a headless Service, torchrun-wired.

The wiring follows Kubeflow's trainer: torchrun reads its options from PET_* variables
(PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK from the pod's completion index,
PET_MASTER_ADDR = `<job>-0.<service>`, PET_MASTER_PORT), and every node runs
`spa train` under it. The FSDP / DeepSpeed configuration comes from a ConfigMap.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from spa_core.layout import DISTRIBUTED_CONFIG_ENV, DISTRIBUTED_CONFIG_FILES
from spa_core.spec import RunSpec
from spa_core.training.distributed import config_file
from spa_operator import names
from spa_operator.builders.common import (
    Owner,
    child_metadata,
    container_defaults,
    model_cache,
    pod_placement,
    pod_security_context,
    resources,
    selector_labels,
    shm_volume,
    storage,
    training_gpus,
)
from spa_operator.builders.jobs import build_job, spec_path, spec_volume, stage_args, stage_env
from spa_operator.builders.spec_config_map import TRAINER_SPEC_KEY
from spa_operator.config import OperatorConfig
from spa_operator.errors import ClusterSpecError

__all__ = [
    "COMPLETION_INDEX_ANNOTATION",
    "COMPONENT",
    "build_training_config_map",
    "build_training_job",
    "build_training_service",
]

COMPONENT = "training"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def build_training_config_map(owner: Owner, spec: RunSpec,
                              config: OperatorConfig) -> dict[str, Any]:
    """ConfigMap `<run>-accelerate` with the sharding configuration the spec asks for."""
    file, content = config_file(spec.training.strategy)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, names.training_config_map(owner.name), COMPONENT,
                                   None, spec),
        "data": {file: json.dumps(content, indent=2) + "\n"},
    }


def build_training_service(owner: Owner, spec: RunSpec, config: OperatorConfig,
                           iteration: int) -> dict[str, Any]:
    """Headless Service `<run>-train-<i>`: DNS names `<job>-<index>.<service>` for the pods."""
    name = names.training_service(owner.name, iteration)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, name, COMPONENT, iteration, spec),
        "spec": {
            "clusterIP": "None",
            # Rendezvous happens before any pod is ready.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(owner, COMPONENT, iteration),
            "ports": [{"name": "rendezvous", "port": config.master_port,
                       "targetPort": config.master_port, "protocol": "TCP"}],
        },
    }


def torchrun_env(owner: Owner, spec: RunSpec, config: OperatorConfig,
                 iteration: int, attempt: int) -> list[dict[str, Any]]:
    """PET_* variables, as Kubeflow's trainer sets them for torchrun."""
    job = names.training_job(owner.name, iteration, attempt)
    service = names.training_service(owner.name, iteration)
    tr = spec.training
    return [
        {"name": "PET_NNODES", "value": str(tr.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(max(training_gpus(spec), 1))},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}},
        {"name": "PET_MASTER_ADDR", "value": f"{job}-0.{service}"},
        {"name": "PET_MASTER_PORT", "value": str(config.master_port)},
    ]


def build_training_job(owner: Owner, spec: RunSpec, config: OperatorConfig,
                       iteration: int, attempt: int = 0) -> dict[str, Any]:
    """Indexed Job `<run>-train-<i>[-r<attempt>]`: `training.nodes` pods running `torchrun
    ... spa train`.

    The pods run as one group: torchrun's ranks cannot go on without one of theirs, so the
    first counted pod failure fails the Job (backoffLimit 0; an evicted rank's peers fail
    with it) and the operator restarts the whole group as a new attempt, which resumes from
    the last checkpoint on the run's storage (JobSet's failurePolicy.maxRestarts, with
    `training.maxRestarts`)."""
    tr = spec.training
    if tr.strategy == "deepspeed" and not config.trainer_has_deepspeed:
        raise ClusterSpecError(
            "training.strategy", f"deepspeed, but the trainer image ({config.trainer_image}) "
            "has no DeepSpeed: use fsdp, or build an image FROM it with deepspeed installed "
            "and install the chart with workloadImages.trainerHasDeepSpeed=true")
    st = storage(owner, spec, config)
    spec_vol, spec_mount = spec_volume(owner, config)
    shm, shm_mount = shm_volume(config)
    dist_file = posixpath.join(config.distributed_mount, DISTRIBUTED_CONFIG_FILES[tr.strategy])
    cache_volumes, cache_mounts, cache_env = model_cache(spec, config)
    # On an object store the ranks train into the node's local disk (TMPDIR) and upload each
    # checkpoint: a volume of its own, which a podTemplate can replace (a local NVMe disk, an
    # ephemeral claim) by giving a volume named `scratch`.
    scratch_volumes, scratch_mounts, scratch_env = [], [], []
    if not st.is_volume:
        scratch_volumes = [{"name": "scratch", "emptyDir": {}}]
        scratch_mounts = [{"name": "scratch", "mountPath": config.scratch_mount}]
        scratch_env = [{"name": "TMPDIR", "value": config.scratch_mount}]
    container = {
        "name": "trainer",
        "image": config.trainer_image,
        **container_defaults(config),
        # torchrun (spa-torchrun: exit code 2 when a rank's was) takes every option from the
        # PET_* environment; --no-python runs `spa`.
        "command": ["spa-torchrun", "--no-python"],
        "args": stage_args("train", spec_path(config, TRAINER_SPEC_KEY), st, iteration),
        "env": [
            *stage_env(spec),
            *torchrun_env(owner, spec, config, iteration, attempt),
            {"name": DISTRIBUTED_CONFIG_ENV, "value": dist_file},
            *cache_env,
            *scratch_env,
        ],
        "envFrom": st.env_from,
        "ports": [{"name": "rendezvous", "containerPort": config.master_port, "protocol": "TCP"}],
        "resources": resources(training_gpus(spec), config.trainer_cpu, config.trainer_memory),
        "volumeMounts": [
            spec_mount,
            shm_mount,
            {"name": "distributed", "mountPath": config.distributed_mount, "readOnly": True},
            *st.mounts,
            *cache_mounts,
            *scratch_mounts,
        ],
    }
    pod_spec = {
        **pod_placement(spec, spec.scheduling.training),
        "securityContext": pod_security_context(config),
        # Pod hostname `<job>-<index>` under the headless Service: stable rendezvous address.
        "subdomain": names.training_service(owner.name, iteration),
        "containers": [container],
        "volumes": [
            spec_vol,
            shm,
            {"name": "distributed",
             "configMap": {"name": names.training_config_map(owner.name)}},
            *st.volumes,
            *cache_volumes,
            *scratch_volumes,
        ],
    }
    return build_job(
        owner, spec, names.training_job(owner.name, iteration, attempt), COMPONENT, iteration,
        pod_spec, completionMode="Indexed", completions=tr.nodes, parallelism=tr.nodes,
        backoffLimit=0,
    )
