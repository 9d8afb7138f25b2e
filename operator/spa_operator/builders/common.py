"""What every child shares: owner reference, labels, placement, storage and secret wiring."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from spa_core.spec import API_VERSION, RunSpec, SecretKeyRef, WorkloadSpec
from spa_operator.config import OperatorConfig
from spa_operator.errors import ClusterSpecError

__all__ = [
    "COMPONENT_LABEL",
    "ITERATION_LABEL",
    "QUEUE_LABEL",
    "RUN_LABEL",
    "Owner",
    "Storage",
    "child_metadata",
    "container_defaults",
    "job_spec_limits",
    "model_cache",
    "pod_labels",
    "pod_placement",
    "pod_security_context",
    "resources",
    "secret_env",
    "selector_labels",
    "shm_volume",
    "storage",
    "training_gpus",
]

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RUN_LABEL = "alignment.spa.dev/run"
ITERATION_LABEL = "alignment.spa.dev/iteration"
COMPONENT_LABEL = "app.kubernetes.io/component"
HF_TOKEN_ENV = "HF_TOKEN"
#: Read by spa_core's openai backend.
OPENAI_API_KEY_ENV = "SPA_OPENAI_API_KEY"
#: The evaluation's external judge reads its API key here (spa_core.stages.evaluate).
JUDGE_API_KEY_ENV = "SPA_JUDGE_API_KEY"


@dataclass(frozen=True)
class Owner:
    """The SPAAlignmentRun that owns a child (its controller)."""

    name: str
    namespace: str
    uid: str
    kind: str = "SPAAlignmentRun"
    api_version: str = API_VERSION

    def reference(self) -> dict[str, Any]:
        """An ownerReference: deleting the run garbage-collects the child."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector_labels(owner: Owner, component: str, iteration: int | None = None) -> dict[str, str]:
    """The labels that identify a child's pods (used in selectors; never change)."""
    labels = {RUN_LABEL: owner.name, COMPONENT_LABEL: component}
    if iteration is not None:
        labels[ITERATION_LABEL] = str(iteration)
    return labels


def pod_labels(owner: Owner, component: str, iteration: int | None = None) -> dict[str, str]:
    """Every label of a child object or pod."""
    return {
        "app.kubernetes.io/name": "spa",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/managed-by": "spa-operator",
        **selector_labels(owner, component, iteration),
    }


def child_metadata(owner: Owner, name: str, component: str, iteration: int | None, spec: RunSpec,
                   *, workload: bool = False) -> dict[str, Any]:
    """metadata of a child: name, namespace, labels, the run as controller owner.

    Workloads (Jobs, Deployments) also carry the Kueue queue label, so Kueue admits them.
    """
    labels = pod_labels(owner, component, iteration)
    if workload and spec.scheduling.queue_name:
        labels[QUEUE_LABEL] = spec.scheduling.queue_name
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner.reference()],
    }


def pod_placement(spec: RunSpec, workload: WorkloadSpec) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and priority class of a pod spec.

    A field set on the workload replaces the run-wide one (no merging: what you see is what
    the pod gets).
    """
    sched = spec.scheduling
    node_selector = workload.node_selector if workload.node_selector is not None \
        else sched.node_selector
    tolerations = workload.tolerations if workload.tolerations is not None else sched.tolerations
    affinity = workload.affinity if workload.affinity is not None else sched.affinity
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = dict(node_selector)
    if tolerations:
        out["tolerations"] = [dict(t) for t in tolerations]
    if affinity:
        out["affinity"] = dict(affinity)
    if sched.priority_class_name:
        out["priorityClassName"] = sched.priority_class_name
    return out


def job_spec_limits(spec: RunSpec) -> dict[str, Any]:
    """backoffLimit and activeDeadlineSeconds of a child Job.

    No ttlSecondsAfterFinished: a finished child stays as long as its run (whose own TTL is
    `scheduling.ttlSecondsAfterFinished`), so its pods' logs and messages stay readable."""
    sched = spec.scheduling
    out: dict[str, Any] = {"backoffLimit": sched.backoff_limit}
    if sched.active_deadline_seconds is not None:
        out["activeDeadlineSeconds"] = sched.active_deadline_seconds
    return out


