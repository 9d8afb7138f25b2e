"""`evaluation.benchmarks`: EleutherAI's lm-evaluation-harness on a tiny task of our own
(a local JSON-lines dataset: nothing is downloaded), with the embedded model, in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spa_core.evaluation.benchmarks import compare, run_benchmarks
from spa_core.evaluation.report import write_report
from spa_core.rundir import RunDir
from spa_core.spec import BenchmarksSpec, ModelSpec

QUESTIONS = [
    ("What is 2 + 2?", ["3", "4", "5"], 1),
    ("What colour is the sky on a clear day?", ["green", "blue", "red"], 1),
    ("How many legs does a cat have?", ["four", "two", "six"], 0),
    ("Which is a fruit?", ["carrot", "apple", "potato"], 1),
]
RECORDED = Path(__file__).resolve().parent / "data" / "recorded-run"


def tiny_task(directory: Path) -> Path:
    """A multiple-choice task `spa_tiny` (log-likelihood of each choice), as lm-eval's
    `--include_path` reads one."""
    directory.mkdir()
    data = directory / "tiny.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in QUESTIONS))
    (directory / "spa_tiny.yaml").write_text(
        "task: spa_tiny\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return directory


@pytest.mark.slow
def test_the_harness_scores_both_models_on_a_tiny_task(tmp_path: Path) -> None:
    spec = BenchmarksSpec(tasks=["spa_tiny"], include_path=str(tiny_task(tmp_path / "tasks")),
                          batch_size=4)
    model = ModelSpec()  # the embedded SmolLM2-135M-Instruct
    # "After" is the same model here (no training in this test): the harness is
    # deterministic, so both runs must agree exactly.
    results, table = run_benchmarks(spec, model, None, None)
    assert results["before"]["spa_tiny"]["sample_len"] == len(QUESTIONS)
    acc = table["spa_tiny"]["acc"]
    assert 0.0 <= acc["before"] <= 1.0 and acc["before"] == acc["after"]
    assert acc["before"] * len(QUESTIONS) == round(acc["before"] * len(QUESTIONS))

    # The report shows them beside the judge's scores.
    run = tmp_path / "run"
    shutil.copytree(RECORDED, run)
    manifest = run / "iter-00" / "evaluate" / "_manifest.json"
    data = json.loads(manifest.read_text())
    data["stats"]["benchmarks"] = table
    manifest.write_text(json.dumps(data))
    spec_doc = json.loads((run / "spec.json").read_text())
    _, md = write_report(RunDir(run), "t", spec_doc["spec"], 1, tmp_path / "report")
    assert f"| spa_tiny acc (lm-eval) | {acc['before']:.3f} | {acc['after']:.3f} |" in \
        md.read_text()


def test_an_unknown_task_is_named_before_any_model_loads(tmp_path: Path) -> None:
    spec = BenchmarksSpec(tasks=["spa_tiny", "no_such_task"],
                          include_path=str(tiny_task(tmp_path / "tasks")))
    with pytest.raises(ValueError, match="has no task 'no_such_task'"):
        run_benchmarks(spec, ModelSpec(name="/nonexistent"), None, "/nonexistent")


def test_compare_keeps_the_metrics_both_runs_have() -> None:
    before = {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 4}}
    after = {"t": {"alias": "t", "acc,none": 0.75, "acc_stderr,none": 0.1, "sample_len": 4,
                   "exact_match,strict": 1.0}}
    assert compare(before, after) == {"t": {"acc": {"before": 0.5, "after": 0.75}}}
