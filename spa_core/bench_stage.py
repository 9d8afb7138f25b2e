"""Benchmark of the pairs stage at scale, texts included: ``python -m spa_core.bench_stage``.

``python -m spa_core.bench_stage --prompts 200000 --dir /var/tmp/spa-bench`` writes a
synthetic run directory (:func:`write_synthetic_run`): N prompts, each with 5 sampled and 1
refined response whose texts are log-normal around 1.5 KB (capped at 8 KB) of word-like
text (it compresses as natural language does), scored 1..10,
in shards of ``--shard-size`` prompts as the stages write them. Then, each in a process of
its own so that peak memory is the stage's alone, it runs and times

* ``stage``: the pairs stage (``spa pairs``), with its peak RSS;
* ``scores floor``: reading the columns the selection reads (ids and scores) of every shard;
* ``texts floor``: reading, shard by shard, the columns the outputs are made of (texts
  included), and encoding the two output files' rows again as Parquet (the same
  compression, written to /dev/null), which any pairs stage has to do;

and prints seconds, seconds per response, peak RSS, and the stage's time over the sum of
its floors. Not part of the test suite (the tests use :func:`write_synthetic_run` small).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spa_core.layout import (
    PAIR_RESPONSES,
    PAIRS,
    PROMPTS,
    iteration_dir,
    shard_glob,
    shard_name,
    shard_path,
)
from spa_core.rundir import RunDir
from spa_core.stages.manifest import StageManifest

__all__ = ["run_document", "write_synthetic_run"]

SAMPLES = 5
#: Letters by their frequency in English text, and how many characters the texts are cut from.
_LETTERS = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", np.uint8)
_LETTER_WEIGHTS = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
                            2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1])
_POOL_CHARS = 1 << 25


@functools.cache
def _word_pool(seed: int) -> np.ndarray:
    """`_POOL_CHARS` characters of word-like text: words of a 20,000-word vocabulary drawn
    with Zipf's law (rank r with weight 1/r), English letter frequencies, a full stop or comma
    after some words. Model answers are natural language; like it, this compresses (zstd:
    about 2.5x), where uniformly random letters would not."""
    rng = np.random.default_rng([seed, 1])
    vocabulary = 20_000
    lengths = np.clip(rng.poisson(4.0, vocabulary), 1, 14) + 1  # with the space after it
    letters = _LETTERS[rng.choice(_LETTERS.size, int(lengths.sum()),
                                  p=_LETTER_WEIGHTS / _LETTER_WEIGHTS.sum())]
    ends = np.cumsum(lengths)
    letters[ends - 1] = ord(" ")
    rank = 1.0 / np.arange(1, vocabulary + 1)
    words = rng.choice(vocabulary, _POOL_CHARS // 4, p=rank / rank.sum())
    sizes = lengths[words]
    out_starts = np.cumsum(sizes) - sizes
    pool = letters[np.repeat(ends[words] - lengths[words] - out_starts, sizes)
                   + np.arange(int(sizes.sum()))]
    spaces = np.flatnonzero(pool == ord(" "))
    stops = spaces[rng.random(spaces.size) < 0.08]
    pool[stops[stops > 0] - 1] = np.where(rng.random((stops > 0).sum()) < 0.6, ord("."),
                                          ord(","))
    pool = pool[:_POOL_CHARS]
    pool.setflags(write=False)  # shared by every call with this seed
    return pool


def run_document(shard_size: int, name: str = "bench") -> dict[str, Any]:
    """The SPAAlignmentRun document of a synthetic run directory."""
    return {"apiVersion": "alignment.spa.dev/v1alpha1", "kind": "SPAAlignmentRun",
            "metadata": {"name": name},
            "spec": {"model": {"name": "synthetic"}, "storage": {"shardSize": shard_size},
                     "sampling": {"numSamples": SAMPLES}, "denoising": {"rho": 30, "delta": 2}}}


def _texts(rng: np.random.Generator, pool: np.ndarray, n: int, median: float,
           cap: int) -> pa.Array:
    """`n` strings cut from `pool` at random offsets, log-normal lengths (sigma 0.6)."""
    lengths = np.minimum(rng.lognormal(np.log(median), 0.6, n).astype(np.int64) + 1, cap)
    starts = rng.integers(0, pool.size - cap, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = pool[np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])]
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data)) \
        .cast(pa.string())


def write_synthetic_run(root: Path, n_prompts: int, shard_size: int, *, seed: int = 0,
                        text_median: float = 1500.0, text_cap: int = 8192) -> Path:
    """A run directory whose iteration 0 has finished prompts, sample, score and refine, as
    those stages write them (files, columns and manifests), with synthetic texts and scores.
    Returns the run directory's root."""
    rng = np.random.default_rng(seed)
    pool = _word_pool(seed)
    run = RunDir(root)
    it = run.child(iteration_dir(0))
    manifests = {stage: StageManifest.open(it, stage, f"synthetic-{stage}", force=True)
                 for stage in ("prompts", "samples", "scores", "refined")}
    ids = np.arange(n_prompts, dtype=np.int64)
    it.write_table(PROMPTS, pa.table({
        "prompt_id": pa.array(ids, pa.int64()),
        "prompt": _texts(rng, pool, n_prompts, 300.0, 2048)}))
    for k, start in enumerate(range(0, n_prompts, shard_size)):
        name = shard_name(k)
        pid = ids[start:start + shard_size]
        n = pid.size
        rows = n * SAMPLES
        s_pid = np.repeat(pid, SAMPLES)
        s_rid = np.tile(np.arange(SAMPLES, dtype=np.int64), n)
        it.write_table(shard_path("samples", name), pa.table({
            "prompt_id": s_pid, "response_id": s_rid,
            "system_prompt": pa.nulls(rows, pa.string()),
            "system_varied": np.zeros(rows, bool),
            "response": _texts(rng, pool, rows, text_median, text_cap),
            "finish_reason": pa.array(np.full(rows, "stop")),
            "error": pa.nulls(rows, pa.string())}))
        a = rng.integers(1, 10, rows).astype(np.float64)  # 1..9
        b = rng.integers(1, 10, rows).astype(np.float64)
        a[rng.random(rows) < 0.02] = np.nan  # unparsed judgements
        it.write_table(shard_path("scores", name), pa.table({
            "prompt_id": s_pid, "response_id": s_rid, "is_refined": np.zeros(rows, bool),
            "score_a": a, "score_b": b, "status": pa.array(np.full(rows, "ok")),
            "judge_output": _texts(rng, pool, rows, 120.0, 512)}))
        # The refined answer mostly beats every sample on both criteria (the groups the
        # method keeps); sometimes it does not.
        best_a = np.fmax.reduceat(np.nan_to_num(a, nan=0.0), np.arange(0, rows, SAMPLES))
        best_b = np.fmax.reduceat(b, np.arange(0, rows, SAMPLES))
        better = rng.random(n) < 0.7
        r_a = np.where(better, np.minimum(best_a + 1, 10), rng.integers(1, 11, n))
        r_b = np.where(better, np.minimum(best_b + 1, 10), rng.integers(1, 11, n))
        it.write_table(shard_path("refined", name), pa.table({
            "prompt_id": pid, "response_id": np.full(n, SAMPLES, np.int64),
            "is_refined": np.ones(n, bool),
            "response": _texts(rng, pool, n, text_median, text_cap),
            "score_a": r_a.astype(np.float64), "score_b": r_b.astype(np.float64),
            "status": pa.array(np.full(n, "ok")),
            "judge_output": _texts(rng, pool, n, 120.0, 512)}))
        for stage in ("samples", "scores", "refined"):
            manifests[stage].shards[name] = {"rows": rows if stage != "refined" else n}
    for manifest in manifests.values():
        manifest.finish(it)
    return root


