"""Run directory and stage manifests: atomic writes, config hashes, nothing partial marked done."""

from __future__ import annotations

import errno
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from spa_core.rundir import RunDir
from spa_core.stages.manifest import ConfigMismatch, StageManifest, config_hash


def test_tables_and_json_round_trip_locally(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    table = pa.table({"x": [1, 2, 3]})
    rd.write_table("a/b.parquet", table)
    rd.write_json("a/m.json", {"k": 1})
    assert rd.read_table("a/b.parquet").equals(table)
    assert rd.read_json("a/m.json") == {"k": 1}
    assert rd.glob("a/*") == ["a/b.parquet", "a/m.json"]
    assert not list((tmp_path / "run" / "a").glob("*.tmp-*"))


def test_fsspec_uris_work_like_local_paths() -> None:
    rd = RunDir("memory://runs/demo")
    rd.write_table("s/x.parquet", pa.table({"x": [1]}))
    assert rd.exists("s/x.parquet")
    assert rd.url("s").startswith("memory://") and rd.url("s").endswith("runs/demo/s")
    assert rd.child("s").read_table("x.parquet").num_rows == 1


class _FullDisk(MemoryFileSystem):
    """Fault injection (a stand-in for a full disk, which a test cannot make safely):
    every file opened for writing fails with ENOSPC after a few bytes."""

    protocol = "fulldisk"

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001, ANN202
        f = super()._open(path, mode, **kwargs)
        if "w" in mode:
            real_write = f.write

            def write(data: bytes) -> int:
                if f.tell() + len(data) > 16:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real_write(data)

            f.write = write
        return f


def test_a_full_disk_never_leaves_a_file_under_its_final_name() -> None:
    fsspec.register_implementation("fulldisk", _FullDisk, clobber=True)
    rd = RunDir("fulldisk://run")
    with pytest.raises(OSError, match="No space left"):
        rd.write_table("samples/shard-00000.parquet", pa.table({"x": list(range(1000))}))
    assert not rd.exists("samples/shard-00000.parquet")
    assert rd.glob("samples/*") == []


def test_manifest_records_only_finished_shards_and_survives_reopen(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    chash = config_hash("sample", {"n": 3})
    m = StageManifest.open(rd, "samples", chash)
    m.mark_shard(rd, "shard-00000", rows=6)
    again = StageManifest.open(rd, "samples", chash)
    assert again.is_done("shard-00000") and not again.is_done("shard-00001")
    assert not again.complete
    again.finish(rd, samples=6)
    assert StageManifest.load(rd, "samples").complete


def test_output_of_another_config_is_refused_unless_forced(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    m = StageManifest.open(rd, "samples", config_hash({"n": 3}))
    rd.write_table("samples/shard-00000.parquet", pa.table({"x": [1]}))
    m.mark_shard(rd, "shard-00000", rows=1)
    with pytest.raises(ConfigMismatch, match="--force"):
        StageManifest.open(rd, "samples", config_hash({"n": 5}))
    fresh = StageManifest.open(rd, "samples", config_hash({"n": 5}), force=True)
    assert fresh.shards == {} and not rd.exists("samples/shard-00000.parquet")


def test_config_hash_is_stable_and_sensitive() -> None:
    from spa_core.spec import SamplingSpec

    assert config_hash(SamplingSpec()) == config_hash(SamplingSpec())
    assert config_hash(SamplingSpec()) != config_hash(SamplingSpec(num_samples=4))


def test_force_redoes_a_finished_stage_even_with_the_same_config(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    chash = config_hash({"n": 3})
    StageManifest.open(rd, "scores", chash).finish(rd, ok=1)
    assert StageManifest.open(rd, "scores", chash).complete
    redo = StageManifest.open(rd, "scores", chash, force=True)
    assert not redo.complete and redo.shards == {}


def test_a_model_given_as_a_uri_is_downloaded_once(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from spa_core.stages.context import remote_model_dir

    monkeypatch.setenv("SPA_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/models/run-1/iter-00/train/checkpoint-final/config.json", b'{"a": 1}')
    uri = "memory://models/run-1/iter-00/train/checkpoint-final"
    local = Path(remote_model_dir(uri) or "")
    assert (local / "config.json").read_text() == '{"a": 1}'
    assert remote_model_dir(uri) == str(local)  # cached
    assert remote_model_dir("meta-llama/Llama-3.1-8B-Instruct") is None
    assert remote_model_dir("embedded:smollm2-135m-instruct") is None
