"""The generator: vLLM's OpenAI-compatible server (a Deployment) and its Service.

One Deployment per iteration (`<run>-generator-<i>`, serving that iteration's policy) behind
one stable Service (`<run>-generator`), so the pipeline's spec never changes between
iterations. The operator deletes the Deployment once sampling and scoring are done
(`generator.scaleDownAfterUse`) to free the GPUs for training. The evaluation brings up
`<run>-generator-<i+1>` (the trained checkpoint), then `<run>-generator-<i>` again: one
at a time, so the Service reaches one model.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from spa_core.layout import CHECKPOINT, iteration_dir
from spa_core.spec import EMBEDDED_MODEL, RunSpec
from spa_operator import names
from spa_operator.builders.common import (
    HF_TOKEN_ENV,
    Owner,
    Storage,
    child_metadata,
    container_defaults,
    model_cache,
    pod_labels,
    pod_placement,
    pod_security_context,
    resources,
    secret_env,
    selector_labels,
    shm_volume,
    storage,
)
from spa_operator.builders.pod_template import apply_pod_templates
from spa_operator.builders.spec_config_map import served_model_name
from spa_operator.config import OperatorConfig
from spa_operator.errors import ClusterSpecError

__all__ = [
    "COMPONENT",
    "build_generator_deployment",
    "build_generator_network_policy",
    "build_generator_service",
    "policy_location",
]

COMPONENT = "generator"
#: vLLM reads its API key from this variable (same as `--api-key`).
VLLM_API_KEY_ENV = "VLLM_API_KEY"
#: Copies the directory at URI argv[1] to argv[2] (credentials from the environment).
_FETCH_SCRIPT = (
    "import sys, fsspec; fs, src = fsspec.core.url_to_fs(sys.argv[1]); "
    "fs.get(src.rstrip('/') + '/', sys.argv[2].rstrip('/') + '/', recursive=True)"
)


def policy_location(owner: Owner, spec: RunSpec, config: OperatorConfig,
                    iteration: int) -> tuple[str, str | None]:
    """(model vLLM loads, what to put there first or None) for `iteration`.

    Iteration 0 serves `model.name`: fetched first when it is a URI (e.g. the checkpoint a
    schedule's previous run trained), exported first when it is the embedded model (its GGUF
    file, dequantised into a folder vLLM loads). Iteration i serves the checkpoint iteration
    i-1 trained. The source is a URI or EMBEDDED_MODEL.
    """
    st = storage(owner, spec, config)
    if iteration > 0:
        rel = f"{iteration_dir(iteration - 1)}/{CHECKPOINT}"
        if st.is_volume:
            return posixpath.join(st.run_dir, rel), None
        return posixpath.join(config.model_mount, rel), posixpath.join(st.run_dir, rel)
    model = spec.model
    if "://" in model.name:
        return posixpath.join(config.model_mount, "base"), model.name
    if model.name == EMBEDDED_MODEL and not model.gguf_file:
        return posixpath.join(config.model_mount, "base"), EMBEDDED_MODEL
    if model.gguf_file:
        raise ClusterSpecError("model.ggufFile", "GGUF files are for local runs; give vLLM a "
                               "Hugging Face model id or a safetensors directory")
    if model.name.startswith("/") and not (
            st.is_volume and model.name.startswith(config.storage_mount.rstrip("/") + "/")):
        raise ClusterSpecError("model.name", f"{model.name!r} is a path, but only paths under "
                               f"{config.storage_mount} (storage.pvc's mount) exist in the pods")
    return model.name, None


def _vllm_args(spec: RunSpec, model: str, config: OperatorConfig, iteration: int) -> list[str]:
    gen = spec.generator
    args = [
        "--model", model,
        "--served-model-name", served_model_name(spec),
        "--tensor-parallel-size", str(gen.tensor_parallel_size),
        *(["--data-parallel-size", str(gen.data_parallel_size)]
          if gen.data_parallel_size > 1 else []),
        "--host", "0.0.0.0",
        "--port", str(config.vllm_port),
    ]
    if gen.max_model_len is not None:
        args += ["--max-model-len", str(gen.max_model_len)]
    if iteration == 0 and spec.model.revision:
        args += ["--revision", spec.model.revision]
    return [*args, "--dtype", spec.model.dtype, *gen.extra_args]


def _health_probe(period: int, timeout: int, failures: int) -> dict[str, Any]:
    """An HTTP probe on vLLM's /health (200 once the engine is up). A server saturated with
    the pipeline's requests answers slowly: the timeouts are far above the kubelet's 1 s."""
    return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": timeout, "failureThreshold": failures}


def _fetch_container(st: Storage, source: str, target: str,
                     config: OperatorConfig) -> dict[str, Any]:
    """Init container putting the model on the model volume: a checkpoint copied from object
    storage (the worker image: fsspec with s3fs and gcsfs), or the embedded model exported from
    its GGUF file (`spa export-model`: the trainer image, which has torch and transformers)."""
    export = source == EMBEDDED_MODEL
    command = ["spa", "export-model", source, target] if export \
        else ["python", "-c", _FETCH_SCRIPT, source, target]
    return {
        "name": "fetch-model",
        "image": config.trainer_image if export else config.worker_image,
        **container_defaults(config),
        "command": command,
        "envFrom": st.env_from,
        # Copying is I/O bound; the GGUF export holds the model once in memory. The request
        # stays below vLLM's own: a pod's request is the larger of its init containers' and
        # its containers' sum, and this one runs before vLLM starts.
        "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "8Gi"}},
        "volumeMounts": [{"name": "model", "mountPath": config.model_mount}],
    }


def build_generator_deployment(owner: Owner, spec: RunSpec, config: OperatorConfig,
                               iteration: int) -> dict[str, Any]:
    """Deployment `<run>-generator-<i>`: vLLM serving iteration `iteration`'s policy."""
    gen = spec.generator
    st = storage(owner, spec, config)
    model, fetch = policy_location(owner, spec, config, iteration)
    shm, shm_mount = shm_volume(config)
    volumes = [shm]
    mounts = [shm_mount]
    init_containers = []
    if st.is_volume and model.startswith(config.storage_mount.rstrip("/") + "/"):
        # Only when vLLM loads from the run's volume (a trained checkpoint): a ReadWriteOnce
        # claim can then only be attached on one node, which the pipeline pod shares.
        volumes += st.volumes
        mounts += st.read_only_mounts()
    if fetch is not None:
        volumes.append({"name": "model", "emptyDir": {"sizeLimit": config.model_volume_size}})
        mounts.append({"name": "model", "mountPath": config.model_mount, "readOnly": True})
        init_containers.append(_fetch_container(st, fetch, model, config))
    cache_volumes, cache_mounts, cache_env = model_cache(spec, config)
    volumes += cache_volumes
    mounts += cache_mounts
    # vLLM's images run as root with HOME=/root; as the pods' non-root user, caches (and the
    # Hugging Face download, unless a model cache is mounted) go to a writable HOME.
    env = [{"name": "HOME", "value": "/tmp"}, *cache_env,
           *secret_env(HF_TOKEN_ENV, spec.model.token_secret_ref),
           *secret_env(VLLM_API_KEY_ENV, gen.api_key_secret_ref)]
    container = {
        "name": "vllm",
        "image": gen.image or config.vllm_image,
        **container_defaults(config),
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": _vllm_args(spec, model, config, iteration),
        "env": env,
        "ports": [{"name": "http", "containerPort": config.vllm_port, "protocol": "TCP"}],
        # Loading weights can take many minutes: the startup probe allows an hour, then
        # readiness gates the Service and liveness restarts a wedged server.
        "startupProbe": _health_probe(period=10, timeout=10, failures=360),
        "readinessProbe": _health_probe(period=10, timeout=10, failures=3),
        "livenessProbe": _health_probe(period=30, timeout=30, failures=5),
        "resources": resources(gen.gpus, config.generator_cpu, config.generator_memory),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        **pod_placement(spec, spec.scheduling.generator),
        "securityContext": pod_security_context(config),
        "containers": [container],
        "volumes": volumes,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    name = names.generator_deployment(owner.name, iteration)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(owner, name, COMPONENT, iteration, spec, workload=True),
        "spec": {
            "replicas": gen.replicas,
            # GPUs are scarce: never run old and new pods side by side.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector_labels(owner, COMPONENT, iteration)},
            "template": apply_pod_templates(
                {"metadata": {"labels": pod_labels(owner, COMPONENT, iteration)},
                 "spec": pod_spec},
                spec, COMPONENT),
        },
    }
    return json.loads(json.dumps(deployment))