def secret_env(name: str, ref: SecretKeyRef | None) -> list[dict[str, Any]]:
    """An env var from a Secret key (secrets are only ever passed by reference)."""
    if ref is None:
        return []
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def container_defaults(config: OperatorConfig) -> dict[str, Any]:
    """Settings shared by every container: pull policy; failure output as termination message;
    no privilege (the restricted Pod Security Standard)."""
    return {
        "imagePullPolicy": config.image_pull_policy,
        # The last log lines become the termination message when a stage fails, so the
        # run's status can say why without anyone reading pod logs.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }


def pod_security_context(config: OperatorConfig) -> dict[str, Any]:
    """Every pod runs as the images' non-root user, under the runtime's default seccomp
    profile, with that user's group as fsGroup: the kubelet makes a fresh root-owned volume
    (most block CSI drivers hand one out) group-writable, once (OnRootMismatch)."""
    uid = config.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"}}


def resources(gpus: int, cpu: str, memory: str) -> dict[str, Any]:
    """A GPU container's resources: GPUs requested and limited; CPU and memory requested only
    (loading weights peaks above the steady state; a podTemplate override can add limits)."""
    requests = {"cpu": cpu, "memory": memory}
    if gpus <= 0:
        return {"requests": requests}
    return {"limits": {"nvidia.com/gpu": str(gpus)},
            "requests": {**requests, "nvidia.com/gpu": str(gpus)}}


def model_cache(spec: RunSpec, config: OperatorConfig) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts, env) of `storage.modelCachePvc`: Hugging Face's cache (HF_HOME) on a
    claim every vLLM, training and evaluation pod shares; nothing when unset."""
    claim = spec.storage.model_cache_pvc
    if claim is None:
        return [], [], []
    return ([{"name": "model-cache", "persistentVolumeClaim": {"claimName": claim}}],
            [{"name": "model-cache", "mountPath": config.cache_mount}],
            [{"name": "HF_HOME", "value": posixpath.join(config.cache_mount, "huggingface")}])


def shm_volume(config: OperatorConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """A memory-backed /dev/shm (NCCL and PyTorch dataloaders need more than 64Mi)."""
    return ({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
            {"name": "dshm", "mountPath": "/dev/shm"})


@dataclass(frozen=True)
class Storage:
    """How a pod reaches the run directory."""

    run_dir: str
    """Run directory as the pods see it (path under the PVC mount, or an fsspec URI)."""
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    env_from: list[dict[str, Any]]

    @property
    def is_volume(self) -> bool:
        return bool(self.volumes)

    def read_only_mounts(self) -> list[dict[str, Any]]:
        return [{**m, "readOnly": True} for m in self.mounts]


def training_gpus(spec: RunSpec, field: str = "training.gpusPerNode") -> int:
    """`training.gpusPerNode`, which a cluster run must set: left out, it never means CPUs."""
    gpus = spec.training.gpus_per_node
    if gpus is None:
        raise ClusterSpecError(field, "required in a cluster: the GPUs of each training node "
                               "(the trainer fails at once when fewer are usable), or 0 to "
                               "train on CPUs")
    return gpus


def storage(owner: Owner, spec: RunSpec, config: OperatorConfig) -> Storage:
    """The run directory in pods: on `storage.pvc`, or an fsspec URI (credentials: a Secret)."""
    st = spec.storage
    uri = st.uri.format(name=owner.name)
    env_from = [{"secretRef": {"name": st.credentials_secret_ref}}] \
        if st.credentials_secret_ref else []
    if st.pvc:
        if "://" in uri:
            raise ClusterSpecError("storage.uri", f"{uri!r} is a URI, but storage.pvc is set: "
                                   "give a path inside the volume instead")
        run_dir = posixpath.normpath(posixpath.join(config.storage_mount, uri.lstrip("/")))
        return Storage(
            run_dir=run_dir,
            volumes=[{"name": "storage", "persistentVolumeClaim": {"claimName": st.pvc}}],
            mounts=[{"name": "storage", "mountPath": config.storage_mount}],
            env_from=env_from,
        )
    if "://" not in uri or uri.startswith("file://"):
        raise ClusterSpecError("storage", f"run directory {uri!r} would be lost with the pod: "
                               "set storage.pvc, or storage.uri to an object-store URI "
                               "(s3://, gs://, ...)")
    return Storage(run_dir=uri, volumes=[], mounts=[], env_from=env_from)
