"""Benchmark of pair selection: native core vs vectorised NumPy vs the Python reference.

``python -m spa_core.bench --prompts 1000000`` generates N prompts x (5 samples + 1 refined),
integer scores 1..10 with ~3 % missing, rows shuffled (and a grouped variant), then times

* ``rust``: :func:`spa_core.pairs.select_pairs` with the native core;
* ``numpy``: :func:`select_pairs_numpy` below (sort + reductions + padded broadcasting);
* ``python``: the reference backend (only up to ``--python-max-rows``);
* ``read``: a memory-bandwidth baseline, summing every input column on all cores;
* ``write``: writing as many bytes as the output's to newly allocated memory on all cores
  (the first-touch cost any call returning that output pays, large and variable on VMs).

and prints seconds (best of ``--repeat``; ``read`` and ``rust`` measured in turns, so that
both see the same drift of a shared machine), rows/s, peak RSS growth (absolute and as a
multiple of the input size, the output included) and the ratios. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from spa_core.pairs import STAT_KEYS, PairSelection, native_available, select_pairs

__all__ = ["make_columns", "select_pairs_numpy"]

SAMPLES = 5
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def make_columns(
    n_prompts: int,
    *,
    grouped: bool = False,
    nan_rate: float = 0.03,
    seed: int = 0,
    score_dtype: type = np.float64,
) -> Columns:
    """N prompts x (5 samples + 1 refined); the refined response tends to beat the samples."""
    rng = np.random.default_rng(seed)
    size = SAMPLES + 1
    n = n_prompts * size
    order = None if grouped else rng.permutation(n).astype(np.int64)

    def placed(column: np.ndarray) -> np.ndarray:  # shuffled one column at a time (memory)
        return column if order is None else column[order]

    pid = placed(np.repeat(np.arange(n_prompts, dtype=np.int64), size))
    rid = placed(np.tile(np.arange(size, dtype=np.int32), n_prompts))
    refined = placed(np.tile(np.arange(size) == SAMPLES, n_prompts))
    scores = []
    for _ in range(2):
        s = rng.integers(1, 11, (n_prompts, size), dtype=np.int8)
        best = s[:, :SAMPLES].max(axis=1)
        s[:, SAMPLES] = np.minimum(best + rng.integers(0, 3, n_prompts, dtype=np.int8), 10)
        col: np.ndarray = s.reshape(-1).astype(score_dtype)
        del s, best
        col[rng.random(n, dtype=np.float32) < nan_rate] = np.nan
        scores.append(placed(col))
        del col
    return pid, rid, refined, scores[0], scores[1]


# --------------------------------------------------------------------------- NumPy baseline


def select_pairs_numpy(
    prompt_id: np.ndarray,
    response_id: np.ndarray,
    is_refined: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    rho: float,
    delta: float,
    alpha: float,
    chunk_groups: int = 1 << 18,
) -> PairSelection:
    """The same selection in vectorised NumPy: what one would write without the native core.

    Sums use NumPy's order, so weights can differ from the reference in the last bits.
    """
    n = prompt_id.size
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats["rows_in"] = n
    if np.any(prompt_id[1:] < prompt_id[:-1]):
        order = np.argsort(prompt_id)
        pid = prompt_id[order]
    else:
        order, pid = None, prompt_id
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]]) if n else np.zeros(0, np.int64)
    n_groups = stats["groups_in"] = starts.size
    sizes = np.diff(np.r_[starts, n])
    width = int(sizes.max()) if n else 0

    def take(column: np.ndarray) -> np.ndarray:
        return column if order is None else column[order]

    # Padded [groups, width] matrices, each row sorted by response id; padding is missing.
    # Each sorted row's cell in the flattened [groups, width] matrix.
    cell = np.repeat(np.arange(n_groups) * width - starts, sizes) + np.arange(n)
    big = np.iinfo(np.int64).max
    rid = np.full((n_groups, width), big, dtype=np.int64)
    rid.reshape(-1)[cell] = take(response_id)
    by_id = np.argsort(rid, axis=1, kind="stable")
    rid = np.take_along_axis(rid, by_id, axis=1)

    def padded(column: np.ndarray, fill: Any) -> np.ndarray:
        m = np.full((n_groups, width), fill, dtype=column.dtype)
        m.reshape(-1)[cell] = take(column)
        return np.take_along_axis(m, by_id, axis=1)

    a = padded(score_a.astype(np.float64, copy=False), np.nan)
    b = padded(score_b.astype(np.float64, copy=False), np.nan)
    refined = padded(is_refined, False)
    present = rid != big
    if present.any() and (rid[:, 1:] == rid[:, :-1])[present[:, 1:]].any():
        raise ValueError("duplicate response_id in a prompt")
    scored = ~(np.isnan(a) | np.isnan(b))
    stats["dropped_missing"] = int(np.count_nonzero(present & ~scored))
    sample = scored & ~refined
    is_ref = scored & refined
    n_samples = sample.sum(axis=1)
    well_formed = (is_ref.sum(axis=1) == 1) & (n_samples >= 2)
    stats["dropped_malformed"] = int(n_groups - np.count_nonzero(well_formed))
    ref_a = np.where(is_ref, a, -np.inf).max(axis=1, initial=-np.inf)
    ref_b = np.where(is_ref, b, -np.inf).max(axis=1, initial=-np.inf)
    max_a = np.where(sample, a, -np.inf).max(axis=1, initial=-np.inf)
    max_b = np.where(sample, b, -np.inf).max(axis=1, initial=-np.inf)
    consistent = well_formed & (ref_a > max_a) & (ref_b > max_b)
    stats["dropped_consistency"] = int(np.count_nonzero(well_formed & ~consistent))
    sa_, sb_ = np.where(sample, a, 0.0), np.where(sample, b, 0.0)
    nf = n_samples.astype(np.float64)
    sa, sb = sa_.sum(axis=1), sb_.sum(axis=1)
    caa = nf * (sa_ * sa_).sum(axis=1) - sa * sa
    cbb = nf * (sb_ * sb_).sum(axis=1) - sb * sb
    cab = nf * (sa_ * sb_).sum(axis=1) - sa * sb
    del sa_, sb_
    with np.errstate(invalid="ignore", divide="ignore"):
        d = caa * cbb - cab * cab
        det_zero = d <= 1e-12 * (caa * cbb)
        det = d / (nf * nf * (nf - 1) * (nf - 1))
    informative = consistent & ~det_zero
    stats["dropped_det_zero"] = int(np.count_nonzero(consistent & det_zero))
    kept = informative & (det <= rho)
    stats["dropped_det_above_rho"] = int(np.count_nonzero(informative & ~kept))
    kept_idx = np.flatnonzero(kept)
    stats["groups_kept"] = kept_idx.size
    group_pid = pid[starts]

    # Pairs by broadcasting [groups, width, width], a chunk of groups at a time.
    parts: list[tuple[np.ndarray, ...]] = []
    for lo in range(0, kept_idx.size, chunk_groups):
        g = kept_idx[lo : lo + chunk_groups]
        ga, gb, ok = a[g], b[g], scored[g]
        ai, aj = ga[:, :, None], ga[:, None, :]
        bi, bj = gb[:, :, None], gb[:, None, :]
        hit = ok[:, :, None] & ok[:, None, :] & ((ai > aj) | ((ai == aj) & (bi > bj)))
        hit &= np.abs(ai - aj) + np.abs(bi - bj) >= delta
        k, i, j = np.nonzero(hit)
        gk = g[k]
        gap = np.abs((a[gk, i] + b[gk, i]) - (a[gk, j] + b[gk, j]))
        parts.append((group_pid[gk], rid[gk, i], rid[gk, j], gap))
    if parts:
        out_pid, chosen, rejected, gap = (np.concatenate(p) for p in zip(*parts, strict=True))
    else:
        out_pid = chosen = rejected = np.zeros(0, np.int64)
        gap = np.zeros(0)
    stats["pairs"] = gap.size
    total = gap.sum()
    weight = np.ones_like(gap) if total == 0 or alpha == 0 else (gap / (total / gap.size)) ** alpha
    return PairSelection(
        kept_prompt_ids=group_pid[kept_idx].astype(np.int64),
        prompt_id=out_pid.astype(np.int64),
        chosen_id=chosen.astype(np.int64),
        rejected_id=rejected.astype(np.int64),
        gap=gap,
        weight=weight,
        stats=stats,
    )


# --------------------------------------------------------------------------- measuring


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class Timing:
    name: str
    seconds: float
    peak_extra: int | None  # bytes above the RSS before the call (None: not measurable)
    result: Any = None


def _measure(name: str, fn: Callable[[], Any], repeat: int) -> Timing:
    return _measure_rounds({name: fn}, repeat)[name]


def _measure_rounds(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, Timing]:
    """Best of `repeat` rounds, each round calling every function once, in turn.

    Taking turns gives each the same share of the machine's good and bad moments (on a
    shared VM, memory bandwidth drifts by a third within a minute), so ratios of the best
    times compare like with like."""
    timings = {name: Timing(name, math.inf, None) for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = timings[name]
            t.result = None
            gc.collect()
            can_reset = _reset_peak_rss()
            before = _rss_bytes("VmRSS")
            t0 = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - t0
            if can_reset:
                extra = _rss_bytes("VmHWM") - before
                t.peak_extra = extra if t.peak_extra is None else max(t.peak_extra, extra)
            t.seconds, t.result = min(t.seconds, elapsed), result
    return timings


def read_columns(columns: Columns, threads: int) -> float:
    """Read every byte of the input once, on `threads` cores (the bandwidth baseline)."""

    def words(column: np.ndarray) -> np.ndarray:
        raw = column.view(np.uint8)
        usable = raw.size - raw.size % 8
        return raw[:usable].view(np.uint64)

    flat = [words(c) for c in columns]
    pieces = [w[i : i + (1 << 22)] for w in flat for i in range(0, w.size, 1 << 22)]
    with ThreadPoolExecutor(threads) as pool:
        return float(sum(pool.map(lambda p: int(np.bitwise_xor.reduce(p)), pieces)))


def write_fresh(nbytes: int, threads: int) -> float:
    """Write `nbytes` of newly allocated memory on `threads` cores: what a call that returns
    that much output pays at least for it (the kernel's first-touch faults and zeroing, then
    the writes), whatever it computes."""
    out = np.empty(nbytes // 8, dtype=np.uint64)
    pieces = [out[i : i + (1 << 21)] for i in range(0, out.size, 1 << 21)]

    def fill(piece: np.ndarray) -> None:
        piece[...] = 1  # (NumPy releases the GIL for this)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fill, pieces))
    return float(out[-1]) if out.size else 0.0


def _input_bytes(columns: Columns) -> int:
    return sum(c.nbytes for c in columns)


def _output_bytes(sel: PairSelection) -> int:
    return sum(
        getattr(sel, k).nbytes
        for k in ("kept_prompt_ids", "prompt_id", "chosen_id", "rejected_id", "gap", "weight")
    )


def _check_same(rust: PairSelection, other: PairSelection, name: str) -> None:
    same = rust.stats == other.stats and all(
        np.array_equal(getattr(rust, k), getattr(other, k))
        for k in ("kept_prompt_ids", "prompt_id", "chosen_id", "rejected_id", "gap")
    )
    same = same and np.allclose(rust.weight, other.weight, rtol=1e-12, atol=0)
    if not same:
        raise SystemExit(f"{name} and rust disagree: {other.stats} vs {rust.stats}")


def run_one(n_prompts: int, grouped: bool, args: argparse.Namespace) -> None:
    layout = "grouped" if grouped else "shuffled"
    dtype = np.float32 if args.float32 else np.float64
    columns = make_columns(n_prompts, grouped=grouped, seed=args.seed, score_dtype=dtype)
    rows, in_bytes = columns[0].size, _input_bytes(columns)
    params = {"rho": args.rho, "delta": args.delta, "alpha": args.alpha}
    threads = os.cpu_count() or 1
    print(f"\n== {n_prompts:,} prompts, {rows:,} rows, {layout}, input {in_bytes / 2**20:,.0f} MiB")
    # The read pass (the ratios' denominator) and Rust in turns.
    rounds: dict[str, Callable[[], Any]] = {"read": lambda: read_columns(columns, threads)}
    if native_available():
        rounds["rust"] = lambda: select_pairs(*columns, **params, backend="rust")
    measured = _measure_rounds(rounds, args.repeat)
    timings: list[Timing] = list(measured.values())
    rust = measured.get("rust")
    if rows <= args.numpy_max_rows:
        numpy_t = _measure("numpy", lambda: select_pairs_numpy(*columns, **params), 1)
        timings.append(numpy_t)
        if rust is not None:
            _check_same(rust.result, numpy_t.result, "numpy")
        numpy_t.result = None
    if rows <= args.python_max_rows:
        python_t = _measure("python", lambda: select_pairs(*columns, **params, backend="python"), 1)
        timings.append(python_t)
        if rust is not None:
            _check_same(rust.result, python_t.result, "python")
        python_t.result = None
    if rust is not None:
        sel: PairSelection = rust.result
        print(f"   stats: {sel.stats}")
        out_bytes = _output_bytes(sel)
        print(f"   output {out_bytes / 2**20:,.0f} MiB")
        timings.insert(
            1, _measure("write", lambda: write_fresh(out_bytes, threads), args.repeat)
        )
    by_name = {t.name: t for t in timings}
    print(f"   {'':8}{'seconds':>10}{'Mrows/s':>10}{'peak +RSS MiB':>15}{'x input':>9}  ratio")
    for t in timings:
        peak = "n/a" if t.peak_extra is None else f"{t.peak_extra / 2**20:,.0f}"
        times_in = "" if t.peak_extra is None else f"{t.peak_extra / in_bytes:.2f}"
        ratio = ""
        if "rust" in by_name and t.name != "rust":
            ratio = f"{t.seconds / by_name['rust'].seconds:.1f}x rust's time"
        print(
            f"   {t.name:8}{t.seconds:10.3f}{rows / t.seconds / 1e6:10.1f}{peak:>15}"
            f"{times_in:>9}  {ratio}"
        )
    if "rust" in by_name:
        rust_s, read_s = by_name["rust"].seconds, by_name["read"].seconds
        print(f"   rust / read = {rust_s / read_s:.1f}x the bandwidth baseline")
        floor = read_s + by_name["write"].seconds
        print(f"   rust / (read + write) = {rust_s / floor:.1f}x reading the input and writing "
              "an output of its size to fresh memory")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spa_core.bench", description=__doc__)
    parser.add_argument(
        "--prompts", type=int, nargs="+", default=[100_000], help="N (several: scaling)"
    )
    parser.add_argument("--layout", choices=["shuffled", "grouped", "both"], default="both")
    parser.add_argument("--rho", type=float, default=50.0)
    parser.add_argument("--delta", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs (rust and read in turns, write)")
    parser.add_argument("--numpy-max-rows", type=int, default=12_000_000)
    parser.add_argument("--python-max-rows", type=int, default=600_000)
    parser.add_argument("--float32", action="store_true", help="float32 scores (else float64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"native core: {native_available()}, cores: {os.cpu_count()}, params rho={args.rho} ")
    for n in args.prompts:
        for grouped in {"shuffled": [False], "grouped": [True], "both": [False, True]}[args.layout]:
            run_one(n, grouped, args)
            gc.collect()


if __name__ == "__main__":
    main()
