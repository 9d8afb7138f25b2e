"""select_pairs (DESIGN.md steps 4-6), checked on hand-made groups and against a slow reference."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_core import pairs as pairs_module
from spa_core.pairs import STAT_KEYS, PairSelection, select_pairs

NAN = float("nan")
PARAMS: dict[str, Any] = {"rho": 50.0, "delta": 2.0, "alpha": 1.0}

# One row: (prompt_id, response_id, is_refined, score_a, score_b).
Row = tuple[int, int, bool, float, float]


def columns(rows: list[Row]) -> tuple[np.ndarray, ...]:
    pid, rid, ref, a, b = zip(*rows, strict=True) if rows else ((), (), (), (), ())
    return (
        np.array(pid, dtype=np.int64),
        np.array(rid, dtype=np.int64),
        np.array(ref, dtype=bool),
        np.array(a, dtype=np.float64),
        np.array(b, dtype=np.float64),
    )


def run(rows: list[Row], **params: Any) -> PairSelection:
    return select_pairs(*columns(rows), **(PARAMS | params), backend="python")


def group(
    pid: int, samples: Sequence[tuple[float, float]], refined: tuple[float, float]
) -> list[Row]:
    """Samples get response ids 0..n-1, the refined response id n."""
    rows = [(pid, i, False, a, b) for i, (a, b) in enumerate(samples)]
    return rows + [(pid, len(samples), True, *refined)]


def pair_list(result: PairSelection) -> list[tuple[int, int, int]]:
    return list(
        zip(result.prompt_id.tolist(), result.chosen_id.tolist(), result.rejected_id.tolist())
    )


# An informative group: det(cov) of the samples is 9 (variances 3, covariance 0).
SQUARE = [(1.0, 1.0), (4.0, 1.0), (1.0, 4.0), (4.0, 4.0)]


# --------------------------------------------------------------------------- consistency


def test_refined_must_beat_every_sample() -> None:
    kept = run(group(1, SQUARE, (5.0, 5.0)))
    assert kept.kept_prompt_ids.tolist() == [1]
    for refined in [(5.0, 3.0), (3.0, 5.0), (0.0, 0.0)]:
        result = run(group(1, SQUARE, refined))
        assert result.kept_prompt_ids.tolist() == []
        assert result.stats["dropped_consistency"] == 1


def test_refined_tied_with_best_sample_is_inconsistent() -> None:
    assert run(group(1, SQUARE, (4.0, 9.0))).stats["dropped_consistency"] == 1
    assert run(group(1, SQUARE, (9.0, 4.0))).stats["dropped_consistency"] == 1


# --------------------------------------------------------------------------- informativeness


def test_det_exactly_rho_is_kept() -> None:
    assert run(group(1, SQUARE, (9.0, 9.0)), rho=9.0).kept_prompt_ids.tolist() == [1]
    above = run(group(1, SQUARE, (9.0, 9.0)), rho=math.nextafter(9.0, 0.0))
    assert above.kept_prompt_ids.tolist() == []
    assert above.stats["dropped_det_above_rho"] == 1


def test_collinear_samples_have_zero_det() -> None:
    result = run(group(1, [(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)], (9.0, 9.0)), rho=1e9)
    assert result.stats["dropped_det_zero"] == 1 and len(result) == 0


def test_constant_score_has_zero_det() -> None:
    result = run(group(1, [(1.0, 5.0), (2.0, 5.0), (3.0, 5.0)], (9.0, 9.0)), rho=1e9)
    assert result.stats["dropped_det_zero"] == 1


def test_two_samples_always_have_zero_det() -> None:
    assert run(group(1, [(1.0, 5.0), (4.0, 2.0)], (9.0, 9.0))).stats["dropped_det_zero"] == 1


def test_nearly_collinear_float_scores_count_as_zero_det() -> None:
    samples = [(0.1, 0.3), (0.2, 0.6), (0.7, 2.1)]  # b = 3a up to rounding
    assert run(group(1, samples, (9.0, 9.0))).stats["dropped_det_zero"] == 1


def test_refined_response_is_not_in_the_covariance() -> None:
    # With the refined row the scores would not be collinear; without it they are.
    result = run(group(1, [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)], (9.0, 5.0)))
    assert result.stats["dropped_det_zero"] == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10), st.integers(1, 10)), min_size=2, max_size=12))
def test_det_formula_matches_numpy_cov(samples: list[tuple[int, int]]) -> None:
    a = np.array([s[0] for s in samples], dtype=np.float64)
    b = np.array([s[1] for s in samples], dtype=np.float64)
    expected = float(np.linalg.det(np.cov(a, b)))
    refined = (11.0, 11.0)
    result = run(group(1, samples, refined), rho=max(expected, 1e-300))
    if abs(expected) < 1e-9:
        assert result.stats["dropped_det_zero"] == 1
    else:
        # Kept at rho = numpy's det up to rounding; dropped just below it.
        assert result.stats["groups_kept"] + result.stats["dropped_det_above_rho"] == 1
        assert run(group(1, samples, refined), rho=expected * (1 + 1e-9)).stats["groups_kept"] == 1
        assert run(group(1, samples, refined), rho=expected * (1 - 1e-9)).stats["groups_kept"] == 0


# --------------------------------------------------------------------------- filter switches


def test_consistency_off_keeps_groups_the_refined_answer_does_not_beat() -> None:
    rows = group(1, SQUARE, (3.0, 5.0)) + group(2, SQUARE, (5.0, 5.0))
    assert run(rows).kept_prompt_ids.tolist() == [2]
    off = run(rows, consistency=False)
    assert off.kept_prompt_ids.tolist() == [1, 2]
    assert off.stats["dropped_consistency"] == 0
    # Pairs come from every response of the group, the losing refined answer included.
    assert (1, 4, 0) in pair_list(off) and (1, 3, 4) in pair_list(off)


def test_informativeness_off_keeps_zero_and_large_det_groups() -> None:
    collinear = [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]
    rows = group(1, collinear, (5.0, 5.0)) + group(2, SQUARE, (5.0, 5.0))
    assert run(rows, rho=1.0).kept_prompt_ids.tolist() == []
    off = run(rows, rho=1.0, informativeness=False)
    assert off.kept_prompt_ids.tolist() == [1, 2]
    assert off.stats["dropped_det_zero"] == off.stats["dropped_det_above_rho"] == 0


def test_without_noise_filtering_only_malformed_groups_are_dropped() -> None:
    rows = (group(1, SQUARE, (0.0, 0.0)) + group(2, [(1.0, 1.0), (1.0, 1.0)], (0.0, 9.0))
            + [(3, 0, False, 1.0, 1.0), (3, 1, True, 9.0, 9.0)])
    result = run(rows, consistency=False, informativeness=False)
    assert result.kept_prompt_ids.tolist() == [1, 2]
    assert result.stats["dropped_malformed"] == 1


def test_switched_off_filters_take_the_reference_backend() -> None:
    rows = group(1, SQUARE, (3.0, 5.0)) + group(2, SQUARE, (5.0, 5.0))
    auto = select_pairs(*columns(rows), **PARAMS, consistency=False)
    assert pair_list(auto) == pair_list(run(rows, consistency=False))
    with pytest.raises(ValueError, match="consistency switched off needs backend='python'"):
        select_pairs(*columns(rows), **PARAMS, consistency=False, backend="rust")


# --------------------------------------------------------------------------- malformed groups


def test_group_of_one_is_malformed() -> None:
    result = run([(1, 0, True, 9.0, 9.0)])
    assert result.stats["dropped_malformed"] == 1 and result.stats["groups_in"] == 1


def test_group_needs_two_scored_samples() -> None:
    assert run(group(1, [(1.0, 1.0)], (9.0, 9.0))).stats["dropped_malformed"] == 1


def test_several_refined_rows_are_malformed() -> None:
    rows = group(1, SQUARE, (9.0, 9.0)) + [(1, 99, True, 8.0, 8.0)]
    assert run(rows).stats["dropped_malformed"] == 1


def test_group_without_refined_row_is_malformed() -> None:
    rows = [(1, i, False, a, b) for i, (a, b) in enumerate(SQUARE)]
    assert run(rows).stats["dropped_malformed"] == 1


# --------------------------------------------------------------------------- missing scores


def test_missing_scores_drop_rows_before_the_group_checks() -> None:
    # A second refined row with a missing score does not make the group malformed.
    rows = group(1, SQUARE, (9.0, 9.0)) + [(1, 50, True, NAN, 3.0), (1, 51, False, 2.0, NAN)]
    result = run(rows)
    assert result.kept_prompt_ids.tolist() == [1]
    assert result.stats["dropped_missing"] == 2
    assert not {50, 51} & set(result.chosen_id.tolist() + result.rejected_id.tolist())


def test_missing_refined_score_makes_group_malformed() -> None:
    result = run(group(1, SQUARE, (NAN, 9.0)))
    assert result.stats == result.stats | {"dropped_missing": 1, "dropped_malformed": 1}


def test_missing_sample_scores_can_leave_too_few_samples() -> None:
    result = run(group(1, [(1.0, 1.0), (NAN, 2.0), (3.0, NAN)], (9.0, 9.0)))
    assert result.stats["dropped_missing"] == 2 and result.stats["dropped_malformed"] == 1


def test_group_with_every_score_missing_is_counted() -> None:
    result = run([(7, 0, False, NAN, NAN), (7, 1, True, NAN, NAN)])
    assert result.stats["groups_in"] == 1 and result.stats["dropped_malformed"] == 1


# --------------------------------------------------------------------------- pairs


def test_pairs_are_lexicographic_over_samples_and_refined() -> None:
    result = run(group(3, SQUARE, (5.0, 5.0)), delta=0.0)
    # ids: 0=(1,1) 1=(4,1) 2=(1,4) 3=(4,4) 4=(5,5)
    assert pair_list(result) == [
        (3, 1, 0), (3, 1, 2), (3, 2, 0), (3, 3, 0), (3, 3, 1), (3, 3, 2),
        (3, 4, 0), (3, 4, 1), (3, 4, 2), (3, 4, 3),
    ]  # fmt: skip
    # (4,1) beats (1,4) on the primary score although its sum is equal: gap 0.
    assert result.gap[pair_list(result).index((3, 1, 2))] == 0.0


def test_equal_scores_make_no_pair() -> None:
    samples = [(2.0, 2.0), (2.0, 2.0), (5.0, 1.0), (1.0, 6.0)]
    result = run(group(1, samples, (9.0, 9.0)), delta=0.0)
    assert (1, 0, 1) not in pair_list(result) and (1, 1, 0) not in pair_list(result)


def test_pairs_need_distance_of_at_least_delta() -> None:
    result = run(group(1, SQUARE, (5.0, 5.0)), delta=3.0)
    listed = pair_list(result)
    assert (1, 1, 0) in listed  # distance exactly 3
    assert (1, 4, 3) not in listed  # distance 2
    assert (1, 1, 2) in listed  # distance 6, gap 0


def test_rows_in_any_order_give_the_same_result() -> None:
    rows = group(5, SQUARE, (5.0, 5.0)) + group(2, [(1, 3), (2, 1), (3, 2)], (6, 6))
    rows += group(-4, [(1, 3), (2, 1), (3, 2)], (3, 6))
    expected = run(rows)
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    result = run(shuffled)
    assert expected.kept_prompt_ids.tolist() == [2, 5]
    assert pair_list(result) == pair_list(expected) == sorted(pair_list(expected))
    np.testing.assert_array_equal(result.weight, expected.weight)
    assert result.stats == expected.stats


# --------------------------------------------------------------------------- weights


def test_weights_are_gap_over_mean_gap_to_the_alpha() -> None:
    result = run(group(1, SQUARE, (5.0, 5.0)), alpha=2.0)
    mean = result.gap.mean()
    np.testing.assert_allclose(result.weight, (result.gap / mean) ** 2, rtol=1e-15)
    assert np.isclose(run(group(1, SQUARE, (5.0, 5.0)), alpha=1.0).weight.mean(), 1.0)


def test_alpha_zero_gives_unit_weights() -> None:
    result = run(group(1, SQUARE, (5.0, 5.0)), alpha=0.0)
    assert result.weight.tolist() == [1.0] * len(result)


def test_zero_gaps_give_unit_weights() -> None:
    # Only (5,1) > (1,5) is far enough apart: its gap is 0, so every weight is 1.
    result = run(group(1, [(5.0, 1.0), (1.0, 5.0), (3.0, 2.0)], (6.0, 6.0)), delta=8.0, alpha=3.0)
    assert pair_list(result) == [(1, 0, 1)]
    assert result.gap.tolist() == [0.0] and result.weight.tolist() == [1.0]


def test_zero_gap_pair_among_others_gets_zero_weight() -> None:
    result = run(group(1, SQUARE, (5.0, 5.0)), delta=0.0, alpha=1.0)
    assert result.weight[pair_list(result).index((1, 1, 2))] == 0.0


# --------------------------------------------------------------------------- inputs and outputs


def test_empty_input_gives_empty_result() -> None:
    result = run([])
    assert len(result) == 0 and result.kept_prompt_ids.dtype == np.int64
    assert result.stats == dict.fromkeys(STAT_KEYS, 0)
    assert result.to_arrow().num_rows == 0


def test_result_dtypes_and_arrow_table() -> None:
    result = run(group(1, SQUARE, (5.0, 5.0)))
    for name in ("kept_prompt_ids", "prompt_id", "chosen_id", "rejected_id"):
        assert getattr(result, name).dtype == np.int64
    assert result.gap.dtype == result.weight.dtype == np.float64
    table = result.to_arrow()
    assert table.column_names == ["prompt_id", "chosen_id", "rejected_id", "gap", "weight"]
    assert table.num_rows == len(result) == result.stats["pairs"]
    assert list(result.stats) == list(STAT_KEYS)


def test_pyarrow_input_with_nulls_matches_numpy() -> None:
    rows = group(1, SQUARE, (5.0, 5.0)) + group(2, [(1, 3), (2, 1), (3, 2)], (6, 6))
    rows += [(1, 77, False, NAN, 3.0)]
    expected = run(rows)
    pid, rid, ref, a, b = columns(rows)
    a_arrow = pa.chunked_array(
        [pa.array(a[:4]), pa.array([None if math.isnan(x) else x for x in a[4:]])]
    )
    result = select_pairs(
        pa.array(pid),
        pa.array(rid.astype(np.int32)),
        pa.chunked_array([pa.array(ref[:3]), pa.array(ref[3:])]),
        a_arrow,
        pa.array(b.astype(np.float32)),
        **PARAMS,
        backend="python",
    )
    assert pair_list(result) == pair_list(expected) and result.stats == expected.stats
    np.testing.assert_array_equal(result.weight, expected.weight)


def test_integer_and_float32_scores_are_accepted() -> None:
    pid, rid, ref, a, b = columns(group(1, SQUARE, (5.0, 5.0)))
    ints = select_pairs(
        pid, rid.astype(np.int32), ref, a.astype(np.int64), b.astype(np.float32), **PARAMS
    )
    assert pair_list(ints) == pair_list(run(group(1, SQUARE, (5.0, 5.0))))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": -1.0}, "rho"),
        ({"rho": NAN}, "rho"),
        ({"delta": -0.5}, "delta"),
        ({"delta": math.inf}, "delta"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": NAN}, "alpha"),
        ({"backend": "fortran"}, "backend"),
    ],
)
def test_bad_parameters_are_rejected(change: dict[str, Any], message: str) -> None:
    kwargs: dict[str, Any] = PARAMS | {"backend": "python"} | change
    with pytest.raises(ValueError, match=message):
        select_pairs(*columns(group(1, SQUARE, (5.0, 5.0))), **kwargs)


@pytest.mark.parametrize(
    ("index", "value", "message"),
    [
        (0, np.array([1.0, 1, 1, 1, 1]), "prompt_id .*integer"),
        (0, np.array([1, 1, 1, 1, 1], dtype=np.uint64), "prompt_id .*integer"),
        (1, np.array(["a", "b", "c", "d", "e"]), "response_id .*integer"),
        (2, np.array([0, 0, 0, 0, 1]), "is_refined .*bool"),
        (3, np.array([1.0, 2, 3, math.inf, 5]), "score_a .*infinite"),
        (4, np.array([1.0, 2, 3, -math.inf, 5]), "score_b .*infinite"),
        (4, np.array([True, False, True, False, True]), "score_b .*real"),
        (3, np.array([1.0, 2.0]), "equal lengths"),
        (1, np.zeros((5, 1), dtype=np.int64), "one-dimensional"),
        (1, np.array([0, 1, 1, 3, 4]), "duplicate response_id 1 in prompt_id 1"),
        (0, pa.array([1, None, 1, 1, 1]), "prompt_id contains 1 null"),
    ],
)
def test_bad_columns_are_rejected(index: int, value: Any, message: str) -> None:
    cols: list[Any] = list(columns(group(1, SQUARE, (5.0, 5.0))))
    cols[index] = value
    with pytest.raises(ValueError, match=message):
        select_pairs(*cols, **PARAMS, backend="python")


def test_parameters_must_be_numbers() -> None:
    with pytest.raises(TypeError, match="rho must be a real number"):
        select_pairs(*columns(group(1, SQUARE, (5.0, 5.0))), rho="10", delta=2.0, alpha=1.0)  # type: ignore[arg-type]


def test_rust_backend_requires_the_native_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pairs_module, "_native_select", lambda: None)
    with pytest.raises(ImportError, match="_native"):
        select_pairs(*columns(group(1, SQUARE, (5.0, 5.0))), **PARAMS, backend="rust")
    auto = select_pairs(*columns(group(1, SQUARE, (5.0, 5.0))), **PARAMS, backend="auto")
    assert pair_list(auto) == pair_list(run(group(1, SQUARE, (5.0, 5.0))))


# --------------------------------------------------------------------------- slow reference


def slow_select(rows: list[Row], rho: float, delta: float, alpha: float) -> dict[str, Any]:
    """DESIGN.md steps 4-6 one group at a time, with pairs.py's documented det rule."""
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats["rows_in"] = len(rows)
    groups: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row[0]].append(row)
    stats["groups_in"] = len(groups)
    kept: list[int] = []
    pairs: list[tuple[int, int, int, float]] = []
    for pid in sorted(groups):
        scored = []
        for row in groups[pid]:
            if math.isnan(row[3]) or math.isnan(row[4]):
                stats["dropped_missing"] += 1
            else:
                scored.append(row)
        refined = [r for r in scored if r[2]]
        samples = sorted((r for r in scored if not r[2]), key=lambda r: r[1])
        if len(refined) != 1 or len(samples) < 2:
            stats["dropped_malformed"] += 1
            continue
        best_a = max(r[3] for r in samples)
        best_b = max(r[4] for r in samples)
        if not (refined[0][3] > best_a and refined[0][4] > best_b):
            stats["dropped_consistency"] += 1
            continue
        n = len(samples)
        sa = sb = saa = sbb = sab = 0.0
        for r in samples:
            sa, sb = sa + r[3], sb + r[4]
            saa, sbb, sab = saa + r[3] * r[3], sbb + r[4] * r[4], sab + r[3] * r[4]
        caa, cbb, cab = n * saa - sa * sa, n * sbb - sb * sb, n * sab - sa * sb
        d = caa * cbb - cab * cab
        if d <= 1e-12 * (caa * cbb):
            stats["dropped_det_zero"] += 1
            continue
        if d / (n * n * (n - 1) * (n - 1)) > rho:
            stats["dropped_det_above_rho"] += 1
            continue
        kept.append(pid)
        for plus in scored:
            for minus in scored:
                if (plus[3], plus[4]) > (minus[3], minus[4]) and (
                    abs(plus[3] - minus[3]) + abs(plus[4] - minus[4]) >= delta
                ):
                    pairs.append(
                        (pid, plus[1], minus[1], abs(plus[3] + plus[4] - minus[3] - minus[4]))
                    )
    pairs.sort()
    gaps = [p[3] for p in pairs]
    mean = sum(gaps) / len(gaps) if gaps else 0.0
    weights = [1.0 if mean == 0 else (g / mean) ** alpha for g in gaps]
    stats["groups_kept"], stats["pairs"] = len(kept), len(pairs)
    return {
        "kept": kept,
        "pairs": [p[:3] for p in pairs],
        "gaps": gaps,
        "weights": weights,
        "stats": stats,
    }


