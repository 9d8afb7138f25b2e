"""The CRDs generated from the pydantic models: structural, bounded, validated, up to date."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from spa_core.spec import RunSpec
from spa_operator import crd, names
from spa_operator.schema import UnsupportedSchema, structural_schema

CRD_DIR = Path(__file__).resolve().parents[2] / "operator" / "crds"
RUN = crd.run_crd()
SCHEDULE = crd.schedule_crd()


def schema_of(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    for part in path.split("."):
        schema = schema["items"] if part == "[]" else schema["properties"][part]
    return schema


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}.*")


def test_checked_in_crds_are_up_to_date() -> None:
    assert crd.stale(CRD_DIR) == [], "operator/crds is stale: run `make crds`"
    chart_crds = CRD_DIR.parents[1] / "charts" / "spa-operator" / "crds"
    assert crd.stale(chart_crds) == [], "the chart's crds/ is stale: run `make crds`"


def test_check_command_fails_on_a_stale_crd(tmp_path: Path) -> None:
    crd.write(tmp_path)
    assert crd.main(["--check", str(tmp_path)]) == 0
    path = tmp_path / next(iter(crd.CRD_FILES))
    path.write_text(path.read_text().replace("maximum: 16", "maximum: 17", 1))
    assert crd.main(["--check", str(tmp_path)]) == 1


@pytest.mark.parametrize(("obj", "kind", "short"), [(RUN, "SPAAlignmentRun", "spar"),
                                                    (SCHEDULE, "SPAAlignmentSchedule", "spas")])
def test_names_group_version_and_status_subresource(obj: dict[str, Any], kind: str,
                                                    short: str) -> None:
    spec = obj["spec"]
    assert spec["group"] == "alignment.spa.dev"
    assert spec["names"]["kind"] == kind and spec["names"]["shortNames"] == [short]
    assert obj["metadata"]["name"] == f"{spec['names']['plural']}.alignment.spa.dev"
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_run_printer_columns() -> None:
    columns = {c["name"]: c for c in RUN["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Iteration"]["jsonPath"] == ".status.iteration"
    assert columns["Pairs"]["jsonPath"] == ".status.counts.pairs"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == {"name": "Age", "type": "date",
                              "jsonPath": ".metadata.creationTimestamp"}


@pytest.mark.parametrize("obj", [RUN, SCHEDULE], ids=["run", "schedule"])
def test_schema_is_structural(obj: dict[str, Any]) -> None:
    for path, node in nodes(schema_of(obj)):
        assert "type" in node, f"{path}: no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "const", "title", "default"} & set(node), \
            path
        if node["type"] == "object" and path.count(".") > 1 and path != ".metadata":
            assert ("properties" in node or "additionalProperties" in node
                    or node.get("x-kubernetes-preserve-unknown-fields")), path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key, True) is True, f"{path}: {key} must be a boolean"


@pytest.mark.parametrize("obj", [RUN, SCHEDULE], ids=["run", "schedule"])
def test_unknown_fields_are_preserved_only_in_free_form_kubernetes_objects(
        obj: dict[str, Any]) -> None:
    preserved = {path.split(".", 2)[-1] for path, node in nodes(schema_of(obj))
                 if node.get("x-kubernetes-preserve-unknown-fields")}
    prefix = "runTemplate." if obj is SCHEDULE else ""
    # A pod template override's spec is a partial PodSpec, which the API server validates
    # once merged (a dry-run create).
    free_form = ("tolerations[]", "affinity", "podTemplate.spec")
    allowed = {f"{prefix}scheduling.{p}" for p in free_form}
    allowed |= {f"{prefix}scheduling.{w}.{p}" for w in ("generator", "pipeline", "training",
                                                       "evaluation")
                for p in free_form}
    assert preserved == allowed


def test_bounds_enums_patterns_and_descriptions_are_kept() -> None:
    spec = at(schema_of(RUN), "spec")
    n = at(spec, "sampling.numSamples")
    assert (n["type"], n["minimum"], n["maximum"]) == ("integer", 2, 16)
    assert n["description"].startswith("Candidate responses per prompt")
    assert "Default: 3." in n["description"]
    rho = at(spec, "denoising.rho")
    assert (rho["minimum"], rho["exclusiveMinimum"], rho["maximum"]) == (0, True, 1e6)
    assert at(spec, "training.loss")["enum"] == ["spa", "simpo", "dpo", "sft"]
    assert at(spec, "objectives.secondary")["enum"] == ["helpfulness"]
    assert at(spec, "scheduling.queueName")["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert at(spec, "scheduling.queueName")["maxLength"] == 63
    assert at(spec, "model.tokenSecretRef")["required"] == ["name", "key"]


def test_optional_fields_are_nullable_and_maps_are_typed() -> None:
    spec = at(schema_of(RUN), "spec")
    assert at(spec, "generator.maxModelLen") == {
        "description": at(spec, "generator.maxModelLen")["description"], "type": "integer",
        "minimum": 256, "maximum": 1_048_576, "nullable": True}
    assert at(spec, "evaluation.prompts")["nullable"] is True
    assert at(spec, "evaluation.prompts")["type"] == "object"
    selector = at(spec, "scheduling.nodeSelector")
    assert selector["additionalProperties"] == {"type": "string"}
    assert selector["maxProperties"] == 64
    assert at(spec, "scheduling.tolerations")["maxItems"] == 64


def rules(schema: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in schema.get("x-kubernetes-validations", [])]


def test_cross_field_validators_have_cel_rules() -> None:
    spec = at(schema_of(RUN), "spec")
    assert any("self.builtin" in r and "== 1" in r for r in rules(at(spec, "prompts")))
    assert any("self.builtin" in r for r in rules(at(spec, "evaluation.prompts")))
    assert any("maxCompletionLength" in r and "1024" in r for r in rules(at(spec, "training")))
    assert any("tensorParallelSize" in r for r in rules(at(spec, "generator")))
    template = at(schema_of(SCHEDULE), "spec.runTemplate")
    assert rules(template.get("properties", {})["training"]) == rules(at(spec, "training"))


def test_run_name_rules_follow_the_child_name_budget() -> None:
    root = rules(schema_of(RUN))
    assert f"size(self.metadata.name) <= {names.MAX_RUN_NAME_LENGTH}" in root
    assert any(r.startswith("self.metadata.name.matches('^[a-z]") for r in root)
    schedule = rules(schema_of(SCHEDULE))
    assert f"size(self.metadata.name) <= {names.MAX_SCHEDULE_NAME_LENGTH}" in schedule


def test_immutability_rule_covers_every_spec_field_but_suspend() -> None:
    (rule,) = [r for r in rules(schema_of(RUN)) if "oldSelf" in r]
    assert "oldSelf.status.startTime" in rule
    for name, field in RunSpec.model_fields.items():
        key = field.alias or name
        assert (f"self.spec.{key} == oldSelf.spec.{key}" in rule) == (key != "suspend"), key


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    conditions = at(schema_of(RUN), "status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert at(conditions, "[].lastTransitionTime")["format"] == "date-time"


def test_schedule_spec_embeds_the_run_spec() -> None:
    spec = at(schema_of(SCHEDULE), "spec")
    assert set(spec["required"]) == {"schedule", "runTemplate"}
    assert at(spec, "concurrencyPolicy")["enum"] == ["Allow", "Forbid", "Replace"]
    assert set(at(spec, "runTemplate")["properties"]) == set(at(schema_of(RUN), "spec")[
        "properties"])
    assert "pattern" in at(spec, "schedule")


def test_a_union_of_types_is_refused() -> None:
    class Bad(BaseModel):
        value: int | str

    with pytest.raises(UnsupportedSchema, match="value"):
        structural_schema(Bad.model_json_schema())


def test_crd_parses_as_the_kubernetes_api_type() -> None:
    from kubernetes.client import ApiClient

    client = ApiClient()
    for obj in crd.all_crds():
        model = client._ApiClient__deserialize(obj, "V1CustomResourceDefinition")
        assert model.spec.names.kind == obj["spec"]["names"]["kind"]


#: Keys YAML 1.1 (kubectl's parser, sigs.k8s.io/yaml) reads as booleans: `n: 5` arrives as
#: `false: 5`, which the API server rejects as an unknown field "spec.sampling.false".
_YAML11_BOOLEANS = {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True",
                    "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF"}


def test_no_field_name_is_a_yaml_boolean() -> None:
    bad = [path for path, _ in nodes(schema_of(RUN))
           if path.rsplit(".", 1)[-1] in _YAML11_BOOLEANS]
    assert bad == []
