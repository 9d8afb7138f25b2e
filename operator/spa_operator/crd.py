"""The CustomResourceDefinitions, generated from the pydantic spec models.

    python -m spa_operator.crd                 # every CRD, as one multi-document YAML on stdout
    python -m spa_operator.crd --write DIR     # one file per CRD: DIR/<group>_<plural>.yaml
    python -m spa_operator.crd --check DIR     # exit 1 if the files in DIR are stale

The schema comes from spa_core.spec / spa_core.schedule_spec (the same models `spa run`
validates with) and spa_operator.status. CEL rules (x-kubernetes-validations) add what
bounds cannot say: the cross-field checks of the models' validators, name lengths that keep
every child name a DNS label, and the spec's immutability once a run has started.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from spa_core.schedule_spec import ScheduleSpec
from spa_core.spec import API_GROUP, GeneratorSpec, PromptsSpec, RunSpec, TrainingSpec
from spa_operator.names import MAX_RUN_NAME_LENGTH, MAX_SCHEDULE_NAME_LENGTH
from spa_operator.schema import structural_schema
from spa_operator.status import RunStatus, ScheduleStatus

__all__ = [
    "CRD_FILES",
    "RUN_KIND",
    "RUN_PLURAL",
    "SCHEDULE_KIND",
    "SCHEDULE_PLURAL",
    "VERSION",
    "all_crds",
    "main",
    "render",
    "run_crd",
    "schedule_crd",
    "write",
]

VERSION = "v1alpha1"
RUN_KIND, SCHEDULE_KIND = "SPAAlignmentRun", "SPAAlignmentSchedule"
RUN_PLURAL = "spaalignmentruns"
SCHEDULE_PLURAL = "spaalignmentschedules"
_DNS_LABEL_STARTING_WITH_LETTER = "^[a-z]([-a-z0-9]*[a-z0-9])?$"


def _field(model: type[BaseModel], name: str) -> str:
    """The YAML (camelCase) name of a model field."""
    info = model.model_fields[name]
    return info.alias or name


def _value(model: type[BaseModel], name: str) -> str:
    """CEL for a field's value on `self`, or its pydantic default when unset."""
    key = _field(model, name)
    default = model.model_fields[name].default
    return f"(has(self.{key}) ? self.{key} : {default!r})"