# Scores on a half-point grid (sums are exact) with ~10 % missing.
score = st.one_of(st.integers(1, 20).map(lambda k: k / 2), st.just(NAN))
scores = st.tuples(score, score)


@st.composite
def scored_rows(draw: st.DrawFn) -> list[Row]:
    rows: list[Row] = []
    prompt_ids = draw(st.lists(st.integers(-5, 40), unique=True, max_size=8))
    for pid in prompt_ids:
        n = draw(st.integers(0, 6))
        response_ids = draw(
            st.lists(st.integers(0, 30), min_size=n + 2, max_size=n + 2, unique=True)
        )
        top = draw(st.sampled_from([2, 4, 10]))  # narrow ranges give small determinants
        samples = [draw(st.tuples(st.integers(1, top), st.integers(1, top))) for _ in range(n)]
        for rid, sample in zip(response_ids, samples, strict=False):
            a, b = draw(scores) if draw(st.integers(0, 9)) == 0 else map(float, sample)
            rows.append((pid, rid, False, a, b))
        n_refined = draw(st.sampled_from([1, 1, 1, 1, 0, 2]))
        for rid in response_ids[n : n + n_refined]:
            best = max([s[0] for s in samples] + [0]), max([s[1] for s in samples] + [0])
            if draw(st.integers(0, 9)) < 8:  # mostly consistent, sometimes tied or random
                a = float(best[0] + draw(st.integers(0, 3)))
                b = float(best[1] + draw(st.integers(0, 3)))
            else:
                a, b = draw(scores)
            rows.append((pid, rid, True, a, b))
    order = draw(st.permutations(range(len(rows))))
    return [rows[i] for i in order]


@settings(max_examples=200, deadline=None)
@given(
    rows=scored_rows(),
    rho=st.sampled_from([0.05, 0.5, 2.0, 4.5, 9.0, 20.0, 1e9]),
    delta=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 7.5]),
    alpha=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 4.0]),
)
def test_matches_slow_reference(rows: list[Row], rho: float, delta: float, alpha: float) -> None:
    expected = slow_select(rows, rho, delta, alpha)
    result = run(rows, rho=rho, delta=delta, alpha=alpha)
    assert result.stats == expected["stats"]
    assert result.kept_prompt_ids.tolist() == expected["kept"]
    assert pair_list(result) == expected["pairs"]
    assert result.gap.tolist() == expected["gaps"]
    np.testing.assert_allclose(result.weight, expected["weights"], rtol=1e-12, atol=0)
    accounted = sum(
        result.stats[k] for k in STAT_KEYS if k.startswith("dropped_") and k != "dropped_missing"
    )
    assert accounted + result.stats["groups_kept"] == result.stats["groups_in"]