# --- measurements, each in a child process ------------------------------------------------

def _peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM: getrusage's ru_maxrss would count the
    parent's pages, shared at fork, up to the exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def _child_stage(root: str, shard_size: int) -> dict[str, float]:
    from spa_core.spec import parse_run
    from spa_core.stages.context import StageContext
    from spa_core.stages.pairs import run_pairs

    ctx = StageContext(run=parse_run(run_document(shard_size)), root=RunDir(root), force=True)
    start = time.perf_counter()
    stats = run_pairs(ctx)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb(),
            "pairs": stats["pairs"], "rows_in": stats["rows_in"]}


def _child_scores_floor(root: str) -> dict[str, float]:
    it = RunDir(root).child(iteration_dir(0))
    start = time.perf_counter()
    for stage in ("scores", "refined"):
        for rel in it.glob(shard_glob(stage)):
            it.read_table(rel, ["prompt_id", "response_id", "is_refined", "score_a", "score_b"])
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}


def _child_texts_floor(root: str) -> dict[str, float]:
    it = RunDir(root).child(iteration_dir(0))
    start = time.perf_counter()
    for rel in it.glob(shard_glob("scores")):
        it.read_table(rel, ["prompt_id", "response_id", "is_refined", "score_a", "score_b",
                            "status"])
        it.read_table(rel.replace("scores/", "samples/"), ["prompt_id", "response_id",
                                                            "response"])
        it.read_table(rel.replace("scores/", "refined/"), ["prompt_id", "response_id",
                                                            "is_refined", "response", "score_a",
                                                            "score_b", "status"])
    it.read_table(PROMPTS)
    read = time.perf_counter() - start
    written = 0.0
    for rel in (PAIR_RESPONSES, PAIRS):
        source = pq.ParquetFile(it.path(rel))
        # Encoded and compressed as the stage does, then dropped: a second copy of the
        # outputs on disk would double the benchmark's disk space for no new cost.
        with pq.ParquetWriter(os.devnull, source.schema_arrow, compression="zstd") as writer:
            for g in range(source.num_row_groups):
                table = source.read_row_group(g)
                t0 = time.perf_counter()
                writer.write_table(table)
                written += time.perf_counter() - t0
    return {"seconds": read + written, "read_seconds": read, "write_seconds": written,
            "peak_rss_mb": _peak_rss_mb()}


