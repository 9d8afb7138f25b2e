"""Pieces shared by the run's Jobs: the stage command, the spec volume, the Job shell."""

from __future__ import annotations

import json
import posixpath
from typing import Any

from spa_core.spec import RunSpec
from spa_core.termination import TERMINATION_LOG_ENV, USAGE_ERROR_EXIT_CODE
from spa_operator import names
from spa_operator.builders.common import (
    HF_TOKEN_ENV,
    OPENAI_API_KEY_ENV,
    Owner,
    Storage,
    child_metadata,
    job_spec_limits,
    pod_labels,
    secret_env,
)
from spa_operator.builders.pod_template import apply_pod_templates
from spa_operator.config import OperatorConfig

__all__ = ["USAGE_ERROR_EXIT_CODE", "build_job", "client_env", "client_resources",
           "pod_failure_policy", "spec_volume", "stage_args", "stage_env"]


def stage_args(stage: str, spec_file: str, st: Storage, iteration: int) -> list[str]:
    """`spa <stage> SPEC --run-dir DIR --iteration N`, the command every executor runs."""
    return ["spa", stage, spec_file, "--run-dir", st.run_dir, "--iteration", str(iteration)]


def spec_volume(owner: Owner, config: OperatorConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's spec ConfigMap as a read-only volume at `config.spec_mount`."""
    return (
        {"name": "spec", "configMap": {"name": names.spec_config_map(owner.name)}},
        {"name": "spec", "mountPath": config.spec_mount, "readOnly": True},
    )


def spec_path(config: OperatorConfig, key: str) -> str:
    return posixpath.join(config.spec_mount, key)


#: Where Kubernetes reads a container's termination message (its default path).
TERMINATION_LOG = "/dev/termination-log"


def stage_env(spec: RunSpec) -> list[dict[str, Any]]:
    """Environment of every stage container: Hub token (gated models and datasets), and
    where the stage leaves its counts or its error for the operator to read."""
    return [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": TERMINATION_LOG_ENV, "value": TERMINATION_LOG},
        *secret_env(HF_TOKEN_ENV, spec.model.token_secret_ref),
    ]


def client_env(spec: RunSpec) -> list[dict[str, Any]]:
    """A stage that talks to the generator Service: `stage_env` and vLLM's API key."""
    return [*stage_env(spec),
            *secret_env(OPENAI_API_KEY_ENV, spec.generator.api_key_secret_ref)]


def client_resources(config: OperatorConfig) -> dict[str, Any]:
    """A vLLM client's container (no weights, no GPU): the pipeline's CPU and memory."""
    return {"requests": {"cpu": config.pipeline_cpu, "memory": config.pipeline_memory},
            "limits": {"memory": config.pipeline_memory}}


def pod_failure_policy() -> dict[str, Any]:
    """Disruptions (preemption, eviction, a drained or lost node) are retried without counting
    against backoffLimit; a usage error fails the Job (reason PodFailurePolicy) at once."""
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob",
         "onExitCodes": {"operator": "In", "values": [USAGE_ERROR_EXIT_CODE]}},
    ]}


def build_job(owner: Owner, spec: RunSpec, name: str, component: str, iteration: int,
              pod_spec: dict[str, Any], **job_fields: Any) -> dict[str, Any]:
    """A batch/v1 Job owned by the run, with the run's retry and deadline settings.

    A replacement pod starts only once its predecessor has stopped (`podReplacementPolicy:
    Failed`): two pods of one index never overlap on the run's files or a rendezvous name.
    The run's `podTemplate` overrides for `component` are merged over the pod.
    """
    template = apply_pod_templates(
        {"metadata": {"labels": pod_labels(owner, component, iteration)},
         "spec": {"restartPolicy": "Never", **pod_spec}},
        spec, component)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(owner, name, component, iteration, spec, workload=True),
        "spec": {
            **job_spec_limits(spec),
            "podFailurePolicy": pod_failure_policy(),
            "podReplacementPolicy": "Failed",
            **job_fields,
            "template": template,
        },
    }
    return json.loads(json.dumps(job))  # no sub-object shared between containers
