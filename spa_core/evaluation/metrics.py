"""Evaluation metrics: HH_lambda, pairwise win rates, bootstrap intervals, the RV coefficient.

Pure NumPy; every function states its formula. Missing values (unparsed judge answers) are
the caller's to count: these functions take only the values that exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "HH_LAMBDAS",
    "Interval",
    "Outcome",
    "WinRates",
    "bootstrap_interval",
    "combine_orders",
    "hh_lambda",
    "rv_coefficient",
    "rv_curve",
    "win_rates",
]

#: The paper's weights of the primary objective in HH_lambda (Table 3).
HH_LAMBDAS = (5, 10, 20)
Outcome = Literal["win", "tie", "loss"]


def hh_lambda(primary: float, helpfulness: float, lam: float) -> float:
    """`(lam * S_primary + S_help) / (lam + 1)`: helpfulness counts, the primary more."""
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    return (lam * primary + helpfulness) / (lam + 1)


def combine_orders(first: str | None, swapped: str | None) -> Outcome | None:
    """One comparison judged in both orders, to cancel position bias.

    `first` is the verdict with the candidate (after training) shown as A, `swapped` with it
    shown as B; each is "A", "B", "tie" or None (unparsed). The candidate wins when the
    verdicts favour it on balance (+1 per order it wins, -1 per order it loses), ties at
    0; None when either order is unparsed.
    """
    if first is None or swapped is None:
        return None
    points = {"A": 1, "B": -1, "tie": 0}
    if first not in points or swapped not in points:
        raise ValueError(f"verdicts are 'A', 'B' or 'tie', got {first!r} and {swapped!r}")
    total = points[first] - points[swapped]
    return "win" if total > 0 else "loss" if total < 0 else "tie"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class WinRates:
    """Win, tie and loss rates of the candidate over the comparisons that were parsed."""

    win: Interval
    tie: Interval
    loss: Interval
    n: int
    unparsed: int


def bootstrap_interval(values: ArrayLike, statistic: Callable[[NDArray[np.float64]], float]
                       = np.mean, *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap: resample with replacement `resamples` times (fixed seed)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        nan = float("nan")
        return Interval(nan, nan, nan)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, x.size, size=(resamples, x.size))
    stats = np.array([statistic(x[row]) for row in draws])
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return Interval(float(statistic(x)), float(low), float(high))


def win_rates(outcomes: Sequence[Outcome | None], *, seed: int = 0) -> WinRates:
    """Rates of each outcome among parsed comparisons, each with a bootstrap interval."""
    parsed = [o for o in outcomes if o is not None]
    unparsed = len(outcomes) - len(parsed)

    def rate(kind: Outcome) -> Interval:
        return bootstrap_interval([o == kind for o in parsed], seed=seed)

    return WinRates(rate("win"), rate("tie"), rate("loss"), len(parsed), unparsed)


def rv_coefficient(x: ArrayLike, y: ArrayLike) -> float:
    """Escoufier's RV coefficient of two column-centred configurations of the same samples:
    `tr(XX'YY') / sqrt(tr((XX')^2) tr((YY')^2))`, in [0, 1] (1: same configuration up to
    rotation and scale). `x` and `y` are (samples, variables), e.g. two judges' scores."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x and y need the same samples, got {a.shape[0]} and {b.shape[0]}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    sa, sb = a @ a.T, b @ b.T
    denominator = np.sqrt(np.sum(sa * sa) * np.sum(sb * sb))
    return float(np.sum(sa * sb) / denominator) if denominator > 0 else float("nan")


def rv_curve(weak: ArrayLike, strong: ArrayLike, uncertainty: ArrayLike,
             fractions: Sequence[float] = tuple(np.linspace(0.1, 1.0, 10))
             ) -> list[tuple[float, float]]:
    """The RV coefficient between a weak and a strong judge as samples are added in order
    of increasing uncertainty (the paper's Fig. 3, with det(Sigma) as the uncertainty):
    [(fraction kept, RV)], a way to choose rho on one's own data."""
    w = np.asarray(weak, dtype=np.float64)
    s = np.asarray(strong, dtype=np.float64)
    order = np.argsort(np.asarray(uncertainty, dtype=np.float64), kind="stable")
    out = []
    for fraction in fractions:
        k = max(int(round(fraction * order.size)), 2)
        keep = order[:k]
        out.append((float(fraction), rv_coefficient(w[keep], s[keep])))
    return out