def _in_child(what: str, *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "spa_core.bench_stage", "--child", what, *args],
                         check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the {what} measurement exited with {out.returncode}; its output "
                           f"ended with:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spa_core.bench_stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[200_000])
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/spa-bench-stage"))
    parser.add_argument("--keep", action="store_true", help="keep the synthetic run directory")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        what, root, *rest = args.child
        result = {"stage": lambda: _child_stage(root, int(rest[0])),
                  "scores": lambda: _child_scores_floor(root),
                  "texts": lambda: _child_texts_floor(root)}[what]()
        print(json.dumps(result))
        return
    for n in args.prompts:
        root = args.dir / f"prompts-{n}"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        write_synthetic_run(root, n, args.shard_size)
        made = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.rglob("*.parquet")) / 1e9
        stage = _in_child("stage", str(root), str(args.shard_size))
        scores = _in_child("scores", str(root))
        texts = _in_child("texts", str(root))
        floors = scores["seconds"] + texts["seconds"]
        responses = n * (SAMPLES + 1)
        print(f"prompts {n:,} ({responses:,} responses, {size:.2f} GB of Parquet, written in "
              f"{made:.0f} s), shards of {args.shard_size}")
        print(f"  stage        {stage['seconds']:8.1f} s  {stage['seconds'] / responses * 1e6:6.2f}"
              f" us/response  peak RSS {stage['peak_rss_mb']:,.0f} MB  ({stage['pairs']:,} pairs)")
        print(f"  scores floor {scores['seconds']:8.1f} s")
        print(f"  texts floor  {texts['seconds']:8.1f} s  (read {texts['read_seconds']:.1f} s, "
              f"write {texts['write_seconds']:.1f} s)")
        print(f"  stage / floors = {stage['seconds'] / floors:.2f}")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
