"""The operator's own settings (images, ports, mount paths), from its environment.

The chart sets these as environment variables of the operator Deployment; defaults suit a
cluster with the project's published images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from importlib.metadata import version
from typing import Any

__all__ = ["IMAGE_TAG", "VLLM_IMAGE", "OperatorConfig"]

_ENV_PREFIX = "SPA_OPERATOR_"
#: The project's images are tagged with its version (images/build.sh), which is also the
#: chart's appVersion: the operator defaults to the images of its own release, never :latest.
IMAGE_TAG = version("spa-core")
#: The vLLM image, pinned here; images/Dockerfile (the worker's base) and the chart's
#: values.yaml name the same one (a test holds them to it).
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"


@dataclass(frozen=True)
class OperatorConfig:
    """Defaults the builders use where a run's spec says nothing."""

    worker_image: str = f"ghcr.io/spa-dev/spa-worker:{IMAGE_TAG}"
    """Image with spa_core (no torch): the pipeline Job."""
    trainer_image: str = f"ghcr.io/spa-dev/spa-trainer:{IMAGE_TAG}"
    """Image with spa_core, torch, transformers and TRL: training and evaluation."""
    trainer_has_deepspeed: bool = False
    """Whether `trainer_image` has DeepSpeed (the project's has not): without it a run with
    `training.strategy: deepspeed` is refused before anything starts."""
    vllm_image: str = VLLM_IMAGE
    """vLLM's OpenAI-compatible server, unless `generator.image` is set."""
    image_pull_policy: str = "IfNotPresent"
    """imagePullPolicy of every container."""
    vllm_port: int = 8000
    """Port of the vLLM server and its Service."""
    master_port: int = 29500
    """torchrun rendezvous port on training node 0."""
    storage_mount: str = "/spa/storage"
    """Where `storage.pvc` is mounted in every pod."""
    spec_mount: str = "/spa/spec"
    """Where the run's spec ConfigMap is mounted."""
    model_mount: str = "/spa/model"
    """Where a generator fetches a trained checkpoint from object storage."""
    distributed_mount: str = "/spa/distributed"
    """Where the FSDP / DeepSpeed configuration is mounted in training pods."""
    shm_size: str = "16Gi"
    """Size limit of /dev/shm (an in-memory emptyDir) for vLLM and training pods."""
    pipeline_cpu: str = "1"
    """CPU request of the pipeline pod."""
    pipeline_memory: str = "4Gi"
    """Memory request (and limit) of the pipeline pod."""
    generator_cpu: str = "4"
    """CPU request of each vLLM server (tokenisation, scheduling and the API run on CPUs)."""
    generator_memory: str = "32Gi"
    """Memory request of each vLLM server (no limit: loading weights peaks above the steady
    state)."""
    trainer_cpu: str = "8"
    """CPU request of each training node's pod and of the evaluation pod."""
    trainer_memory: str = "64Gi"
    """Memory request of each training node's pod and of the evaluation pod (no limit)."""
    model_volume_size: str = "200Gi"
    """Size limit of the emptyDir a generator copies a model from object storage into."""
    scratch_mount: str = "/spa/scratch"
    """Training pods' local scratch (TMPDIR) on a run directory on an object store."""
    cache_mount: str = "/spa/cache"
    """Where `storage.modelCachePvc` is mounted; HF_HOME is its `huggingface` folder."""
    metrics_port: int = 0
    """Port of the Prometheus /metrics endpoint (0: none; the chart sets 8080)."""
    network_policy: bool = False
    """Give each run's generator a NetworkPolicy admitting only the run's pipeline pods."""
    run_as_user: int = 65532
    """UID, GID and fsGroup of the runs' pods (the project's images' user): the kubelet makes a
    fresh root-owned volume writable for this group."""
    reconcile_seconds: int = 10
    """Seconds between two resync passes over every run and schedule."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorConfig:
        """Read `SPA_OPERATOR_<FIELD>` variables (e.g. SPA_OPERATOR_WORKER_IMAGE)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = _ENV_PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None:
                continue
            if f.type in ("bool", bool):
                if raw.lower() not in ("true", "false"):
                    raise ValueError(f"${name}={raw!r}: expected true or false")
                values[f.name] = raw.lower() == "true"
            elif f.type in ("int", int):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ValueError(f"${name}={raw!r}: expected an integer") from None
            else:
                values[f.name] = raw
        return cls(**values)
