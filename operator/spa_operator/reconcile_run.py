"""One reconciliation of an SPAAlignmentRun: observe children, close the gap, report status."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from spa_core.spec import API_VERSION, RunSpec, SpecError, parse_run
from spa_core.stages.context import CHECKPOINT, iteration_dir
from spa_operator import names
from spa_operator.builders import Owner, storage
from spa_operator.cluster import Cluster
from spa_operator.conditions import set_condition
from spa_operator.config import OperatorConfig
from spa_operator.errors import ClusterSpecError, InvalidObject
from spa_operator.observe import evaluation_headline, pipeline_counts, pod_failure
from spa_operator.plan import Step, plan
from spa_operator.timestamps import stamp

__all__ = ["RunObject", "reconcile_run"]

#: post_event(type, reason, message)
PostEvent = Callable[[str, str, str], None]
TERMINAL = {"Succeeded", "Failed"}


@dataclass(frozen=True)
class RunObject:
    """What the reconciler needs from the custom resource."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: dict[str, Any]
    status: dict[str, Any]

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


def reconcile_run(run: RunObject, cluster: Cluster, config: OperatorConfig,
                  post_event: PostEvent, now: datetime | None = None) -> dict[str, Any]:
    """Bring the run's children one step closer to its spec; return the status to write.

    Raises InvalidObject (with the status to write) when the spec can never run.
    """
    now = now or datetime.now(UTC)
    status = run.status
    if status.get("phase") in TERMINAL and status.get("observedGeneration") == run.generation:
        return {}
    try:
        spec = _parse(run)
        storage(run.owner, spec, config)  # cluster-only checks, before anything is created
        step = plan(run.owner, spec, config, status.get("iteration") or 0,
                    cluster.children(run.namespace, run.name))
    except (SpecError, ClusterSpecError) as exc:
        message = str(exc)
        post_event("Warning", "InvalidSpec", message)
        raise InvalidObject(message, _failed_status(run, "InvalidSpec", message, now)) from None

    for obj in step.ensure:
        if cluster.create_if_absent(obj):
            post_event("Normal", "Created", f"created {obj['kind']} {obj['metadata']['name']}")
    for kind, name in step.delete:
        if cluster.delete(run.namespace, kind, name):
            post_event("Normal", "Deleted", f"deleted {kind} {name}")
    return _status(run, spec, step, cluster, config, post_event, now)


def _status(run: RunObject, spec: RunSpec, step: Step, cluster: Cluster, config: OperatorConfig,
            post_event: PostEvent, now: datetime) -> dict[str, Any]:
    old = run.status
    message = step.message
    if step.failed_job:
        if detail := pod_failure(cluster.job_pods(run.namespace, step.failed_job)):
            message = f"{message}; {detail}"
    ready = {"Succeeded": "True", "Failed": "False"}.get(step.phase, "False")
    conditions = set_condition(old.get("conditions") or [], "Ready", ready, step.reason, message,
                               run.generation, now)
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
        "artifacts": _artifacts(run, spec, step, config),
    }
    if not old.get("startTime") and step.phase != "Suspended":
        new["startTime"] = stamp(now)
    if step.phase in TERMINAL:
        new["completionTime"] = old.get("completionTime") or stamp(now)
    if step.training_restarts is not None:
        new["trainingRestarts"] = step.training_restarts
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
        kind = "Warning" if step.failed_job else "Normal"
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
        out["pairs"] = posixpath.join(root, iteration_dir(done), "pairs", "pairs.parquet")
    trained = step.iteration if step.stage in {"Evaluation", "Done"} else step.iteration - 1
    if trained >= 0:
        out["model"] = posixpath.join(root, iteration_dir(trained), CHECKPOINT)
    evaluated = step.iteration if step.stage == "Done" else step.iteration - 1
    if spec.evaluation.enabled and evaluated >= 0:
        out["report"] = posixpath.join(root, "report", "report.html")
    return out

