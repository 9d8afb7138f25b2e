"""Choosing rho on one's own data: how well does the self-judge agree with a stronger judge
as groups of growing score uncertainty det(Sigma) are let in? (The paper's Fig. 3.)

Every scored sample of an iteration is judged again by the strong judge; samples are then
added in order of their group's det(Sigma), and the RV coefficient between the two judges'
(primary, helpfulness) scores is computed at each fraction. Where the RV coefficient drops,
the extra groups are noise to the self-judge: rho belongs just below that det.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from spa_core.backends.openai_backend import OpenAIBackend
from spa_core.evaluation.metrics import rv_coefficient
from spa_core.layout import PAIR_RESPONSES, PROMPTS
from spa_core.stages.context import StageContext
from spa_core.stages.generate import judge

__all__ = ["RhoPoint", "suggest_rho", "tune_rho"]


@dataclass(frozen=True)
class RhoPoint:
    """Samples of the groups with det(Sigma) <= `det_max` (a `fraction` of all) and the RV
    coefficient of the two judges over them."""

    fraction: float
    det_max: float
    samples: int
    rv: float


def _sample_dets(pid: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """det(Sigma) (n - 1) of each row's group, over the rows given."""
    out = np.full(pid.size, np.nan)
    for p in np.unique(pid):
        rows = np.flatnonzero(pid == p)
        if rows.size >= 2:
            out[rows] = np.linalg.det(np.cov(np.vstack([a[rows], b[rows]])))
    return out


def suggest_rho(points: list[RhoPoint], tolerance: float = 0.1) -> float | None:
    """The largest det threshold whose RV is within `tolerance` (relative) of the best RV
    seen at that fraction or below: past it, agreement with the strong judge falls."""
    best, chosen = -math.inf, None
    for point in points:
        if math.isnan(point.rv):
            continue
        best = max(best, point.rv)
        if point.rv >= (1.0 - tolerance) * best:
            chosen = point.det_max
        else:
            break
    return chosen


def tune_rho(ctx: StageContext, url: str, model: str, *, api_key: str | None = None,
             max_samples: int | None = None, steps: int = 10) -> dict[str, Any]:
    """Judge the iteration's scored samples with `model` at `url`; the RV curve by det."""
    responses = ctx.dir.read_table(PAIR_RESPONSES)
    prompts = ctx.dir.read_table(PROMPTS)
    text_of = dict(zip(prompts.column("prompt_id").to_pylist(),
                       prompts.column("prompt").to_pylist(), strict=True))
    cols = {c: responses.column(c).to_pylist() for c in
            ("prompt_id", "is_refined", "response", "score_a", "score_b")}
    rows = [i for i in range(responses.num_rows)
            if not cols["is_refined"][i] and cols["response"][i]
            and cols["score_a"][i] is not None and cols["score_b"][i] is not None
            and not math.isnan(cols["score_a"][i]) and not math.isnan(cols["score_b"][i])]
    pid = np.array([cols["prompt_id"][i] for i in rows])
    weak = np.array([[cols["score_a"][i], cols["score_b"][i]] for i in rows], dtype=float)
    det = _sample_dets(pid, weak[:, 0], weak[:, 1])
    order = [k for k in np.argsort(det, kind="stable") if not math.isnan(det[k])]
    if max_samples is not None:
        order = order[:max_samples]
    strong_backend = OpenAIBackend(url, model, api_key=api_key)
    chosen = [rows[k] for k in order]
    a, b, _, _ = judge(ctx, [text_of[cols["prompt_id"][i]] for i in chosen],
                       [cols["response"][i] for i in chosen], backend=strong_backend,
                       temperature=0.0)
    keep = [j for j in range(len(order)) if a[j] is not None and b[j] is not None]
    w = weak[[order[j] for j in keep]]
    s = np.array([[a[j], b[j]] for j in keep], dtype=float)
    d = det[[order[j] for j in keep]]
    points: list[RhoPoint] = []
    for step in range(1, steps + 1):
        n = max(int(round(step / steps * len(keep))), 3)
        if n > len(keep):
            break
        points.append(RhoPoint(step / steps, float(d[n - 1]), n,
                               rv_coefficient(w[:n], s[:n])))
    return {"judge": f"{model} at {url}", "samples": len(order),
            "unparsed": len(order) - len(keep),
            "curve": [p.__dict__ for p in points], "suggested_rho": suggest_rho(points)}
