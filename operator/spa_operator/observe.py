"""Reading children's state from what the API server returns (pure functions over dicts)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["JobState", "Trouble", "deployment_available", "evaluation_headline", "job_state",
           "pipeline_counts", "pod_failure", "trouble"]

JobPhase = Literal["Absent", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobState:
    """Where a Job stands, and why when it failed."""

    phase: JobPhase
    reason: str = ""
    message: str = ""


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def job_state(job: dict[str, Any] | None) -> JobState:
    """Absent, Running, Succeeded or Failed (only the Job controller's final conditions count)."""
    if job is None:
        return JobState("Absent")
    if _condition(job, "Complete"):
        return JobState("Succeeded")
    if failed := _condition(job, "Failed"):
        return JobState("Failed", failed.get("reason") or "Failed", failed.get("message") or "")
    return JobState("Running")


def deployment_available(deployment: dict[str, Any] | None) -> bool:
    """Whether every replica of the current template is ready (vLLM answered /health)."""
    if deployment is None:
        return False
    status = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    if status.get("observedGeneration", 0) < meta.get("generation", 1):
        return False
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    return (status.get("availableReplicas") or 0) >= wanted \
        and (status.get("updatedReplicas") or 0) >= wanted


def pod_failure(pods: list[dict[str, Any]]) -> str:
    """The termination message of the first failed container of the most recent failed pod."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    for pod in reversed(failed):
        status = pod["status"]
        for cs in (status.get("initContainerStatuses") or []) + \
                (status.get("containerStatuses") or []):
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode", 0) != 0:
                message = (term.get("message") or "").strip()
                detail = f": {message}" if message else ""
                return f"container {cs.get('name')} exited with {term.get('exitCode')}{detail}"
    return ""


def _terminated_json(pods: list[dict[str, Any]], container: str) -> dict[str, Any]:
    """The JSON a (init) container left as its termination message, if any."""
    for pod in pods:
        status = pod.get("status") or {}
        for cs in (status.get("initContainerStatuses") or []) + \
                (status.get("containerStatuses") or []):
            if cs.get("name") != container:
                continue
            term = (cs.get("state") or {}).get("terminated") or {}
            try:
                data = json.loads(term.get("message") or "")
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return {}


def pipeline_counts(pods: list[dict[str, Any]], container: str) -> dict[str, int]:
    """Counts (prompts, samples, kept, pairs) a stage left as JSON in its termination message."""
    data = _terminated_json(pods, container)
    return {k: int(v) for k, v in data.items()
            if k in {"prompts", "samples", "kept", "pairs"} and isinstance(v, int)}


#: The evaluation numbers the run's status shows.
EVALUATION_KEYS = ("beforePrimary", "afterPrimary", "beforeHelpfulness", "afterHelpfulness",
                   "winRatePrimary", "winRateHelpfulness")


def evaluation_headline(pods: list[dict[str, Any]], container: str) -> dict[str, float]:
    """Before/after means and win rates the evaluate stage left in its termination message."""
    data = _terminated_json(pods, container).get("evaluation") or {}
    return {k: float(v) for k, v in data.items()
            if k in EVALUATION_KEYS and isinstance(v, int | float)} if isinstance(data, dict) \
        else {}


@dataclass(frozen=True)
class Trouble:
    """Why a child does not progress: a reason (CamelCase, the pod's own) and a message."""

    reason: str
    message: str


#: Waiting reasons of a container that will not start by itself.
STUCK_CONTAINER_REASONS = frozenset({
    "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
    "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError",
    "RunContainerError"})


def _pod_trouble(pod: dict[str, Any]) -> Trouble | None:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    name = meta.get("name", "?")
    for cs in (status.get("initContainerStatuses") or []) + \
            (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_CONTAINER_REASONS:
            detail = (waiting.get("message") or "").strip()
            return Trouble(waiting["reason"], f"pod {name}, container {cs.get('name')}: "
                           f"{waiting['reason']}" + (f": {detail}" if detail else ""))
    scheduled = next((c for c in status.get("conditions") or []
                      if c.get("type") == "PodScheduled"), None)
    if scheduled and scheduled.get("status") == "False" and \
            scheduled.get("reason") in ("Unschedulable", "SchedulingGated"):
        detail = (scheduled.get("message") or "").strip()
        return Trouble(scheduled["reason"], f"pod {name} is not scheduled"
                       + (f": {detail}" if detail else f" ({scheduled['reason']})"))
    return None


def trouble(jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> Trouble | None:
    """The first thing that keeps the run's children from progressing on their own: a Job
    suspended (Kueue has not admitted it), a pod that cannot be scheduled (no node has the
    GPUs, an unbound PersistentVolumeClaim, a scheduling gate), a container that cannot start
    (an image that cannot be pulled, a missing Secret) or keeps crashing. None when all is
    moving."""
    for job in jobs:
        if job_state(job).phase == "Running" and (job.get("spec") or {}).get("suspend"):
            name = (job.get("metadata") or {}).get("name", "?")
            queue = ((job.get("metadata") or {}).get("labels") or {}).get(
                "kueue.x-k8s.io/queue-name")
            return Trouble("Suspended", f"Job {name} is suspended"
                           + (f": waiting for Kueue to admit it (queue {queue})" if queue
                              else ""))
    pods = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name") or "")
    return next((t for p in pods if (t := _pod_trouble(p)) is not None), None)
