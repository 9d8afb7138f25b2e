"""The end-of-run summary: what went in, what each filter kept, what training did."""

from __future__ import annotations

from rich.table import Table

from spa_core.layout import STAGE_DIRS, finished_stats, iteration_dir
from spa_core.rundir import RunDir

__all__ = ["collect", "summary_table"]

#: (row label, stage directory, key in that stage's stats)
ROWS = [
    ("prompts in", "prompts", "prompts"),
    ("bad prompt rows skipped", "prompts", "bad_rows"),
    ("repeated prompts dropped", "prompts", "duplicate_rows"),
    ("held-out prompts", "prompts", "heldout"),
    ("held-out prompts dropped: in training", "prompts", "heldout_in_training"),
    ("responses sampled", "samples", "samples"),
    ("generation failures", "samples", "samples_failed"),
    ("samples scored (strict JSON)", "scores", "ok"),
    ("samples scored (recovered)", "scores", "loose"),
    ("samples unscored", None, "samples_unscored"),
    ("refinements failed", "refined", "refine_failed"),
    ("refinements failed: over the context", "refined", "refine_over_context"),
    ("refined responses scored", None, "refined_scored"),
    ("rows dropped: missing score", "pairs", "dropped_missing"),
    ("groups in", "pairs", "groups_in"),
    ("groups dropped: malformed", "pairs", "dropped_malformed"),
    ("groups dropped: consistency", "pairs", "dropped_consistency"),
    ("groups dropped: det(Σ) = 0", "pairs", "dropped_det_zero"),
    ("groups dropped: det(Σ) > ρ", "pairs", "dropped_det_above_rho"),
    ("groups kept", "pairs", "groups_kept"),
    ("preference pairs", "pairs", "pairs"),
    ("training steps", "train", "steps"),
    ("final training loss", "train", "final_loss"),
    ("eval primary: before → after", None, "eval_primary"),
    ("eval helpfulness: before → after", None, "eval_helpfulness"),
    ("eval unparsed judge answers", None, "eval_unparsed"),
]

_UNSCORED = ("partial", "out_of_range", "missing", "no_response")


def collect(root: RunDir, iteration: int) -> dict[str, object]:
    """Flat stats of one iteration, read from its stage manifests."""
    it = root.child(iteration_dir(iteration))
    stats: dict[str, dict] = {stage: finished_stats(it, stage) for stage in STAGE_DIRS}
    out: dict[str, object] = {}
    for _, stage, key in ROWS:
        if stage is not None and key in stats[stage]:
            out[key] = stats[stage][key]
    if stats["scores"]:
        out["samples_unscored"] = sum(stats["scores"].get(k, 0) for k in _UNSCORED)
    if stats["refined"]:
        out["refined_scored"] = stats["refined"].get("ok", 0) + stats["refined"].get("loose", 0)
    ev = stats["evaluate"]
    if ev:
        for dim in ("primary", "helpfulness"):
            out[f"eval_{dim}"] = f"{_fmt(ev.get(f'before_{dim}'))} → {_fmt(ev.get(f'after_{dim}'))}"
        out["eval_unparsed"] = f"{ev.get('before_unparsed')} / {ev.get('after_unparsed')}"
    return out


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.4g}"
    return "–" if value is None else str(value)


def summary_table(root: RunDir, iterations: int) -> Table:
    table = Table(title=f"SPA run summary — {root.url()}")
    table.add_column("")
    columns = [collect(root, i) for i in range(iterations)]
    for i in range(iterations):
        table.add_column(f"iteration {i}", justify="right")
    for label, _, key in ROWS:
        table.add_row(label, *(_fmt(c.get(key)) for c in columns))
    return table
