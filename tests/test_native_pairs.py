"""The native core (spa_core._native) gives exactly the Python reference's pairs and stats."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_core.pairs import STAT_KEYS, Backend, PairSelection, native_available, select_pairs


NAN = float("nan")
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def both(cols: Columns, **params: float) -> tuple[PairSelection, PairSelection]:
    return (
        select_pairs(*cols, **params, backend="python"),
        select_pairs(*cols, **params, backend="rust"),
    )


def assert_identical(expected: PairSelection, result: PairSelection) -> None:
    """Bit for bit: same ids, same float bits, same dtypes, same stats."""
    for name in ("kept_prompt_ids", "prompt_id", "chosen_id", "rejected_id", "gap", "weight"):
        want, got = getattr(expected, name), getattr(result, name)
        assert got.dtype == want.dtype, name
        assert got.tobytes() == want.tobytes(), name
    assert result.stats == expected.stats
    assert list(result.stats) == list(STAT_KEYS)


def shuffled_groups(
    rng: np.random.Generator,
    n_prompts: int,
    *,
    samples: int = 5,
    nan_rate: float = 0.03,
    grouped: bool = False,
    id_spread: int = 1,
) -> Columns:
    """n_prompts groups of `samples` samples + 1 refined, integer scores, some NaN."""
    size = samples + 1
    pid = np.repeat(rng.permutation(n_prompts).astype(np.int64) * id_spread, size)
    rid = np.tile(np.arange(size, dtype=np.int64), n_prompts)
    refined = np.tile(np.arange(size) == samples, n_prompts)
    a = rng.integers(1, 8, pid.size).astype(np.float64)
    b = rng.integers(1, 8, pid.size).astype(np.float64)
    a[refined] += rng.integers(0, 4, n_prompts)
    b[refined] += rng.integers(0, 4, n_prompts)
    a[rng.random(pid.size) < nan_rate] = NAN
    b[rng.random(pid.size) < nan_rate] = NAN
    if not grouped:
        order = rng.permutation(pid.size)
        pid, rid, refined, a, b = pid[order], rid[order], refined[order], a[order], b[order]
    return pid, rid, refined, a, b


# --------------------------------------------------------------------------- random inputs


@st.composite
def ragged_columns(draw: st.DrawFn) -> Columns:
    """Ragged groups, ties, NaN, any order; scores integer, half-integer or arbitrary reals."""
    n_prompts = draw(st.integers(0, 12))
    spread = draw(st.sampled_from([1, 3, 10**12]))  # dense ids: counting sort; sparse: sort
    kind = draw(st.sampled_from(["int", "half", "real"]))
    rows: list[tuple[int, int, bool, float, float]] = []
    id_max = draw(st.sampled_from([40, 300]))  # ids within 64 of each other, or not
    for p in draw(
        st.lists(st.integers(-20, 20), min_size=n_prompts, max_size=n_prompts, unique=True)
    ):
        n = draw(st.integers(0, 9))
        ids = draw(st.lists(st.integers(-3, id_max), min_size=n, max_size=n, unique=True))
        for k, rid in enumerate(ids):
            if kind == "real":
                a, b = draw(st.floats(0, 10)), draw(st.floats(0, 10))
            else:
                step = 1.0 if kind == "int" else 0.5
                a, b = step * draw(st.integers(1, 12)), step * draw(st.integers(1, 12))
            refined = k == 0 or draw(st.integers(0, 20)) == 0  # mostly exactly one
            if refined and draw(st.integers(0, 4)) > 0:
                a, b = a + 20.0, b + 20.0  # mostly consistent
            if draw(st.integers(0, 15)) == 0:
                a = NAN
            if draw(st.integers(0, 15)) == 0:
                b = NAN
            rows.append((p * spread, rid, refined, a, b))
    layout = draw(st.sampled_from(["shuffled", "sorted", "grouped"]))
    if layout == "shuffled":
        rows = [rows[i] for i in draw(st.permutations(range(len(rows))))]
    elif layout == "sorted":
        rows.sort(key=lambda r: r[0])
    cols = [np.array(c) for c in zip(*rows, strict=True)] if rows else [np.zeros(0)] * 5
    dtypes = [np.int64, draw(st.sampled_from([np.int64, np.int32])), np.bool_]
    score_dtype = draw(st.sampled_from([np.float64, np.float32]))
    return tuple(
        c.astype(d) for c, d in zip(cols, [*dtypes, score_dtype, score_dtype], strict=True)
    )  # type: ignore[return-value]


@settings(max_examples=200, deadline=None)
@given(
    cols=ragged_columns(),
    rho=st.sampled_from([0.01, 0.5, 2.0, 9.0, 50.0, math.inf]),
    delta=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 5.0]),
    alpha=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.7]),
)
def test_native_matches_reference_exactly(
    cols: Columns, rho: float, delta: float, alpha: float
) -> None:
    expected, result = both(cols, rho=rho, delta=delta, alpha=alpha)
    assert_identical(expected, result)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), grouped=st.booleans(), spread=st.sampled_from([1, 7, 2**40]))
def test_native_matches_reference_on_thousands_of_groups(
    seed: int, grouped: bool, spread: int
) -> None:
    cols = shuffled_groups(np.random.default_rng(seed), 3000, grouped=grouped, id_spread=spread)
    expected, result = both(cols, rho=20.0, delta=2.0, alpha=2.0)
    assert result.stats["groups_kept"] > 0
    assert_identical(expected, result)


def test_every_row_order_gives_the_same_pairs() -> None:
    rng = np.random.default_rng(7)
    grouped = shuffled_groups(rng, 5000, grouped=True)
    reference = select_pairs(*grouped, rho=20.0, delta=2.0, alpha=1.0, backend="rust")
    order = np.argsort(grouped[0], kind="stable")  # grouped and sorted by prompt id
    shuffle = rng.permutation(grouped[0].size)  # scattered
    for perm in (order, shuffle, order[::-1]):
        cols: Any = tuple(c[perm] for c in grouped)
        assert_identical(
            reference, select_pairs(*cols, rho=20.0, delta=2.0, alpha=1.0, backend="rust")
        )


def test_empty_input_gives_empty_result() -> None:
    empty: Columns = (
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, bool),
        np.zeros(0),
        np.zeros(0),
    )
    expected, result = both(empty, rho=1.0, delta=1.0, alpha=1.0)
    assert_identical(expected, result)


def test_outputs_are_owned_writeable_arrays() -> None:
    result = select_pairs(*shuffled_groups(np.random.default_rng(1), 200), rho=20, delta=2, alpha=1)
    assert len(result) > 0
    for name in ("prompt_id", "gap", "weight"):
        array = getattr(result, name)
        assert array.flags.c_contiguous and array.flags.writeable
    assert result.to_arrow().num_rows == len(result)


# --------------------------------------------------------------------------- errors


def test_infinite_scores_raise_the_same_error() -> None:
    cols = list(shuffled_groups(np.random.default_rng(2), 50))
    cols[4] = cols[4].copy()
    cols[4][17] = -math.inf
    cols[3] = cols[3].copy()
    cols[3][30] = math.inf
    backends: tuple[Backend, ...] = ("python", "rust")
    for backend in backends:
        with pytest.raises(ValueError, match=r"^score_a contains infinite values"):
            select_pairs(*cols, rho=1.0, delta=1.0, alpha=1.0, backend=backend)


def test_duplicate_response_ids_raise_the_same_error() -> None:
    pid = np.array([5, 3, 3, 5, 5, 3], dtype=np.int64)
    rid = np.array([1, 2, 2, 0, 0, 4], dtype=np.int64)
    cols = (pid, rid, np.zeros(6, bool), np.ones(6), np.ones(6))
    messages = []
    backends: tuple[Backend, ...] = ("python", "rust")
    for backend in backends:
        with pytest.raises(ValueError, match="duplicate response_id") as info:
            select_pairs(*cols, rho=1.0, delta=1.0, alpha=1.0, backend=backend)
        messages.append(str(info.value))
    assert messages == ["duplicate response_id 2 in prompt_id 3"] * 2


def test_native_module_rejects_bad_arguments() -> None:
    from spa_core import _native

    good = (np.zeros(3, np.int64), np.arange(3), np.zeros(3, bool), np.ones(3), np.ones(3))
    with pytest.raises(TypeError, match="prompt_id must be a 1-D NumPy array of int64"):
        _native.select_pairs(good[0].astype(np.float64), *good[1:], 1.0, 1.0, 1.0)
    with pytest.raises(TypeError, match="score_b"):
        _native.select_pairs(*good[:4], good[4].astype(np.float32), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.select_pairs(np.zeros(6, np.int64)[::2], *good[1:], 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="equal lengths"):
        _native.select_pairs(np.zeros(2, np.int64), *good[1:], 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="rho must be > 0"):
        _native.select_pairs(*good, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="alpha must be finite"):
        _native.select_pairs(*good, 1.0, 1.0, math.nan)


# --------------------------------------------------------------------------- benchmark


def test_numpy_baseline_of_the_benchmark_agrees() -> None:
    from spa_core.bench import make_columns, select_pairs_numpy

    for grouped in (False, True):
        cols = make_columns(3000, grouped=grouped, seed=3)
        expected = select_pairs(*cols, rho=50.0, delta=2.0, alpha=1.0, backend="rust")
        result = select_pairs_numpy(*cols, rho=50.0, delta=2.0, alpha=1.0)
        assert result.stats == expected.stats and len(result) > 0
        np.testing.assert_array_equal(result.chosen_id, expected.chosen_id)
        np.testing.assert_allclose(result.weight, expected.weight, rtol=1e-12)


def test_benchmark_runs_at_small_size(capsys: pytest.CaptureFixture[str]) -> None:
    from spa_core.bench import main

    main(["--prompts", "500", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "rust / read" in out and "numpy" in out and "python" in out
    assert "rust / (read + write)" in out