def build_generator_service(owner: Owner, spec: RunSpec, config: OperatorConfig) -> dict[str, Any]:
    """Service `<run>-generator`: the OpenAI API of whichever iteration's generator is up."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(owner, names.generator_service(owner.name), COMPONENT, None,
                                   spec),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner, COMPONENT),
            "ports": [{"name": "http", "port": config.vllm_port, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    }


def build_generator_network_policy(owner: Owner, spec: RunSpec,
                                   config: OperatorConfig) -> dict[str, Any]:
    """NetworkPolicy `<run>-generator`: only the run's pipeline and evaluation pods reach its
    vLLM server.

    Created when the operator runs with `networkPolicy.enabled` (SPA_OPERATOR_NETWORK_POLICY);
    it needs a CNI that enforces NetworkPolicy. Other ingress to the generator pods is denied.
    """
    from spa_operator.builders.evaluation import COMPONENT as EVALUATION
    from spa_operator.builders.pipeline import COMPONENT as PIPELINE

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(owner, names.generator_service(owner.name), COMPONENT, None,
                                   spec),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner, COMPONENT)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": selector_labels(owner, client)}}
                         for client in (PIPELINE, EVALUATION)],
                "ports": [{"protocol": "TCP", "port": config.vllm_port}],
            }],
        },
    }
