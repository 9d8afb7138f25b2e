"""`spa sweep`: one validated run file per combination of a grid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spa_core.spec import SpecError, load_run
from spa_core.sweep import expand, parse_axis, write_runs

BASE = Path(__file__).resolve().parent.parent / "examples" / "paper" / "harmlessness-saferlhf.yaml"


def base() -> dict:
    return yaml.safe_load(BASE.read_text())


def test_every_combination_is_a_valid_run_named_after_the_base(tmp_path: Path) -> None:
    runs = expand(base(), [parse_axis("training.learningRate=5e-7,1e-6,5e-6"),
                           parse_axis("denoising.rho=10,50")])
    assert [r.name for r in runs] == [f"paper-saferlhf-{k}" for k in range(1, 7)]
    assert [r.settings for r in runs][:2] == [
        {"training.learningRate": 5e-7, "denoising.rho": 10},
        {"training.learningRate": 5e-7, "denoising.rho": 50}]
    paths = write_runs(runs, tmp_path / "sweep")
    loaded = [load_run(p) for p in paths]
    assert {(r.spec.training.learning_rate, r.spec.denoising.rho) for r in loaded} == {
        (lr, rho) for lr in (5e-7, 1e-6, 5e-6) for rho in (10.0, 50.0)}
    # Everything not swept is the base's.
    assert all(r.spec.training.beta == 2.5 and r.spec.prompts.count == 300 for r in loaded)
    assert paths[0].read_text().startswith("# spa sweep\n# training.learningRate: 5e-07\n")


def test_a_new_field_path_is_created_and_a_bad_value_is_named(tmp_path: Path) -> None:
    [run] = expand(base(), [parse_axis("spec.training.speed.compile=true")])
    assert run.document["spec"]["training"]["speed"] == {"compile": True}
    with pytest.raises(SpecError, match=r"'denoising.rho': -1.*\n.*spec.denoising.rho"):
        expand(base(), [parse_axis("denoising.rho=30,-1")])
    with pytest.raises(SpecError, match="noSuchField"):
        expand(base(), [parse_axis("training.noSuchField=1")])
    for text in ("training.learningRate", "=1,2", "training.alpha=1,1"):
        with pytest.raises(SpecError, match="--grid"):
            parse_axis(text)


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    runs = expand(base(), [parse_axis("training.alpha=1,2")])
    [first, _] = write_runs(runs, tmp_path)
    first.write_text("mine")
    with pytest.raises(SpecError, match="--force"):
        write_runs(runs, tmp_path)
    assert first.read_text() == "mine"
    write_runs(runs, tmp_path, force=True)
    assert load_run(first).spec.training.alpha == 1.0


def test_the_command_writes_the_files_and_refuses_a_bad_grid(tmp_path: Path) -> None:
    spa = [sys.executable, "-m", "spa_core.cli"]
    out = subprocess.run([*spa, "sweep", str(BASE), "--out", str(tmp_path / "s"),
                          "--grid", "training.alpha=1,2", "--grid", "denoising.delta=2,3,4"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "s").glob("*.yaml"))) == 6
    bad = subprocess.run([*spa, "sweep", str(BASE), "--out", str(tmp_path / "t"),
                          "--grid", "denoising.delta=2,30"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode == 2 and "spec.denoising.delta" in bad.stderr
    assert not (tmp_path / "t").exists()
