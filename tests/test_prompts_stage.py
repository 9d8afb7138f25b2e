"""Stage `prompts`: sources, bad rows, held-out prompts and per-iteration draws."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spa_core.rundir import RunDir
from spa_core.spec import parse_run
from spa_core.stages import StageContext
from spa_core.stages.prompts import BadPromptRows, run_prompts


def context(tmp_path: Path, iteration: int = 0, **spec: object) -> StageContext:
    run = parse_run({"apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
                     "metadata": {"name": "t"}, "spec": spec})
    return StageContext(run=run, root=RunDir(tmp_path / "run"), iteration=iteration)


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "How do I store bleach safely?"}),
        "{not json",
        json.dumps({"prompt": "   "}),
        json.dumps({"text": "wrong key"}),
        json.dumps({"prompt": 42}),
        json.dumps(["a list"]),
        json.dumps({"prompt": "Is it safe to mix cleaning products?"}),
    ])
    ctx = context(tmp_path, prompts={"path": str(src)}, evaluation={"enabled": False})
    stats = run_prompts(ctx)
    assert stats["prompts"] == 2 and stats["bad_rows"] == 5
    assert any(e.startswith("row 2: not valid JSON") for e in stats["bad_row_examples"])
    table = ctx.dir.read_table("prompts/prompts.parquet")
    assert table.column("prompt_id").to_pylist() == [1, 7]  # ids are source row numbers


def test_bad_rows_fail_with_the_row_number_when_asked(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "ok"}), "{broken"])
    ctx = context(tmp_path, prompts={"path": str(src), "badRows": "fail"})
    with pytest.raises(BadPromptRows, match="row 2: not valid JSON"):
        run_prompts(ctx)
    assert not ctx.dir.exists("prompts/prompts.parquet")


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_csv_and_parquet_sources_read_the_configured_column(tmp_path: Path, kind: str) -> None:
    texts = [f"question {i}?" for i in range(5)]
    if kind == "csv":
        src = tmp_path / "p.csv"
        src.write_text("id,question\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)) + "9,\n")
    else:
        src = tmp_path / "p.parquet"
        pq.write_table(pa.table({"question": texts + [None]}), src)
    ctx = context(tmp_path, prompts={"path": str(src), "column": "question"},
                  evaluation={"count": 2})
    stats = run_prompts(ctx)
    assert (stats["prompts"], stats["heldout"], stats["bad_rows"]) == (3, 2, 1)
    train = set(ctx.dir.read_table("prompts/prompts.parquet").column("prompt").to_pylist())
    held = set(ctx.dir.read_table("prompts/heldout.parquet").column("prompt").to_pylist())
    assert train | held == set(texts) and not train & held


def test_missing_column_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    src = tmp_path / "p.csv"
    src.write_text("a,b\n1,2\n")
    with pytest.raises(BadPromptRows, match="no column 'prompt'"):
        run_prompts(context(tmp_path, prompts={"path": str(src)}))
    with pytest.raises(BadPromptRows, match="does not exist"):
        run_prompts(context(tmp_path, prompts={"path": str(tmp_path / "nope.jsonl")}))


def test_new_prompts_each_iteration_do_not_overlap(tmp_path: Path) -> None:
    spec = {"prompts": {"builtin": "harmlessness", "count": 5}, "iterations": {"count": 2,
            "prompts": "new"}, "evaluation": {"count": 3}}
    first, second = context(tmp_path, 0, **spec), context(tmp_path, 1, **spec)
    run_prompts(first)
    run_prompts(second)
    a = set(first.dir.read_table("prompts/prompts.parquet").column("prompt_id").to_pylist())
    b = set(second.dir.read_table("prompts/prompts.parquet").column("prompt_id").to_pylist())
    held = set(first.dir.read_table("prompts/heldout.parquet").column("prompt_id").to_pylist())
    assert len(a) == len(b) == 5 and not a & b and not (a | b) & held


def test_running_out_of_new_prompts_says_what_to_change(tmp_path: Path) -> None:
    spec = {"prompts": {"builtin": "harmlessness", "count": 30}, "iterations": {"count": 2,
            "prompts": "new"}}
    with pytest.raises(BadPromptRows, match="iterations.prompts: same"):
        run_prompts(context(tmp_path, 1, **spec))


def test_a_finished_stage_is_not_redone(tmp_path: Path) -> None:
    ctx = context(tmp_path, prompts={"builtin": "honesty", "count": 4})
    run_prompts(ctx)
    path = Path(ctx.dir.path("prompts/prompts.parquet"))
    before = path.stat().st_mtime_ns
    assert run_prompts(ctx)["prompts"] == 4
    assert path.stat().st_mtime_ns == before


def test_repeated_prompts_are_dropped_by_normalised_text_and_counted(tmp_path: Path) -> None:
    texts = ["How do I store bleach?", "how do  I store\tbleach?", "HOW DO I STORE BLEACH?",
             "Is it safe to mix cleaners?", "ｉｓ it safe to mix cleaners?", "What is a VPN?"]
    src = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": t}) for t in texts])
    ctx = context(tmp_path, prompts={"path": str(src)}, evaluation={"count": 1})
    stats = run_prompts(ctx)
    assert stats["duplicate_rows"] == 3 and stats["source_rows"] == 6  # NFKC: full-width too
    held = ctx.dir.read_table("prompts/heldout.parquet")
    train = ctx.dir.read_table("prompts/prompts.parquet")
    # The first row of each repeated prompt stays; the held-out one is none of the training.
    ids = sorted(held.column("prompt_id").to_pylist() + train.column("prompt_id").to_pylist())
    assert ids == [1, 4, 6] and stats["heldout"] == 1 and stats["prompts"] == 2
    kept = run_prompts(context(tmp_path / "all", prompts={"path": str(src), "deduplicate": False},
                               evaluation={"enabled": False}))
    assert kept["prompts"] == 6 and kept["duplicate_rows"] == 0


def test_held_out_prompts_from_their_own_source_exclude_training_prompts(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl",
                        [json.dumps({"prompt": f"Question {i}?"}) for i in range(6)])
    held = write_jsonl(tmp_path / "held.jsonl", [json.dumps({"prompt": t}) for t in [
        "question 2?", "A new question?", "A new  question?", "Question 5?", "Another one?"]])
    ctx = context(tmp_path, prompts={"path": str(train), "count": 2},
                  evaluation={"count": 10, "prompts": {"path": str(held)}})
    stats = run_prompts(ctx)
    assert stats["heldout_in_training"] == 2 and stats["heldout_duplicate_rows"] == 1
    table = ctx.dir.read_table("prompts/heldout.parquet")
    assert table.column("prompt").to_pylist() == ["A new question?", "Another one?"]
    assert stats["heldout"] == 2
    # Every one of them a training prompt: a clear error, and nothing written.
    only_training = write_jsonl(tmp_path / "dup.jsonl", [json.dumps({"prompt": "QUESTION 1?"})])
    ctx = context(tmp_path / "b", prompts={"path": str(train)},
                  evaluation={"prompts": {"path": str(only_training)}})
    with pytest.raises(BadPromptRows, match=r"no prompt that is not also a training prompt"):
        run_prompts(ctx)
    assert not ctx.dir.exists("prompts/heldout.parquet")


def test_a_hub_dataset_configuration_is_read_by_name(tmp_path: Path) -> None:
    """`prompts.config`: a dataset with two configurations (a local dataset directory whose
    README declares them, read by `datasets` as a Hub dataset is; nothing is downloaded)."""
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "README.md").write_text(
        "---\nconfigs:\n- config_name: first\n  data_files: first.jsonl\n"
        "- config_name: second\n  data_files: second.jsonl\n---\n")
    write_jsonl(data / "first.jsonl", [json.dumps({"prompt": "from the first?"})])
    write_jsonl(data / "second.jsonl", [json.dumps({"prompt": f"second {i}?"}) for i in range(3)])
    ctx = context(tmp_path, prompts={"dataset": str(data), "config": "second"},
                  evaluation={"enabled": False})
    assert run_prompts(ctx)["prompts"] == 3
    assert sorted(ctx.dir.read_table("prompts/prompts.parquet").column("prompt").to_pylist()) \
        == ["second 0?", "second 1?", "second 2?"]
    with pytest.raises(ValueError, match="config names a configuration of a Hugging Face dataset"):
        context(tmp_path, prompts={"builtin": "honesty", "config": "second"})


def test_later_stages_read_the_prompts_a_shard_at_a_time(tmp_path: Path) -> None:
    """`prompt_shards` gives the slices of prompts.parquet the sample stage names its files
    after, from batches (row groups of 4 rows here, shards of 3: they straddle), and
    `PromptCursor.texts` the texts of one shard's id range, passing over finished shards."""
    from spa_core.stages.prompts import prompt_count, prompt_cursor, prompt_shards

    texts = [f"Question number {i}?" for i in range(11)]
    src = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": t}) for t in texts])
    ctx = context(tmp_path, prompts={"path": str(src)}, evaluation={"enabled": False},
                  storage={"shardSize": 3})
    run_prompts(ctx)
    whole = ctx.dir.read_table("prompts/prompts.parquet")
    path = tmp_path / "run" / "iter-00" / "prompts" / "prompts.parquet"
    pq.write_table(whole, path, row_group_size=4)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    shards = list(prompt_shards(ctx))
    assert [name for name, _ in shards] == [f"shard-{k:05d}" for k in range(4)]
    assert [t.num_rows for _, t in shards] == [3, 3, 3, 2]
    assert pa.concat_tables([t for _, t in shards]).equals(whole)
    assert prompt_count(ctx) == 11
    ids = whole.column("prompt_id").to_pylist()
    with prompt_cursor(ctx) as cursor:  # batches of storage.shardSize (3) rows
        assert cursor.texts(ids[0], ids[2]) == {i: texts[i - 1] for i in ids[0:3]}
        # The next shard was finished before: the one after it is read, not the skipped one.
        assert cursor.texts(ids[6], ids[8]) == {i: texts[i - 1] for i in ids[6:9]}
        assert cursor.texts(ids[9], ids[10]) == {i: texts[i - 1] for i in ids[9:11]}
