"""The run report, rendered from a small recorded run directory (tests/data/recorded-run:
the shipped local example's run, minus model weights)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spa_core.evaluation.report import DPI, FIGSIZE, SECTIONS, write_report
from spa_core.rundir import RunDir

RECORDED = Path(__file__).resolve().parent / "data" / "recorded-run"


def render(tmp_path: Path) -> tuple[Path, Path]:
    spec = json.loads((RECORDED / "spec.json").read_text())
    return write_report(RunDir(RECORDED), spec["metadata"]["name"], spec["spec"],
                        spec["spec"]["iterations"]["count"], tmp_path / "report")


def test_every_section_is_filled(tmp_path: Path) -> None:
    html_path, md_path = render(tmp_path)
    html, md = html_path.read_text(), md_path.read_text()
    for title in SECTIONS:
        assert f"<h3>{title}</h3>" in html and f"### {title}" in md
    assert 'class="missing"' not in html, "a section had no data"
    # Headline numbers and the evaluation intervals are there.
    assert "HH10" in md and "win / tie / loss" in md and "[" in md
    assert md.count("![") == 5 and html.count("data:image/png;base64,") == 5


def test_the_plots_are_real_images_of_the_expected_size(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    render(tmp_path)
    pngs = sorted((tmp_path / "report").glob("*.png"))
    assert [p.stem.split("-", 2)[-1] for p in pngs] == \
        ["det_sigma", "eval_scores", "funnel", "pairs", "training"]
    for png in pngs:
        image = mpimg.imread(png)
        assert image.shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI)), png.name
        assert image.std() > 0.01, f"{png.name} is blank"


def test_a_self_criticism_run_says_so_above_its_numbers(tmp_path: Path) -> None:
    spec = json.loads((RECORDED / "spec.json").read_text())["spec"]
    html, md = (p.read_text() for p in render(tmp_path))
    assert "Self-Criticism" not in html + md
    html_path, md_path = write_report(RunDir(RECORDED), "sc", {**spec, "method": "selfCriticism"},
                                      1, tmp_path / "sc")
    for text in (html_path.read_text(), md_path.read_text()):
        head = text[:text.index("Iteration 0")]
        assert "the Self-Criticism baseline" in head and "neither denoised" in head


def test_a_run_without_evaluation_says_what_is_missing(tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(RECORDED, partial, ignore=shutil.ignore_patterns("evaluate"))
    spec = json.loads((partial / "spec.json").read_text())
    html_path, _ = write_report(RunDir(partial), "partial", spec["spec"], 1, tmp_path / "out")
    html = html_path.read_text()
    assert html.count('class="missing"') == 3  # headline, scores, table
    assert "run `spa evaluate`" in html


def test_spa_report_reads_the_spec_from_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(RECORDED, run_dir)
    out = subprocess.run([sys.executable, "-m", "spa_core.cli", "report", str(run_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (run_dir / "report" / "report.html").is_file()
    (run_dir / "spec.json").unlink()
    out = subprocess.run([sys.executable, "-m", "spa_core.cli", "report", str(run_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "--spec" in out.stderr


@pytest.fixture(autouse=True)
def _recorded_run_exists() -> None:
    assert (RECORDED / "spec.json").is_file(), f"{RECORDED} is missing"


def test_the_headline_the_operator_shows_comes_from_the_evaluate_stage() -> None:
    from spa_core.termination import evaluation_headline

    headline = evaluation_headline(RunDir(RECORDED), 0)
    assert set(headline) == {"beforePrimary", "afterPrimary", "beforeHelpfulness",
                             "afterHelpfulness", "winRatePrimary", "winRateHelpfulness"}
    assert all(0.0 <= headline[k] <= 1.0 for k in ("winRatePrimary", "winRateHelpfulness"))
    assert evaluation_headline(RunDir(RECORDED), 5) == {}
