"""One reconciliation of an SPAAlignmentRun: observe children, close the gap, report status."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from spa_core.layout import CHECKPOINT, PAIRS, REPORT_DIR, REPORT_HTML, iteration_dir
from spa_core.spec import API_VERSION, RunSpec, SpecError, parse_run
from spa_operator import names
from spa_operator.builders import WORKLOADS, Owner, first_workloads, storage, training_gpus
from spa_operator.builders.common import COMPONENT_LABEL
from spa_operator.cluster import Cluster, Rejected
from spa_operator.conditions import set_condition
from spa_operator.config import OperatorConfig
from spa_operator.crd import RUN_KIND
from spa_operator.errors import ClusterSpecError, InvalidObject
from spa_operator.observe import (
    Trouble,
    evaluation_headline,
    job_state,
    pipeline_counts,
    pod_failure,
    trouble,
)
from spa_operator.plan import Progress, Step, plan, with_deadlines
from spa_operator.timestamps import parse_time, stamp

__all__ = ["RETRY_ANNOTATION", "RunObject", "reconcile_run"]

#: post_event(type, reason, message)
PostEvent = Callable[[str, str, str], None]
TERMINAL = {"Succeeded", "Failed"}
#: Set (to any new value) on a failed run to run it again from its finished stages:
#: `kubectl annotate spar NAME alignment.spa.dev/retry="$(date +%s)" --overwrite`.
RETRY_ANNOTATION = "alignment.spa.dev/retry"


@dataclass(frozen=True)
class RunObject:
    """What the reconciler needs from the custom resource."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any]
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> Owner:
        return Owner(name=self.name, namespace=self.namespace, uid=self.uid)


def _parse(run: RunObject) -> RunSpec:
    doc = {"apiVersion": API_VERSION, "kind": "SPAAlignmentRun",
           "metadata": {"name": run.name, "namespace": run.namespace}, "spec": run.spec}
    return parse_run(doc, source=f"{run.namespace}/{run.name}").spec


def _failed_status(run: RunObject, reason: str, message: str, now: datetime) -> dict[str, Any]:
    conditions = set_condition(run.status.get("conditions") or [], "Ready", "False", reason,
                               message, run.generation, now)
    return {"phase": "Failed", "message": message, "conditions": conditions,
            "observedGeneration": run.generation,
            "completionTime": run.status.get("completionTime") or stamp(now)}


def _expired(run: RunObject, now: datetime) -> bool:
    """Whether a finished run has outlived its `scheduling.ttlSecondsAfterFinished`."""
    if "ttlSecondsAfterFinished" not in (run.spec.get("scheduling") or {}):
        return False
    try:
        ttl = _parse(run).scheduling.ttl_seconds_after_finished
    except SpecError:  # a run failed for its spec keeps it, and the status that says why
        return False
    finished = run.status.get("completionTime")
    return ttl is not None and finished is not None and \
        parse_time(finished) + timedelta(seconds=ttl) <= now


def _retry(run: RunObject, cluster: Cluster, post_event: PostEvent, token: str,
           now: datetime) -> dict[str, Any]:
    """Run a failed run again from its finished stages: its failed Jobs go (a new attempt
    gets a fresh restart budget), and the next reconciliation carries on from the status."""
    status = run.status
    if _ready_reason(status) == "InvalidSpec":
        message = (f"not retried ({RETRY_ANNOTATION}={token}): the spec itself is invalid and "
                   "a run's spec cannot change; create a new run (reusing storage.uri keeps "
                   "what finished)")
        post_event("Warning", "RetryRefused", message)
        return {"retriedFor": token}
    failed = [name for name, job in cluster.children(run.namespace, run.name).jobs.items()
              if job_state(job).phase == "Failed"]
    for name in failed:
        cluster.delete(run.namespace, "Job", name)
    retries = (status.get("retries") or 0) + 1
    message = (f"retry {retries} ({RETRY_ANNOTATION}={token}) from the finished stages "
               f"{status.get('finishedStages') or []} of iteration {status.get('iteration') or 0}"
               + (f"; deleted the failed Job(s) {', '.join(sorted(failed))}" if failed else ""))
    post_event("Normal", "Retrying", message)
    conditions = set_condition(status.get("conditions") or [], "Ready", "False", "Retrying",
                               message, run.generation, now)
    return {"phase": "Running", "message": message, "conditions": conditions,
            "retries": retries, "retriedFor": token, "trainingRestarts": 0,
            "completionTime": None, "stageStartTime": stamp(now), "lastRetryTime": stamp(now)}


