"""The native core of spa_core, built by maturin from rust/spa-py (pure logic in rust/spa-pairs).

Private: call it through :func:`spa_core.pairs.select_pairs`, which validates and converts
columns (Arrow, other dtypes, nulls) and returns a ``PairSelection``.
"""

from typing import TypedDict, type_check_only

import numpy as np
from numpy.typing import NDArray

__all__ = ["__version__", "select_pairs"]

__version__: str

@type_check_only
class _Stats(TypedDict):
    rows_in: int
    dropped_missing: int
    dropped_malformed: int
    dropped_consistency: int
    dropped_det_zero: int
    dropped_det_above_rho: int
    groups_in: int
    groups_kept: int
    pairs: int

@type_check_only
class _Selection(TypedDict):
    kept_prompt_ids: NDArray[np.int64]
    prompt_id: NDArray[np.int64]
    chosen_id: NDArray[np.int64]
    rejected_id: NDArray[np.int64]
    gap: NDArray[np.float64]
    weight: NDArray[np.float64]
    stats: _Stats

def select_pairs(
    prompt_id: NDArray[np.int64],
    response_id: NDArray[np.int64] | NDArray[np.int32],
    is_refined: NDArray[np.bool_],
    score_a: NDArray[np.float64] | NDArray[np.float32],
    score_b: NDArray[np.float64] | NDArray[np.float32],
    rho: float,
    delta: float,
    alpha: float,
) -> _Selection:
    """Denoise scored groups and build weighted lexicographic pairs (DESIGN.md steps 4-6).

    Columns are 1-D C-contiguous NumPy arrays of equal length, read in place with the GIL
    released; the scores share one dtype and NaN marks a missing score. Returns the pair
    columns (sorted by prompt_id, chosen_id, rejected_id), the kept prompt ids and counts.
    Raises TypeError for a wrong dtype or a non-array, ValueError for bad values
    (lengths, parameters, infinite scores, duplicate response ids in a prompt).
    """
