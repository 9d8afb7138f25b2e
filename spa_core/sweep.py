"""A grid of runs from one run file: `spa sweep RUN.yaml --grid training.learningRate=1e-6,5e-6`.

Each `--grid` names one field by its path in the YAML (camelCase, as the file spells it) and
its values; the runs are every combination, named `<run>-<k>` (k from 1), each validated as
a whole before any file is written. The paper gives only search ranges for the learning
rate, alpha, rho, delta and n (its Table 5): `examples/paper/README.md` shows the grids.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spa_core.spec import SpecError, parse_run

__all__ = ["MAX_RUNS", "Axis", "SweepRun", "expand", "parse_axis", "write_runs"]

#: More combinations than this is a mistake, not a sweep.
MAX_RUNS = 1000


@dataclass(frozen=True)
class Axis:
    """One swept field: its path in the run document's `spec`, and its values."""

    path: tuple[str, ...]
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class SweepRun:
    """One combination: the run document and the values it sets, by field path."""

    document: dict[str, Any]
    settings: dict[str, Any]

    @property
    def name(self) -> str:
        return self.document["metadata"]["name"]


def parse_axis(text: str) -> Axis:
    """`training.learningRate=5e-7,1e-6`: a field path under `spec`, and YAML values."""
    path, sep, values = text.partition("=")
    keys = tuple(path.strip().removeprefix("spec.").split("."))
    if not sep or not all(keys) or not values.strip():
        raise SpecError(f"--grid {text!r}: expected FIELD=VALUE,VALUE,... with FIELD a path "
                        "such as training.learningRate")
    try:
        parsed = tuple(_value(v) for v in values.split(","))
    except yaml.YAMLError as exc:
        raise SpecError(f"--grid {text!r}: a value is not YAML: {exc}") from None
    if len(set(map(repr, parsed))) != len(parsed):
        raise SpecError(f"--grid {text!r}: a value is repeated")
    return Axis(keys, parsed)


def _value(text: str) -> Any:
    """A YAML value, with numbers as numbers: YAML 1.1 reads `5e-7` (no dot) as a string,
    which the Kubernetes API would refuse for a number field."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def expand(document: dict[str, Any], axes: list[Axis], *, source: str = "<sweep>") -> list[SweepRun]:
    """Every combination of `axes` applied to `document`, each validated (a SpecError names
    the first combination that is not a valid run, and its field)."""
    base = parse_run(document, source=source)  # the base itself must be valid
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise SpecError(f"a field is swept twice: {', '.join(names)}")
    total = 1
    for axis in axes:
        total *= len(axis.values)
    if total > MAX_RUNS:
        raise SpecError(f"{total} combinations: more than {MAX_RUNS}; sweep fewer values")
    width = len(str(total))
    runs = []
    for k, values in enumerate(itertools.product(*(a.values for a in axes)), start=1):
        doc = copy.deepcopy(document)
        doc["metadata"] = {**doc.get("metadata", {}), "name": f"{base.metadata.name}-{k:0{width}d}"}
        for axis, value in zip(axes, values, strict=True):
            node = doc.setdefault("spec", {})
            for key in axis.path[:-1]:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    raise SpecError(f"--grid {axis.name}: spec.{key} is not a mapping")
                node = child
            node[axis.path[-1]] = value
        settings = dict(zip(names, values, strict=True))
        parse_run(doc, source=f"{source} with {settings}")
        runs.append(SweepRun(doc, settings))
    return runs


def write_runs(runs: list[SweepRun], out: Path, *, force: bool = False) -> list[Path]:
    """One YAML file per run in `out`; refuses to overwrite a file unless `force`."""
    paths = [out / f"{run.name}.yaml" for run in runs]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise SpecError(f"{len(existing)} file(s) exist, e.g. {existing[0]}: pass --force to "
                        "replace them")
    out.mkdir(parents=True, exist_ok=True)
    for run, path in zip(runs, paths, strict=True):
        header = "".join(f"# {k}: {v}\n" for k, v in run.settings.items())
        path.write_text(f"# spa sweep\n{header}" + yaml.safe_dump(run.document, sort_keys=False))
    return paths
