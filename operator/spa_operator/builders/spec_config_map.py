"""The ConfigMap holding the run's YAML, as the stage commands in the pods read it."""

from __future__ import annotations

from typing import Any

import yaml

from spa_core.spec import API_VERSION, RunSpec
from spa_operator import names
from spa_operator.builders.common import Owner, child_metadata, storage
from spa_operator.config import OperatorConfig

__all__ = ["PIPELINE_SPEC_KEY", "TRAINER_SPEC_KEY", "build_spec_config_map", "generator_url",
           "served_model_name"]

#: Spec for the pipeline stages: the openai backend, pointed at the generator Service.
PIPELINE_SPEC_KEY = "run.yaml"
#: Spec for training and evaluation: models in-process (the transformers backend).
TRAINER_SPEC_KEY = "run-local.yaml"


def generator_url(owner: Owner, config: OperatorConfig) -> str:
    """Base URL of the generator Service's OpenAI API."""
    service = names.generator_service(owner.name)
    return f"http://{service}.{owner.namespace}.svc:{config.vllm_port}/v1"


def served_model_name(spec: RunSpec) -> str:
    """The model name vLLM serves under, whatever checkpoint it loaded."""
    return spec.generator.served_model_name or spec.model.name


def _document(owner: Owner, spec: RunSpec, generator: dict[str, Any], run_dir: str) -> str:
    data = spec.model_dump(mode="json", by_alias=True, exclude={"suspend", "scheduling"})
    data["generator"] = {**data["generator"], **generator}
    data["storage"] = {**data["storage"], "uri": run_dir}
    doc = {"apiVersion": API_VERSION, "kind": "SPAAlignmentRun",
           "metadata": {"name": owner.name, "namespace": owner.namespace}, "spec": data}
    return yaml.safe_dump(doc, sort_keys=False)


def build_spec_config_map(owner: Owner, spec: RunSpec, config: OperatorConfig) -> dict[str, Any]:
    """ConfigMap `<run>-spec`: the run with every default filled in and cluster wiring applied."""
    run_dir = storage(owner, spec, config).run_dir
    pipeline = {"backend": "openai", "url": generator_url(owner, config),
                "servedModelName": served_model_name(spec)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, names.spec_config_map(owner.name), "spec", None, spec),
        "data": {
            PIPELINE_SPEC_KEY: _document(owner, spec, pipeline, run_dir),
            TRAINER_SPEC_KEY: _document(owner, spec, {"backend": "transformers"}, run_dir),
        },
    }
