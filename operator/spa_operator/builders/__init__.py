"""Pure manifest builders: a run's spec in, Kubernetes objects (dicts) out.

Handlers only apply what these return; nothing here talks to the API server.
"""

from typing import Any

from spa_core.spec import RunSpec
from spa_operator.builders.common import Owner, Storage, storage, training_gpus
from spa_operator.builders.evaluation import build_evaluation_job, build_trained_answers_job
from spa_operator.builders.generator import (
    build_generator_deployment,
    build_generator_network_policy,
    build_generator_service,
    policy_location,
)
from spa_operator.builders.pipeline import PIPELINE_STAGES, build_pipeline_job
from spa_operator.builders.pod_template import WORKLOADS, apply_pod_templates
from spa_operator.builders.spec_config_map import build_spec_config_map, generator_url
from spa_operator.builders.training import (
    build_training_config_map,
    build_training_job,
    build_training_service,
)
from spa_operator.config import OperatorConfig

__all__ = [
    "PIPELINE_STAGES",
    "WORKLOADS",
    "Owner",
    "Storage",
    "apply_pod_templates",
    "build_evaluation_job",
    "build_generator_deployment",
    "build_generator_network_policy",
    "build_generator_service",
    "build_pipeline_job",
    "build_spec_config_map",
    "build_trained_answers_job",
    "build_training_config_map",
    "build_training_job",
    "build_training_service",
    "first_workloads",
    "generator_url",
    "policy_location",
    "storage",
    "training_gpus",
]


def first_workloads(owner: Owner, spec: RunSpec, config: OperatorConfig) -> dict[str, dict[str, Any]]:
    """The first iteration's Deployment and Jobs, by workload: what the API server is asked
    to validate (a dry-run create) before a run starts."""
    out = {
        "generator": build_generator_deployment(owner, spec, config, 0),
        "pipeline": build_pipeline_job(owner, spec, config, 0),
        "training": build_training_job(owner, spec, config, 0),
    }
    if spec.evaluation.enabled:
        out["trained-answers"] = build_trained_answers_job(owner, spec, config, 0)
        out["evaluation"] = build_evaluation_job(owner, spec, config, 0)
    return out
