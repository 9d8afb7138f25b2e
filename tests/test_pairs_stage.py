"""The pairs stage over many shards: the same files, byte for byte, as over one, and the same
rows as the whole-table computation it replaced; texts are read shard by shard."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import spa_core.rundir
from object_store_helpers import S3Bucket
from spa_core.bench_stage import run_document, write_synthetic_run
from spa_core.layout import MANIFEST
from spa_core.pairs import select_pairs
from spa_core.rundir import RunDir
from spa_core.spec import parse_run
from spa_core.stages.context import StageContext
from spa_core.stages.pairs import run_pairs

RECORDED_RUN = Path(__file__).resolve().parent / "data" / "recorded-run"
OUTPUTS = ("pairs/pairs.parquet", "pairs/responses.parquet")
_COLUMNS = ["prompt_id", "response_id", "is_refined", "response", "score_a", "score_b", "status"]


def reference(it: RunDir, rho: float, delta: float, alpha: float) -> dict[str, pa.Table]:
    """What the stage wrote before it streamed: every response with its text in one table,
    sorted, joined to the pairs (the code of spa_core/stages/pairs.py until 2026-12)."""
    parts = []
    for rel in it.glob("scores/shard-*.parquet"):
        scores = it.read_table(rel)
        samples = it.read_table(rel.replace("scores/", "samples/"),
                                ["prompt_id", "response_id", "response"])
        parts.append(scores.join(samples, keys=["prompt_id", "response_id"]).select(_COLUMNS))
    for rel in it.glob("refined/shard-*.parquet"):
        parts.append(it.read_table(rel).select(_COLUMNS))
    responses = pa.concat_tables(parts).sort_by([("prompt_id", "ascending"),
                                                 ("response_id", "ascending")])
    selection = select_pairs(*(responses.column(c) for c in ("prompt_id", "response_id",
                                                              "is_refined", "score_a",
                                                              "score_b")),
                             rho=rho, delta=delta, alpha=alpha)
    texts = responses.select(["prompt_id", "response_id", "response", "score_a", "score_b"])

    def side(name: str) -> pa.Table:
        return texts.rename_columns(["prompt_id", f"{name}_id", name, f"{name}_a", f"{name}_b"])

    pairs = (selection.to_arrow().join(it.read_table("prompts/prompts.parquet"), keys="prompt_id")
             .join(side("chosen"), keys=["prompt_id", "chosen_id"])
             .join(side("rejected"), keys=["prompt_id", "rejected_id"])
             .sort_by([("prompt_id", "ascending"), ("chosen_id", "ascending"),
                       ("rejected_id", "ascending")]))
    kept = pa.array(selection.kept_prompt_ids, pa.int64())
    responses = responses.append_column("group_kept", pc.is_in(responses.column("prompt_id"),
                                                               kept))
    return {"pairs/pairs.parquet": pairs, "pairs/responses.parquet": responses}


def reshard(src: Path, dst: Path, size: int) -> None:
    """`src`'s iteration 0 with its samples, scores and refined files cut into shards of
    `size` prompts, as the stages would have written them with storage.shardSize = size."""
    shutil.copytree(src, dst)
    it = RunDir(dst / "iter-00")
    prompt_ids = it.read_table("prompts/prompts.parquet").column("prompt_id").to_numpy()
    for stage in ("samples", "scores", "refined"):
        whole = pa.concat_tables([it.read_table(rel) for rel in it.glob(f"{stage}/shard-*.parquet")])
        for rel in it.glob(f"{stage}/shard-*.parquet"):
            it.remove(rel)
        for k, start in enumerate(range(0, prompt_ids.size, size)):
            ids = pa.array(prompt_ids[start:start + size])
            it.write_table(f"{stage}/shard-{k:05d}.parquet",
                           whole.filter(pc.is_in(whole.column("prompt_id"), ids)))


def pairs_stage(root: Path | str, shard_size: int, *, spec: dict | None = None) -> dict:
    doc = spec or run_document(shard_size)
    doc["spec"]["storage"] = {**doc["spec"].get("storage", {}), "shardSize": shard_size}
    ctx = StageContext(run=parse_run(doc), root=RunDir(root), force=True)
    return run_pairs(ctx)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("one-shard") / "run", 600, 600,
                               text_median=200.0, text_cap=1024)


def test_many_shards_write_the_same_bytes_as_one(synthetic: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Row groups of 1,000 rows: the 3,600 responses and the pairs span several, whose
    # boundaries fall inside shards of 7 prompts (42 responses).
    monkeypatch.setattr(spa_core.rundir, "ROW_GROUP_ROWS", 1_000)
    one = tmp_path / "one"
    shutil.copytree(synthetic, one)
    many = tmp_path / "many"
    reshard(synthetic, many, 7)
    assert len(RunDir(many / "iter-00").glob("scores/shard-*.parquet")) == 86
    stats_one, stats_many = pairs_stage(one, 600), pairs_stage(many, 7)
    assert stats_one == stats_many and stats_one["pairs"] > 1_000
    for rel in OUTPUTS:
        assert (one / "iter-00" / rel).read_bytes() == (many / "iter-00" / rel).read_bytes(), rel
        assert pq.ParquetFile(many / "iter-00" / rel).metadata.num_row_groups > 1, rel


def test_the_rows_are_those_of_the_whole_table_computation(synthetic: Path,
                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    reshard(synthetic, run, 50)
    stats = pairs_stage(run, 50)
    it = RunDir(run / "iter-00")
    expected = reference(it, rho=30, delta=2, alpha=1.0)
    for rel in OUTPUTS:
        got = it.read_table(rel)
        assert got.schema == expected[rel].schema, rel
        assert got.num_rows == expected[rel].num_rows, rel
        for name in got.column_names:  # NaN scores (unparsed judgements) equal themselves
            np.testing.assert_array_equal(got.column(name).to_numpy(zero_copy_only=False),
                                          expected[rel].column(name).to_numpy(
                                              zero_copy_only=False), err_msg=f"{rel}:{name}")
    assert stats["pairs"] == expected["pairs/pairs.parquet"].num_rows
    assert stats["groups_kept"] == pc.sum(pc.is_in(
        expected["pairs/responses.parquet"].column("prompt_id"),
        expected["pairs/pairs.parquet"].column("prompt_id").unique())).as_py() // 6


def test_the_recorded_run_gives_what_it_recorded_byte_for_byte(tmp_path: Path) -> None:
    """The recorded run's pairs files were written by the whole-table stage."""
    import json

    run = tmp_path / "run"
    shutil.copytree(RECORDED_RUN, run)
    recorded = {rel: (RECORDED_RUN / "iter-00" / rel).read_bytes() for rel in OUTPUTS}
    shutil.rmtree(run / "iter-00" / "pairs")
    doc = json.loads((RECORDED_RUN / "spec.json").read_text())
    stats = pairs_stage(run, doc["spec"]["storage"]["shardSize"], spec=doc)
    expected = json.loads((RECORDED_RUN / "iter-00" / "pairs" / MANIFEST).read_text())["stats"]
    assert stats == expected
    for rel in OUTPUTS:
        assert (run / "iter-00" / rel).read_bytes() == recorded[rel], rel