def _ready_reason(status: dict[str, Any]) -> str | None:
    return next((c.get("reason") for c in status.get("conditions") or []
                 if c.get("type") == "Ready"), None)


def reconcile_run(run: RunObject, cluster: Cluster, config: OperatorConfig,
                  post_event: PostEvent, now: datetime | None = None) -> dict[str, Any]:
    """Bring the run's children one step closer to its spec; return the status to write.

    Raises InvalidObject (with the status to write) when the spec can never run.
    """
    now = now or datetime.now(UTC)
    status = run.status
    if status.get("phase") in TERMINAL and status.get("observedGeneration") == run.generation:
        token = run.annotations.get(RETRY_ANNOTATION)
        if status.get("phase") == "Failed" and token and token != status.get("retriedFor"):
            return _retry(run, cluster, post_event, token, now)
        if _expired(run, now):
            post_event("Normal", "Expired", "deleting the finished run and its children "
                       "(scheduling.ttlSecondsAfterFinished); its artifacts stay on storage")
            cluster.delete(run.namespace, RUN_KIND, run.name)
        return {}
    try:
        spec = _parse(run)
        storage(run.owner, spec, config)  # cluster-only checks, before anything is created
        training_gpus(spec)
        if status.get("observedGeneration") != run.generation and \
                (refusal := _admission(run, spec, cluster, config)) is not None:
            _invalid(run, refusal, post_event, now)
        children = cluster.children(run.namespace, run.name)
        step = plan(run.owner, spec, config, Progress.from_status(status), children)
    except (SpecError, ClusterSpecError) as exc:
        _invalid(run, str(exc), post_event, now)
    stuck = None
    if step.phase == "Running" and spec.storage.pvc and \
            cluster.claim(run.namespace, spec.storage.pvc) is None:
        # Nothing is created (no GPU is held) until the run's volume exists.
        stuck = Trouble("ClaimNotFound", f"PersistentVolumeClaim {spec.storage.pvc} "
                        f"(storage.pvc) does not exist in namespace {run.namespace}")
        step = replace(step, phase="Pending", reason="WaitingForStorage",
                       message=f"waiting for PersistentVolumeClaim {spec.storage.pvc}",
                       ensure=[], delete=[])
    elif step.phase == "Running":
        stuck = trouble(list(children.jobs.values()), list(children.pods.values()))
    same_stage = (status.get("stage"), status.get("iteration")) == (step.stage, step.iteration)
    # spec.activeDeadlineSeconds counts from the start, or from the last retry.
    started = parse_time(status.get("lastRetryTime") or status.get("startTime"))
    step = with_deadlines(step, run.owner, spec, children, started,
                          (same_stage and parse_time(status.get("stageStartTime"))) or now,
                          now, stuck)

    for obj in step.ensure:
        try:
            created = cluster.create_if_absent(obj)
        except Rejected as exc:
            _invalid(run, _rejected(obj, spec, str(exc)), post_event, now)
        if created:
            post_event("Normal", "Created", f"created {obj['kind']} {obj['metadata']['name']}")
    for kind, name in step.delete:
        if cluster.delete(run.namespace, kind, name):
            post_event("Normal", "Deleted", f"deleted {kind} {name}")
    new = _status(run, spec, step, stuck if step.phase in ("Running", "Pending") else None,
                  cluster, config, post_event, now)
    if token := run.annotations.get(RETRY_ANNOTATION):
        new["retriedFor"] = token  # set before a failure, it is no request to retry that one
    return new


def _invalid(run: RunObject, message: str, post_event: PostEvent, now: datetime) -> NoReturn:
    post_event("Warning", "InvalidSpec", message)
    raise InvalidObject(message, _failed_status(run, "InvalidSpec", message, now)) from None


def _rejected(obj: dict[str, Any], spec: RunSpec, message: str) -> str:
    """What to tell the user when the API server refused one of the run's objects."""
    workload = (obj["metadata"].get("labels") or {}).get(COMPONENT_LABEL, "")
    sched = spec.scheduling
    overrides = []
    if obj["kind"] in ("Job", "Deployment"):
        if sched.pod_template is not None:
            overrides.append("spec.scheduling.podTemplate")
        if workload in WORKLOADS and getattr(sched, workload).pod_template is not None:
            overrides.append(f"spec.scheduling.{workload}.podTemplate")
    hint = f" (check {' and '.join(overrides)})" if overrides else ""
    return (f"the API server rejects the run's {workload} {obj['kind']} "
            f"{obj['metadata']['name']}{hint}: {message}")


