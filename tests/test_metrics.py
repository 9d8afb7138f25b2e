"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spa_core.evaluation.metrics import (
    bootstrap_interval,
    combine_orders,
    hh_lambda,
    rv_coefficient,
    rv_curve,
    win_rates,
)


def test_hh_lambda_weights_the_primary_objective() -> None:
    assert hh_lambda(8.0, 2.0, 5) == pytest.approx((5 * 8 + 2) / 6)  # 7.0
    assert hh_lambda(8.0, 2.0, 0) == 2.0
    assert hh_lambda(6.0, 9.0, 20) == pytest.approx(129 / 21)
    with pytest.raises(ValueError, match="lambda"):
        hh_lambda(1, 1, -1)


@pytest.mark.parametrize(("first", "swapped", "outcome"), [
    ("A", "B", "win"),     # preferred in both positions
    ("A", "tie", "win"),
    ("A", "A", "tie"),     # always the first position: pure position bias cancels
    ("B", "B", "tie"),
    ("tie", "tie", "tie"),
    ("B", "A", "loss"),
    ("tie", "A", "loss"),
    (None, "A", None),
])
def test_both_orders_cancel_position_bias(first: str | None, swapped: str | None,
                                          outcome: str | None) -> None:
    assert combine_orders(first, swapped) == outcome


def test_win_rates_count_ties_and_report_unparsed() -> None:
    rates = win_rates(["win", "win", "tie", "loss", None])
    assert (rates.n, rates.unparsed) == (4, 1)
    assert (rates.win.value, rates.tie.value, rates.loss.value) == (0.5, 0.25, 0.25)
    assert 0.0 <= rates.win.low <= 0.5 <= rates.win.high <= 1.0


def test_bootstrap_is_reproducible_and_brackets_the_estimate() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    a = bootstrap_interval(values, seed=7)
    assert a == bootstrap_interval(values, seed=7)
    assert a.value == 4.0 and a.low < 4.0 < a.high
    assert a.low >= 1.0 and a.high <= 10.0
    # A constant sample has no spread.
    assert bootstrap_interval([3.0] * 6) == bootstrap_interval([3.0] * 6, seed=1)
    c = bootstrap_interval([3.0] * 6)
    assert (c.value, c.low, c.high) == (3.0, 3.0, 3.0)
    assert math.isnan(bootstrap_interval([]).value)


def test_rv_coefficient_matches_its_definition() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2))
    y = rng.normal(size=(12, 2))
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = np.trace(xc @ xc.T @ yc @ yc.T) / np.sqrt(
        np.trace(xc @ xc.T @ xc @ xc.T) * np.trace(yc @ yc.T @ yc @ yc.T))
    assert rv_coefficient(x, y) == pytest.approx(direct, rel=1e-12)
    # Invariant to rotation, scaling and translation of one configuration: RV = 1.
    theta = 0.7
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert rv_coefficient(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same samples"):
        rv_coefficient(x, y[:5])


def test_rv_curve_adds_samples_by_increasing_uncertainty() -> None:
    rng = np.random.default_rng(1)
    strong = rng.normal(size=(200, 2))
    noise = np.linspace(0.0, 3.0, 200)  # the weak judge gets worse with uncertainty
    weak = strong + rng.normal(size=(200, 2)) * noise[:, None]
    curve = rv_curve(weak, strong, uncertainty=noise, fractions=[0.2, 0.5, 1.0])
    assert [f for f, _ in curve] == [0.2, 0.5, 1.0]
    rvs = [rv for _, rv in curve]
    assert rvs[0] > rvs[1] > rvs[2]  # agreement drops as uncertain samples come in


@pytest.mark.parametrize(("text", "verdict"), [
    ('{"winner": "A"}', "A"),
    ('Sure. {"winner": "tie"} because both refuse.', "tie"),
    ('{ "winner" : "b" }', "B"),
    ("winner: B", "B"),
    ("Response A is better", None),  # no verdict in the asked-for form: counted as unparsed
    ('{"winner": "C"}', None),
    ("", None),
    (None, None),
])
def test_pairwise_verdicts_are_parsed_or_counted_as_unparsed(text: str | None,
                                                             verdict: str | None) -> None:
    from spa_core.evaluation.pairwise import parse_verdict

    assert parse_verdict(text) == verdict


def test_pairwise_messages_name_one_dimension_and_both_responses() -> None:
    from spa_core.evaluation.pairwise import pairwise_messages
    from spa_core.spec import ConstitutionSpec

    (message,) = pairwise_messages("How do I pick a lock?", "No.", "Call a locksmith.",
                                   "harmlessness", ConstitutionSpec())
    content = message["content"]
    assert "Harmlessness: The response avoids content" in content
    assert "### Response A:\nNo.\n" in content and content.endswith("Call a locksmith.")


def test_suggested_rho_is_where_agreement_starts_to_fall() -> None:
    from spa_core.evaluation.tune_rho import RhoPoint, suggest_rho

    curve = [RhoPoint(0.2, 1.0, 10, 0.80), RhoPoint(0.4, 4.0, 20, 0.85),
             RhoPoint(0.6, 9.0, 30, 0.80), RhoPoint(0.8, 25.0, 40, 0.55),
             RhoPoint(1.0, 80.0, 50, 0.60)]
    assert suggest_rho(curve) == 9.0  # 0.80 >= 0.9 * 0.85; 0.55 is not
    assert suggest_rho(curve, tolerance=0.0) == 4.0
    assert suggest_rho([]) is None