def test_shards_out_of_prompt_order_are_refused_naming_them(synthetic: Path,
                                                            tmp_path: Path) -> None:
    run = tmp_path / "run"
    reshard(synthetic, run, 100)
    it = RunDir(run / "iter-00")
    for stage in ("samples", "scores", "refined"):  # shards 0 and 3 swap places
        a, b = it.path(f"{stage}/shard-00000.parquet"), it.path(f"{stage}/shard-00003.parquet")
        Path(a).rename(a + ".x")
        Path(b).rename(a)
        Path(a + ".x").rename(b)
    with pytest.raises(ValueError, match=r"shard-00001.parquet holds prompt ids from 100, not "
                                         r"after those of shard-00000.parquet \(up to 399\)"):
        pairs_stage(run, 100)
    assert not it.exists("pairs/pairs.parquet")


def test_on_an_object_store_the_files_appear_once_complete(
        tmp_path: Path, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamed to s3:// (moto's server): the same bytes as on a disk, each file put once
    under its final name, no temporary object left."""
    import json

    for key, value in s3_bucket.env.items():
        monkeypatch.setenv(key, value)
    local = tmp_path / "run"
    shutil.copytree(RECORDED_RUN, local)
    shutil.rmtree(local / "iter-00" / "pairs")
    s3_bucket.fs.put(str(local) + "/", f"{s3_bucket.name}/runs/recorded/", recursive=True)
    doc = json.loads((RECORDED_RUN / "spec.json").read_text())
    pairs_stage(s3_bucket.url("runs/recorded"), doc["spec"]["storage"]["shardSize"], spec=doc)
    keys = s3_bucket.keys("runs/recorded/iter-00/pairs")
    assert sorted(keys) == ["_manifest.json", "pairs.parquet", "responses.parquet"]
    for rel in OUTPUTS:
        assert s3_bucket.fs.cat_file(f"{s3_bucket.name}/runs/recorded/iter-00/{rel}") == \
            (RECORDED_RUN / "iter-00" / rel).read_bytes(), rel


def test_the_filter_switches_reach_the_stage(synthetic: Path, tmp_path: Path) -> None:
    """`denoising.consistency/informativeness: false` (the paper's ablation without noise
    filtering): every well-formed group is kept, and the pairs are those of the reference."""
    run = tmp_path / "run"
    shutil.copytree(synthetic, run)
    filtered = pairs_stage(run, 600)
    doc = run_document(600)
    doc["spec"]["denoising"] |= {"consistency": False, "informativeness": False}
    unfiltered = pairs_stage(run, 600, spec=doc)
    assert unfiltered["groups_kept"] > filtered["groups_kept"]
    assert unfiltered["dropped_consistency"] == unfiltered["dropped_det_zero"] == 0
    assert unfiltered["dropped_det_above_rho"] == 0
    assert unfiltered["groups_kept"] == unfiltered["groups_in"] - unfiltered["dropped_malformed"]
    it = RunDir(run / "iter-00")
    pairs = it.read_table("pairs/pairs.parquet")
    assert pairs.num_rows == unfiltered["pairs"] > filtered["pairs"]
