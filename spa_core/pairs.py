"""Dual-criterion denoising, lexicographic pairs and uncertainty weights (DESIGN.md steps 4-6).

``select_pairs`` takes one row per scored response (columnar, rows in any order, groups
ragged) and returns the preference pairs of the groups that survive denoising.

Rules, in the order they are applied to each prompt group:

1. Rows whose ``score_a`` or ``score_b`` is missing (NaN or Arrow null) are dropped.
2. *Malformed*: a group must keep exactly one refined row and at least 2 sampled rows.
3. *Consistency*: ``refined.a > max(sample.a)`` and ``refined.b > max(sample.b)``.
4. *Informativeness*: ``Sigma`` is the sample covariance (ddof=1, as ``numpy.cov``) of the
   sampled ``(a, b)`` pairs, refined excluded; the group is kept when ``0 < det(Sigma) <= rho``.

   Rules 3 and 4 each have a switch (``consistency``, ``informativeness``) for the paper's
   ablation without noise filtering (its Fig. 6); a rule switched off drops nothing and
   counts nothing. The native backend applies both rules: with one off, ``"auto"`` uses
   this module's reference (vectorised NumPy) and ``"rust"`` is refused.
5. *Pairs* over all responses of a kept group: ``(y+, y-)`` when ``(a+, b+) >lex (a-, b-)``
   and ``|a+ - a-| + |b+ - b-| >= delta``; ``gap = |(a+ + b+) - (a- + b-)|``.
6. *Weights*: ``(gap / mean gap)^alpha``, the mean over the whole pair set; all 1 when
   every gap is 0 (or alpha is 0).

Arithmetic is float64 and fully specified, so the native backend reproduces it bit for bit:

* sums over a group's samples (``Sa, Sb, Saa, Sbb, Sab``) are sequential, in ascending
  ``response_id`` order, starting from 0.0;
* ``Caa = n*Saa - Sa*Sa``, ``Cbb = n*Sbb - Sb*Sb``, ``Cab = n*Sab - Sa*Sb`` (each is
  ``n(n-1)`` times an entry of Sigma) and ``D = Caa*Cbb - Cab*Cab``;
  ``det(Sigma) = D / (n*n*(n-1)*(n-1))``;
* ``det(Sigma)`` counts as zero when ``D <= 1e-12 * (Caa*Cbb)``, i.e. when either variance is
  zero or the squared correlation is within 1e-12 of 1. For integer scores every term is an
  exact integer (while ``Caa*Cbb < 1e12``, e.g. scores 1..10 and up to 200 samples), so there
  the test is the exact ``D == 0``;
* the mean gap is ``total / pairs`` where ``total`` sums, in ascending ``prompt_id`` order,
  each kept group's gap sum (itself sequential in output order);
* ``weight = pow(gap / mean, alpha)`` with the C library's ``pow``.

For integer (or other exactly summable) scores all of this is exact arithmetic anyway.

Backends: this module's NumPy code is the reference; ``spa_core._native`` (rust/spa-pairs)
gives the same arrays and stats bit for bit, reads NumPy columns in place with the GIL
released, and runs in parallel (fastest when rows arrive sorted by prompt_id).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["STAT_KEYS", "Backend", "PairSelection", "native_available", "revision_pairs",
           "select_pairs"]

Backend = Literal["auto", "python", "rust"]

#: Keys of :attr:`PairSelection.stats`, in a stable order.
STAT_KEYS: tuple[str, ...] = (
    "rows_in",
    "dropped_missing",
    "dropped_malformed",
    "dropped_consistency",
    "dropped_det_zero",
    "dropped_det_above_rho",
    "groups_in",
    "groups_kept",
    "pairs",
)

#: ``det(Sigma)`` is zero when ``D <= DET_ZERO_RELATIVE * Caa * Cbb`` (see the module docstring).
DET_ZERO_RELATIVE = 1e-12

_FloatArray = np.ndarray[Any, np.dtype[np.float64]]
_IntArray = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True, eq=False)
class PairSelection:
    """The pairs of the kept groups, sorted by (prompt_id, chosen_id, rejected_id)."""

    kept_prompt_ids: _IntArray
    prompt_id: _IntArray
    chosen_id: _IntArray
    rejected_id: _IntArray
    gap: _FloatArray
    weight: _FloatArray
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.prompt_id.shape[0])

    def to_arrow(self) -> pa.Table:
        """The pair columns as a pyarrow Table (zero-copy from the NumPy arrays)."""
        import pyarrow as pa

        return pa.table(
            {
                "prompt_id": self.prompt_id,
                "chosen_id": self.chosen_id,
                "rejected_id": self.rejected_id,
                "gap": self.gap,
                "weight": self.weight,
            }
        )


def native_available() -> bool:
    """Whether the compiled backend (``spa_core._native.select_pairs``) is importable."""
    return _native_select() is not None


def select_pairs(
    prompt_id: Any,
    response_id: Any,
    is_refined: Any,
    score_a: Any,
    score_b: Any,
    *,
    rho: float,
    delta: float,
    alpha: float,
    consistency: bool = True,
    informativeness: bool = True,
    backend: Backend = "auto",
) -> PairSelection:
    """Denoise scored groups and build weighted lexicographic preference pairs.

    Columns are equal-length NumPy arrays or pyarrow (Chunked)Arrays: ``prompt_id`` and
    ``response_id`` integers, ``is_refined`` bool, scores real numbers with NaN or null for
    missing. ``(prompt_id, response_id)`` must be unique. ``backend`` is ``"python"`` (this
    module's reference), ``"rust"`` (the native core) or ``"auto"`` (native when built).
    Raises ValueError for bad values or dtypes, TypeError for arguments of the wrong kind.
    """
    rho, delta, alpha = _check_parameters(rho, delta, alpha)
    columns = _as_columns(prompt_id, response_id, is_refined, score_a, score_b)
    if backend not in ("auto", "python", "rust"):
        raise ValueError(f"backend must be 'auto', 'python' or 'rust', not {backend!r}")
    filters = {"consistency": bool(consistency), "informativeness": bool(informativeness)}
    off = [name for name, on in filters.items() if not on]
    if backend == "rust" and off:
        raise ValueError(f"backend='rust' applies every filter; {' and '.join(off)} switched "
                         "off needs backend='python' or 'auto'")
    native = None if backend == "python" or off else _native_select()
    if native is None:
        if backend == "rust":
            raise ImportError("backend='rust' needs spa_core._native.select_pairs (not built)")
        return _select_python(*columns, rho=rho, delta=delta, alpha=alpha, **filters)
    return _select_native(native, *columns, rho=rho, delta=delta, alpha=alpha)


# --------------------------------------------------------------------------- validation


def _check_parameters(rho: float, delta: float, alpha: float) -> tuple[float, float, float]:
    values = []
    for name, value in (("rho", rho), ("delta", delta), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        values.append(float(value))
    rho_f, delta_f, alpha_f = values
    if not rho_f > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    if not (delta_f >= 0 and math.isfinite(delta_f)):
        raise ValueError(f"delta must be finite and >= 0, got {delta!r}")
    if not (alpha_f >= 0 and math.isfinite(alpha_f)):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
    return rho_f, delta_f, alpha_f


def _is_arrow(x: Any) -> bool:
    return type(x).__module__.startswith("pyarrow")


def _from_arrow(name: str, x: Any, *, nulls_to_nan: bool) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(x, pa.ChunkedArray):
        x = x.combine_chunks()
    if not isinstance(x, pa.Array):
        raise TypeError(f"{name}: expected a pyarrow Array or ChunkedArray, not {type(x).__name__}")
    if x.null_count:
        if not nulls_to_nan:
            raise ValueError(f"{name} contains {x.null_count} null value(s)")
        if not (pa.types.is_floating(x.type) or pa.types.is_integer(x.type)):
            raise ValueError(f"{name} must be a numeric column, got Arrow type {x.type}")
        x = pc.fill_null(x.cast(pa.float64()), float("nan"))
    return np.asarray(x.to_numpy(zero_copy_only=False))


def _column(name: str, x: Any, *, nulls_to_nan: bool = False) -> np.ndarray:
    if _is_arrow(x):
        arr = _from_arrow(name, x, nulls_to_nan=nulls_to_nan)
    else:
        arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _integer_column(name: str, x: Any, *, keep_int32: bool = False) -> np.ndarray:
    """int64 (int32 kept as is where ``keep_int32``: the native core reads it in place)."""
    arr = _column(name, x)
    integer = arr.dtype.kind in "iu" and np.can_cast(arr.dtype, np.int64, "safe")
    if not integer and not (arr.size == 0 and arr.dtype.kind == "f"):  # np.asarray([]) is float
        raise ValueError(f"{name} must have an integer dtype (at most int64), got {arr.dtype}")
    if keep_int32 and arr.dtype == np.int32:
        return arr
    return arr.astype(np.int64, copy=False)


def _score_column(name: str, x: Any) -> np.ndarray:
    """float32 stays float32 (the native core reads it in place); other reals become float64."""
    arr = _column(name, x, nulls_to_nan=True)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must have a real dtype, got {arr.dtype}")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    return arr


def _as_columns(
    prompt_id: Any, response_id: Any, is_refined: Any, score_a: Any, score_b: Any
) -> tuple[_IntArray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dtype and length checks only (no pass over the data: each backend does its own)."""
    pid = _integer_column("prompt_id", prompt_id)
    rid = _integer_column("response_id", response_id, keep_int32=True)
    refined = _column("is_refined", is_refined)
    if refined.dtype != np.bool_ and not (refined.size == 0 and refined.dtype.kind == "f"):
        raise ValueError(f"is_refined must have a bool dtype, got {refined.dtype}")
    refined = refined.astype(np.bool_, copy=False)
    a = _score_column("score_a", score_a)
    b = _score_column("score_b", score_b)
    lengths = {"prompt_id": len(pid), "response_id": len(rid), "is_refined": len(refined)}
    lengths |= {"score_a": len(a), "score_b": len(b)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"columns must have equal lengths, got {lengths}")
    return pid, rid, refined, a, b


# --------------------------------------------------------------------------- reference


def _sequential_segment_sums(
    values: _FloatArray, segment: _IntArray, n_segments: int
) -> _FloatArray:
    """Per-segment sums, each added left to right from 0.0 (``segment`` is sorted)."""
    sums = np.zeros(n_segments, dtype=np.float64)
    if values.size == 0:
        return sums
    starts = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
    position = np.arange(values.size) - np.repeat(starts, np.diff(np.r_[starts, values.size]))
    by_position = np.argsort(position, kind="stable")
    bounds = np.searchsorted(position[by_position], np.arange(position.max() + 2))
    for k in range(len(bounds) - 1):
        rows = by_position[bounds[k] : bounds[k + 1]]
        sums[segment[rows]] += values[rows]  # each segment at most once per position k
    return sums


def _select_python(
    prompt_id: _IntArray,
    response_id: np.ndarray,
    is_refined: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    rho: float,
    delta: float,
    alpha: float,
    consistency: bool = True,
    informativeness: bool = True,
) -> PairSelection:
    for name, column in (("score_a", score_a), ("score_b", score_b)):
        if np.isinf(column).any():
            raise ValueError(f"{name} contains infinite values (use NaN or null for missing)")
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats["rows_in"] = n_rows = int(prompt_id.shape[0])

    order = np.lexsort((response_id, prompt_id))
    pid, rid, refined = prompt_id[order], response_id[order], is_refined[order]
    a, b = score_a[order].astype(np.float64), score_b[order].astype(np.float64)

    new_group = np.r_[True, pid[1:] != pid[:-1]] if n_rows else np.zeros(0, dtype=bool)
    duplicate = ~new_group[1:] & (rid[1:] == rid[:-1])
    if duplicate.any():
        at = int(np.argmax(duplicate)) + 1
        raise ValueError(f"duplicate response_id {rid[at]} in prompt_id {pid[at]}")
    group_pid = pid[new_group]
    n_groups = stats["groups_in"] = int(group_pid.shape[0])

    scored = ~(np.isnan(a) | np.isnan(b))
    stats["dropped_missing"] = int(n_rows - np.count_nonzero(scored))
    gid = (np.cumsum(new_group) - 1)[scored]
    pid, rid, refined, a, b = pid[scored], rid[scored], refined[scored], a[scored], b[scored]

    n_refined = np.bincount(gid[refined], minlength=n_groups)
    n_samples = np.bincount(gid[~refined], minlength=n_groups)
    well_formed = (n_refined == 1) & (n_samples >= 2)
    stats["dropped_malformed"] = int(n_groups - np.count_nonzero(well_formed))

    ref_a = np.full(n_groups, np.nan)
    ref_b = np.full(n_groups, np.nan)
    ref_a[gid[refined]] = a[refined]  # meaningful where n_refined == 1
    ref_b[gid[refined]] = b[refined]
    sample = ~refined
    s_gid, s_a, s_b = gid[sample], a[sample], b[sample]
    max_a = np.full(n_groups, -np.inf)
    max_b = np.full(n_groups, -np.inf)
    np.maximum.at(max_a, s_gid, s_a)
    np.maximum.at(max_b, s_gid, s_b)
    consistent = well_formed & (ref_a > max_a) & (ref_b > max_b) if consistency else well_formed
    stats["dropped_consistency"] = int(np.count_nonzero(well_formed & ~consistent))

    n = n_samples.astype(np.float64)
    sa = _sequential_segment_sums(s_a, s_gid, n_groups)
    sb = _sequential_segment_sums(s_b, s_gid, n_groups)
    saa = _sequential_segment_sums(s_a * s_a, s_gid, n_groups)
    sbb = _sequential_segment_sums(s_b * s_b, s_gid, n_groups)
    sab = _sequential_segment_sums(s_a * s_b, s_gid, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        caa = n * saa - sa * sa
        cbb = n * sbb - sb * sb
        cab = n * sab - sa * sb
        d = caa * cbb - cab * cab
        det_zero = d <= DET_ZERO_RELATIVE * (caa * cbb)
        det = d / (n * n * (n - 1) * (n - 1))
    if not informativeness:
        det_zero, det = np.zeros(n_groups, dtype=bool), np.zeros(n_groups)
    informative = consistent & ~det_zero
    stats["dropped_det_zero"] = int(np.count_nonzero(consistent & det_zero))
    kept = informative & (det <= rho)
    stats["dropped_det_above_rho"] = int(np.count_nonzero(informative & ~kept))
    stats["groups_kept"] = int(np.count_nonzero(kept))
    kept_prompt_ids = group_pid[kept].astype(np.int64)

    # Pairs: every ordered (i, j) inside a kept group, i and j in ascending response_id, so
    # the candidates already come sorted by (prompt_id, chosen_id, rejected_id).
    rows = np.flatnonzero(kept[gid])
    k_gid = gid[rows]
    group_size = np.bincount(k_gid, minlength=n_groups)[k_gid]
    first = rows[np.searchsorted(k_gid, k_gid)]  # each row's group's first row
    i = np.repeat(rows, group_size)
    j_offset = np.arange(i.size) - np.repeat(np.cumsum(group_size) - group_size, group_size)
    j = np.repeat(first, group_size) + j_offset
    a_i, a_j, b_i, b_j = a[i], a[j], b[i], b[j]
    lex_greater = (a_i > a_j) | ((a_i == a_j) & (b_i > b_j))
    far_enough = np.abs(a_i - a_j) + np.abs(b_i - b_j) >= delta
    hit = lex_greater & far_enough
    i, j = i[hit], j[hit]
    gap = np.abs((a[i] + b[i]) - (a[j] + b[j]))
    pair_group = gid[i]
    stats["pairs"] = n_pairs = int(i.size)

    group_gap = _sequential_segment_sums(gap, pair_group, n_groups)[kept]
    total = float(np.cumsum(group_gap)[-1]) if group_gap.size else 0.0
    if n_pairs == 0 or total == 0.0 or alpha == 0.0:
        weight = np.ones(n_pairs, dtype=np.float64)
    else:
        ratio = gap / (total / n_pairs)
        distinct, inverse = np.unique(ratio, return_inverse=True)
        weight = np.array([math.pow(x, alpha) for x in distinct.tolist()])[inverse]

    return PairSelection(
        kept_prompt_ids=kept_prompt_ids,
        prompt_id=pid[i].astype(np.int64),
        chosen_id=rid[i].astype(np.int64),
        rejected_id=rid[j].astype(np.int64),
        gap=gap.astype(np.float64),
        weight=weight.astype(np.float64).reshape(-1),
        stats=stats,
    )


# --------------------------------------------------------------------------- native


def _native_select() -> Any:
    try:
        from spa_core import _native
    except ImportError:
        return None
    return getattr(_native, "select_pairs", None)


def _select_native(
    native: Any,
    prompt_id: _IntArray,
    response_id: np.ndarray,
    is_refined: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    rho: float,
    delta: float,
    alpha: float,
) -> PairSelection:
    if score_a.dtype != score_b.dtype:  # the core reads both scores with one element type
        score_a, score_b = score_a.astype(np.float64), score_b.astype(np.float64)
    out = native(
        *(
            np.ascontiguousarray(column, dtype=column.dtype.newbyteorder("="))  # no-op normally
            for column in (prompt_id, response_id, is_refined, score_a, score_b)
        ),
        rho,
        delta,
        alpha,
    )
    return PairSelection(
        kept_prompt_ids=out["kept_prompt_ids"],
        prompt_id=out["prompt_id"],
        chosen_id=out["chosen_id"],
        rejected_id=out["rejected_id"],
        gap=out["gap"],
        weight=out["weight"],
        stats={key: int(out["stats"][key]) for key in STAT_KEYS},
    )


def revision_pairs(prompt_id: Any, response_id: Any, is_refined: Any, present: Any,
                   score_a: Any, score_b: Any) -> PairSelection:
    """The Self-Criticism baseline's pairs: in each prompt's group, its revision (the refined
    response) over the sample it revised (response 0), when both have a text (`present`).

    No denoising and no weighting: every weight is 1, and `gap` is the pair's score gap where
    both were scored (0 otherwise), for the report only. Stats as `select_pairs` counts them:
    responses without a text under `dropped_missing`, groups without both under
    `dropped_malformed`.
    """
    pid = np.asarray(prompt_id, dtype=np.int64)
    rid = np.asarray(response_id, dtype=np.int64)
    refined = np.asarray(is_refined, dtype=bool)
    ok = np.asarray(present, dtype=bool)
    a, b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    revision = refined & ok
    original = ~refined & ok & (rid == 0)
    kept = np.intersect1d(pid[revision], pid[original])  # sorted, unique
    chosen_row = np.flatnonzero(revision)[np.argsort(pid[revision], kind="stable")]
    chosen_row = chosen_row[np.isin(pid[chosen_row], kept)]
    rejected_row = np.flatnonzero(original)[np.argsort(pid[original], kind="stable")]
    rejected_row = rejected_row[np.isin(pid[rejected_row], kept)]
    if np.unique(pid[chosen_row]).size != chosen_row.size:
        raise ValueError("a prompt has more than one revision")
    with np.errstate(invalid="ignore"):
        gap = np.abs((a[chosen_row] + b[chosen_row]) - (a[rejected_row] + b[rejected_row]))
    groups = int(np.unique(pid).size)
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats |= {"rows_in": int(pid.size), "groups_in": groups,
              "dropped_missing": int(pid.size - np.count_nonzero(ok)),
              "dropped_malformed": groups - int(kept.size), "groups_kept": int(kept.size),
              "pairs": int(kept.size)}
    return PairSelection(
        kept_prompt_ids=kept,
        prompt_id=kept.copy(),
        chosen_id=rid[chosen_row],
        rejected_id=rid[rejected_row],
        gap=np.nan_to_num(gap, nan=0.0),
        weight=np.ones(kept.size, dtype=np.float64),
        stats=stats,
    )
