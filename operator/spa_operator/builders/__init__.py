"""Pure manifest builders: a run's spec in, Kubernetes objects (dicts) out.

Handlers only apply what these return; nothing here talks to the API server.
"""

from spa_operator.builders.common import Owner, Storage, storage, training_gpus
from spa_operator.builders.evaluation import build_evaluation_job
from spa_operator.builders.generator import (
    build_generator_deployment,
    build_generator_network_policy,
    build_generator_service,
    policy_location,
)
from spa_operator.builders.pipeline import PIPELINE_STAGES, build_pipeline_job
from spa_operator.builders.spec_config_map import build_spec_config_map, generator_url
from spa_operator.builders.training import (
    build_training_config_map,
    build_training_job,
    build_training_service,
)

__all__ = [
    "PIPELINE_STAGES",
    "Owner",
    "Storage",
    "build_evaluation_job",
    "build_generator_deployment",
    "build_generator_network_policy",
    "build_generator_service",
    "build_pipeline_job",
    "build_spec_config_map",
    "build_training_config_map",
    "build_training_job",
    "build_training_service",
    "generator_url",
    "policy_location",
    "storage",
    "training_gpus",
]