def _admission(run: RunObject, spec: RunSpec, cluster: Cluster,
               config: OperatorConfig) -> str | None:
    """Before anything is created: the API server validates the run's workloads as they will
    be created (a dry run, podTemplate overrides merged in). Its refusal, or None."""
    for obj in first_workloads(run.owner, spec, config).values():
        try:
            cluster.validate(obj)
        except Rejected as exc:
            return _rejected(obj, spec, str(exc))
    return None


def _status(run: RunObject, spec: RunSpec, step: Step, stuck: Trouble | None, cluster: Cluster,
            config: OperatorConfig, post_event: PostEvent, now: datetime) -> dict[str, Any]:
    old = run.status
    message = step.message
    if step.failed_job:
        if detail := pod_failure(cluster.job_pods(run.namespace, step.failed_job)):
            message = f"{message}; {detail}"
    if stuck is not None:
        message = f"{message}; {stuck.message}"
    ready = {"Succeeded": "True", "Failed": "False"}.get(step.phase, "False")
    conditions = set_condition(old.get("conditions") or [], "Ready", ready, step.reason, message,
                               run.generation, now)
    # kstatus' Stalled (what Flux and Argo CD health checks read): a child that will not
    # progress by itself, in the pod's own words.
    was_stalled = next((c for c in old.get("conditions") or []
                        if c.get("type") == "Stalled" and c.get("status") == "True"), None)
    conditions = set_condition(conditions, "Stalled", str(stuck is not None),
                               stuck.reason if stuck else
                               "Progressing" if step.phase == "Running" else step.phase,
                               stuck.message if stuck else "", run.generation, now)
    if stuck is not None and (was_stalled is None or was_stalled.get("reason") != stuck.reason):
        post_event("Warning", stuck.reason, stuck.message)
    conditions = set_condition(conditions, "Suspended", str(step.phase == "Suspended"),
                               step.reason if step.phase == "Suspended" else "NotSuspended",
                               message if step.phase == "Suspended" else "", run.generation, now)
    new: dict[str, Any] = {
        "observedGeneration": run.generation,
        "phase": step.phase,
        "stage": step.stage,
        "iteration": step.iteration,
        "message": message,
        "conditions": conditions,
        "finishedStages": step.finished,
        "trainingRestarts": step.training_restarts or 0,
        "artifacts": _artifacts(run, spec, step, config),
    }
    if not old.get("startTime") and step.phase != "Suspended":
        new["startTime"] = stamp(now)
    if step.phase in TERMINAL:
        new["completionTime"] = old.get("completionTime") or stamp(now)
    counts = _counts(run, step, cluster)
    if counts is not None:
        new["counts"] = counts
    if step.stage == "Done" and spec.evaluation.enabled and not old.get("evaluation"):
        job = names.evaluation_job(run.name, step.iteration)
        if headline := evaluation_headline(cluster.job_pods(run.namespace, job), "evaluate"):
            new["evaluation"] = headline

    moved = (old.get("phase"), old.get("stage"), old.get("iteration")) != \
        (step.phase, step.stage, step.iteration)
    new["stageStartTime"] = stamp(now) if moved or not old.get("stageStartTime") \
        else old["stageStartTime"]
    if moved or step.failed_job:
        kind = "Warning" if step.failed_job or step.phase == "Failed" else "Normal"
        post_event(kind, step.reason, message)
    return new


def _counts(run: RunObject, step: Step, cluster: Cluster) -> dict[str, int] | None:
    """Counts of the iteration's pipeline, read once from its `pairs` container's message."""
    if step.stage not in {"Training", "Evaluation", "Done"}:
        return None
    old = run.status.get("counts")
    if old and run.status.get("iteration") == step.iteration:
        return None
    job = names.pipeline_job(run.name, step.iteration)
    return pipeline_counts(cluster.job_pods(run.namespace, job), "pairs") or None


def _artifacts(run: RunObject, spec: RunSpec, step: Step,
               config: OperatorConfig) -> dict[str, str]:
    root = storage(run.owner, spec, config).run_dir
    out = {"runDir": root}
    paired = {"Training", "Evaluation", "Done"}
    done = step.iteration if step.stage in paired else step.iteration - 1
    if done >= 0:
        out["pairs"] = posixpath.join(root, iteration_dir(done), PAIRS)
    trained = step.iteration if step.stage in {"Evaluation", "Done"} else step.iteration - 1
    if trained >= 0:
        out["model"] = posixpath.join(root, iteration_dir(trained), CHECKPOINT)
    evaluated = step.iteration if step.stage == "Done" else step.iteration - 1
    if spec.evaluation.enabled and evaluated >= 0:
        out["report"] = posixpath.join(root, REPORT_DIR, REPORT_HTML)
    return out