def _rule(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def model_rules(name: str) -> list[dict[str, Any]]:
    """CEL rules mirroring the cross-field validators of the spec models (by $defs name)."""
    if name == PromptsSpec.__name__:
        sources = [_field(PromptsSpec, f) for f in ("builtin", "path", "dataset")]
        count = " + ".join(f"(has(self.{s}) ? 1 : 0)" for s in sources)
        return [_rule(f"{count} == 1", f"set exactly one of {', '.join(sources)}")]
    if name == TrainingSpec.__name__:
        completion = _value(TrainingSpec, "max_completion_length")
        length = _value(TrainingSpec, "max_length")
        return [_rule(f"{completion} < {length}",
                      "maxCompletionLength must be less than maxLength (defaults: 1024, 2048)",
                      ".maxCompletionLength")]
    if name == GeneratorSpec.__name__:
        tp = _value(GeneratorSpec, "tensor_parallel_size")
        dp = _value(GeneratorSpec, "data_parallel_size")
        gpus = _value(GeneratorSpec, "gpus")
        return [_rule(f"{tp} * {dp} <= ({gpus} > 1 ? {gpus} : 1)",
                      "tensorParallelSize x dataParallelSize must not exceed gpus",
                      ".tensorParallelSize")]
    return []


def _name_rules(max_length: int, what: str) -> list[dict[str, Any]]:
    # No fieldPath: it must name a field of the schema, and metadata has none declared.
    return [
        _rule(f"self.metadata.name.matches('{_DNS_LABEL_STARTING_WITH_LETTER}')",
              f"metadata.name must be a DNS label starting with a letter "
              f"(lowercase letters, digits, '-'): the {what}'s Services are named after it"),
        _rule(f"size(self.metadata.name) <= {max_length}",
              f"metadata.name must be at most {max_length} characters, so that the names of "
              f"the {what}'s children fit 63"),
    ]


def _gpus_per_node_set(path: str) -> dict[str, Any]:
    """CEL: `path`.training.gpusPerNode is set (optional for `spa run`, required here)."""
    return _rule(f"has({path}.training) && has({path}.training.gpusPerNode)",
                 f"{path.removeprefix('self.')}.training.gpusPerNode is required in a cluster: "
                 "the GPUs of each training node, or 0 to train on CPUs")


def _spec_unchanged_except(field: str) -> str:
    """CEL: every field of self.spec but `field` equals oldSelf.spec's."""
    parts = []
    for name in RunSpec.model_fields:
        key = _field(RunSpec, name)
        if key == field:
            continue
        parts.append(f"(has(self.spec.{key}) == has(oldSelf.spec.{key}) && "
                     f"(!has(self.spec.{key}) || self.spec.{key} == oldSelf.spec.{key}))")
    return " && ".join(parts)


def _immutable_once_started() -> dict[str, Any]:
    started = "has(oldSelf.status) && has(oldSelf.status.startTime)"
    same_spec = ("(has(self.spec) == has(oldSelf.spec) && "
                 f"(!has(self.spec) || ({_spec_unchanged_except('suspend')})))")
    return _rule(f"!({started}) || {same_spec}",
                 "spec is immutable once the run has started (status.startTime is set); only "
                 "spec.suspend may change. Create a new SPAAlignmentRun instead.",
                 ".spec")


def _object_schema(spec_model: type[BaseModel], status_model: type[BaseModel],
                   rules: list[dict[str, Any]], description: str) -> dict[str, Any]:
    spec = structural_schema(spec_model.model_json_schema(by_alias=True), model_rules)
    status = structural_schema(status_model.model_json_schema(by_alias=True), model_rules)
    _list_map(status, "conditions", "type")
    return {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": rules,
    }


def _list_map(schema: dict[str, Any], field: str, key: str) -> None:
    """Declare a list as a map keyed by `key` (server-side apply merges its items by key)."""
    prop = schema["properties"][field]
    prop["x-kubernetes-list-type"] = "map"
    prop["x-kubernetes-list-map-keys"] = [key]


def _crd(kind: str, plural: str, short: str, schema: dict[str, Any],
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "spa-operator"},
            "annotations": {"spa.dev/generated-by": "python -m spa_operator.crd"},
        },
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["spa", "all"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def run_crd() -> dict[str, Any]:
    """The SPAAlignmentRun CRD."""
    rules = [*_name_rules(MAX_RUN_NAME_LENGTH, "run"), _immutable_once_started(),
             _gpus_per_node_set("self.spec")]
    schema = _object_schema(
        RunSpec, RunStatus, rules,
        "An SPA (Self-Priority Alignment) run: sample, self-score, refine, denoise, pair and "
        "train a model, on the cluster's GPUs.")
    schema["required"] = ["spec"]  # at least spec.training.gpusPerNode
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Iteration", "type": "integer", "jsonPath": ".status.iteration"},
        {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "priority": 1},
        {"name": "Pairs", "type": "integer", "jsonPath": ".status.counts.pairs"},
        {"name": "Ready", "type": "string",
         "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(RUN_KIND, RUN_PLURAL, "spar", schema, columns)


def schedule_crd() -> dict[str, Any]:
    """The SPAAlignmentSchedule CRD."""
    schema = _object_schema(
        ScheduleSpec, ScheduleStatus,
        [*_name_rules(MAX_SCHEDULE_NAME_LENGTH, "schedule"),
         _gpus_per_node_set("self.spec.runTemplate")],
        "A cron schedule of SPAAlignmentRuns (recurring alignment); each run can start from "
        "the model of the last successful one.")
    schema["required"] = ["spec"]
    columns = [
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
        {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
        {"name": "Last Schedule", "type": "date", "jsonPath": ".status.lastScheduleTime"},
        {"name": "Last Success", "type": "string", "jsonPath": ".status.lastSuccessfulRun"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(SCHEDULE_KIND, SCHEDULE_PLURAL, "spas", schema, columns)


def all_crds() -> list[dict[str, Any]]:
    return [run_crd(), schedule_crd()]


#: File name of each CRD in a `--write` directory (kubebuilder's convention).
CRD_FILES = {f"{API_GROUP}_{RUN_PLURAL}.yaml": run_crd,
             f"{API_GROUP}_{SCHEDULE_PLURAL}.yaml": schedule_crd}

_HEADER = "# Generated by `python -m spa_operator.crd --write`; do not edit.\n"


class _Dumper(yaml.SafeDumper):
    """Block scalars for long text; no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(crd: dict[str, Any]) -> str:
    """A CRD as YAML text (deterministic)."""
    return _HEADER + yaml.dump(crd, Dumper=_Dumper, sort_keys=False, width=100,
                               allow_unicode=True, default_flow_style=False)


def write(directory: Path) -> list[Path]:
    """Write every CRD to `directory`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_name, build in CRD_FILES.items():
        path = directory / file_name
        path.write_text(render(build()))
        paths.append(path)
    return paths


def stale(directory: Path) -> list[str]:
    """Files in `directory` that differ from what the models generate."""
    out = []
    for name, build in CRD_FILES.items():
        path = directory / name
        if not path.is_file() or path.read_text() != render(build()):
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spa_operator.crd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="DIR", help="write one file per CRD")
    group.add_argument("--check", type=Path, metavar="DIR", help="fail if DIR's CRDs are stale")
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.write):
            print(path)
        return 0
    if args.check:
        if bad := stale(args.check):
            print(f"stale CRDs in {args.check}: {', '.join(bad)}; regenerate with "
                  f"`python -m spa_operator.crd --write {args.check}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write("---\n".join(render(crd) for crd in all_crds()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
