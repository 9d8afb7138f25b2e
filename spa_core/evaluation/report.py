"""The run report: did alignment get safer AND more helpful, and what happened to the data?

`write_report(run_dir)` reads a run directory (its manifests and Parquet files) and writes
`report/report.html` (self-contained: plots embedded as PNG) and `report/report.md` (with
the PNG files next to it). Sections, per iteration:

1. headline: primary objective and helpfulness before -> after, HH_lambda, win rates;
2. the filter funnel: prompts -> scored -> consistent -> informative -> kept -> pairs;
3. det(Sigma) of every scored group, with rho marked;
4. the pairs by score gap and by weight;
5. training loss and reward margins per step;
6. evaluation score distributions before / after, per dimension;
7. the evaluation table with 95 % bootstrap intervals.

A section whose data is missing (a stage not run yet) says so instead of failing.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spa_core.layout import (
    EVAL_RESPONSES,
    PAIR_RESPONSES,
    PAIRS,
    REPORT_HTML,
    REPORT_MD,
    TRAIN_LOG,
    finished_stats,
    iteration_dir,
)
from spa_core.rundir import RunDir
from spa_core.summary import collect

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SECTIONS", "write_report"]

SECTIONS = ("Headline", "Filter funnel", "det(Σ) of the scored groups", "Pairs",
            "Training", "Evaluation scores", "Evaluation table")
FIGSIZE = (7.0, 3.2)
DPI = 110


@dataclass
class Section:
    title: str
    text: str = ""
    table: list[list[str]] = field(default_factory=list)
    image: str | None = None  # file name of a PNG
    missing: str | None = None


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - the `report` extra
        raise ImportError("spa report needs matplotlib: pip install 'spa-core[report]'") from None
    return plt


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _table(it: RunDir, rel: str, columns: list[str] | None = None) -> Any | None:
    """The table at `rel` (only `columns`: the report reads what it plots), or None."""
    return it.read_table(rel, columns) if it.exists(rel) else None


def _dimensions(stats: dict[str, Any]) -> tuple[str, str]:
    return (str(stats.get("primary_name") or "primary"), "helpfulness")


# --- sections --------------------------------------------------------------------------------

def _headline(ev: dict[str, Any], spec: dict[str, Any]) -> Section:
    s = Section(SECTIONS[0])
    if not ev:
        s.missing = "no evaluation yet (run `spa evaluate`)"
        return s
    primary = (spec.get("objectives") or {}).get("primary", "primary")
    iv = ev.get("intervals") or {}
    rows = [["", "before", "after", "change"]]
    for key, label in (("primary", primary), ("helpfulness", "helpfulness")):
        b, a = ev.get(f"before_{key}"), ev.get(f"after_{key}")
        rows.append([label, _fmt(b), _fmt(a), _fmt(a - b) if a is not None and b is not None
                     else "–"])
    for lam in (5, 10, 20):
        b = (iv.get(f"before_hh{lam}") or {}).get("mean")
        a = (iv.get(f"after_hh{lam}") or {}).get("mean")
        rows.append([f"HH{lam}", _fmt(b), _fmt(a), _fmt(a - b) if a is not None and b is not None
                     else "–"])
    s.table = rows
    pw = ev.get("pairwise") or {}
    wins = [f"{label}: {_fmt(100 * p['win'], 0)} % wins, {_fmt(100 * p['tie'], 0)} % ties, "
            f"{_fmt(100 * p['loss'], 0)} % losses ({p['compared']} compared, "
            f"{p['unparsed']} unparsed)"
            for label, p in ((primary, pw.get("primary")), ("helpfulness", pw.get("helpfulness")))
            if p and p.get("win") is not None]
    s.text = (f"{ev.get('prompts', '?')} held-out prompts; judge: "
              f"{ev.get('judge', 'the policy')}. "
              + (("Trained vs starting model, pairwise: " + "; ".join(wins) + ".") if wins
                 else "No pairwise comparison recorded."))
    return s


def _funnel(stats: dict[str, Any], plot: Callable[..., str]) -> Section:
    s = Section(SECTIONS[1])
    if "groups_in" not in stats:
        s.missing = "no pairs yet (run `spa pairs`)"
        return s
    groups = int(stats["groups_in"])
    consistent = groups - int(stats.get("dropped_malformed", 0)) - \
        int(stats.get("dropped_consistency", 0))
    informative = consistent - int(stats.get("dropped_det_zero", 0))
    kept = int(stats.get("groups_kept", 0))
    steps = [("prompts", stats.get("prompts", groups)), ("groups scored", groups),
             ("consistent", consistent), ("informative (det > 0)", informative),
             ("kept (det ≤ ρ)", kept)]
    s.table = [["step", "prompt groups"]] + [[k, str(v)] for k, v in steps]
    s.text = (f"{stats.get('samples', '?')} responses sampled, "
              f"{stats.get('dropped_missing', 0)} dropped for a missing score; "
              f"{stats.get('pairs', 0)} preference pairs from the {kept} kept groups.")
    failed = int(stats.get("refine_failed", 0)) + int(stats.get("refine_over_context", 0))
    if failed:
        s.text += (f" {failed} refinement requests failed ({stats.get('refine_over_context', 0)}"
                   " did not fit the model's context): those groups have no refined answer "
                   "and count as malformed.")

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        labels = [k for k, _ in steps][::-1]
        values = [int(v) for _, v in steps][::-1]
        bars = ax.barh(labels, values, color="#4c72b0")
        ax.bar_label(bars, padding=3)
        ax.set_xlabel("prompt groups")
        ax.set_xlim(0, max(values + [1]) * 1.15)

    s.image = plot("funnel", draw)
    return s


def _group_dets(responses: Any) -> np.ndarray:
    """det of the sample covariance (n - 1) of each group's scored samples (refined out)."""
    pid = responses.column("prompt_id").to_numpy()
    refined = responses.column("is_refined").to_numpy(zero_copy_only=False)
    a = responses.column("score_a").to_numpy(zero_copy_only=False).astype(np.float64)
    b = responses.column("score_b").to_numpy(zero_copy_only=False).astype(np.float64)
    keep = ~refined & ~np.isnan(a) & ~np.isnan(b)
    pid, a, b = pid[keep], a[keep], b[keep]
    order = np.argsort(pid, kind="stable")
    pid, a, b = pid[order], a[order], b[order]
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]]) if pid.size else np.zeros(0, int)
    ends = np.r_[starts[1:], pid.size]
    return np.array([np.linalg.det(np.cov(np.vstack([a[s:e], b[s:e]])))
                     for s, e in zip(starts, ends, strict=True) if e - s >= 2])


def _dets(it: RunDir, rho: float, plot: Callable[..., str]) -> Section:
    s = Section(SECTIONS[2])
    responses = _table(it, PAIR_RESPONSES, ["prompt_id", "is_refined", "score_a", "score_b"])
    if responses is None:
        s.missing = "no scored groups yet (run `spa pairs`)"
        return s
    dets = _group_dets(responses)
    zero = int(np.sum(dets <= 1e-12))
    s.text = (f"{dets.size} groups with two or more scored samples; {zero} have det(Σ) = 0 "
              f"(no information); ρ = {rho:g} keeps the groups left of the line.")

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        positive = dets[dets > 1e-12]
        if positive.size:
            ax.hist(positive, bins=min(30, max(5, positive.size)), color="#55a868")
        ax.axvline(rho, color="#c44e52", linestyle="--", label=f"ρ = {rho:g}")
        ax.set_xlabel("det(Σ) of the sampled scores (det > 0)")
        ax.set_ylabel("groups")
        ax.legend()

    s.image = plot("det_sigma", draw)
    return s


def _pairs(it: RunDir, plot: Callable[..., str]) -> Section:
    s = Section(SECTIONS[3])
    pairs = _table(it, PAIRS, ["gap", "weight"])
    if pairs is None or pairs.num_rows == 0:
        s.missing = "no pairs" if pairs is not None else "no pairs yet (run `spa pairs`)"
        return s
    gap = pairs.column("gap").to_numpy()
    weight = pairs.column("weight").to_numpy()
    s.text = (f"{pairs.num_rows} pairs; score gap mean {gap.mean():.2f}, weight mean "
              f"{weight.mean():.2f} (min {weight.min():.2f}, max {weight.max():.2f}).")

    def draw(fig: Figure) -> None:
        left, right = fig.subplots(1, 2)
        left.hist(gap, bins=min(20, max(5, len(set(gap.tolist())))), color="#8172b2")
        left.set_xlabel("score gap |Δ|")
        left.set_ylabel("pairs")
        right.hist(weight, bins=20, color="#ccb974")
        right.set_xlabel("weight (gap / mean gap)^α")

    s.image = plot("pairs", draw)
    return s


def _training(it: RunDir, plot: Callable[..., str]) -> Section:
    s = Section(SECTIONS[4])
    if not it.exists(TRAIN_LOG):
        s.missing = "no training yet (run `spa train`)"
        return s
    history = [r for r in it.read_json(TRAIN_LOG) if "loss" in r]
    if not history:
        s.missing = "training logged no step"
        return s
    steps = [r["step"] for r in history]
    s.text = (f"{len(steps)} logged steps; loss {history[0]['loss']:.3f} → "
              f"{history[-1]['loss']:.3f}.")

    def draw(fig: Figure) -> None:
        left, right = fig.subplots(1, 2)
        left.plot(steps, [r["loss"] for r in history], marker="o", color="#4c72b0")
        left.set_xlabel("step")
        left.set_ylabel("loss")
        margins = [r.get("rewards/margins") for r in history]
        if any(m is not None for m in margins):
            right.plot(steps, margins, marker="o", color="#dd8452")
        right.axhline(0, color="grey", linewidth=0.8)
        right.set_xlabel("step")
        right.set_ylabel("reward margin (chosen − rejected)")

    s.image = plot("training", draw)
    return s


def _scores(it: RunDir, primary: str, plot: Callable[..., str]) -> Section:
    s = Section(SECTIONS[5])
    ev = _table(it, EVAL_RESPONSES)
    if ev is None:
        s.missing = "no evaluation yet (run `spa evaluate`)"
        return s
    cols = {name: ev.column(name).to_pylist() for name in ev.column_names}

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, 2, sharey=True)
        bins = np.arange(0.5, 11.5, 1.0)
        for ax, (key, label) in zip(axes, (("score_a", primary), ("score_b", "helpfulness")),
                                    strict=True):
            for when, color in (("before", "#8c8c8c"), ("after", "#4c72b0")):
                values = [v for v in cols[f"{when}_{key}"] if v is not None]
                ax.hist(values, bins=bins, alpha=0.6, color=color, label=when)
            ax.set_xlabel(f"{label} score")
            ax.set_xticks(range(1, 11))
        axes[0].set_ylabel("held-out prompts")
        axes[0].legend()

    s.image = plot("eval_scores", draw)
    unparsed = [sum(1 for a, b in zip(cols[f"{w}_score_a"], cols[f"{w}_score_b"], strict=True)
                    if a is None or b is None) for w in ("before", "after")]
    s.text = (f"{ev.num_rows} held-out prompts; judge answers without both scores: "
              f"{unparsed[0]} before, {unparsed[1]} after (counted, not dropped silently).")
    return s


def _eval_table(ev: dict[str, Any], primary: str) -> Section:
    s = Section(SECTIONS[6])
    iv = ev.get("intervals") or {}
    if not iv:
        s.missing = "no evaluation intervals (run `spa evaluate`)"
        return s

    def cell(key: str) -> str:
        x = iv.get(key) or {}
        if x.get("mean") is None:
            return "–"
        return f"{x['mean']:.2f} [{x['low']:.2f}, {x['high']:.2f}] (n={x.get('n')})"

    rows = [["metric", "before", "after"]]
    for key, label in (("primary", primary), ("helpfulness", "helpfulness"),
                       ("hh5", "HH5"), ("hh10", "HH10"), ("hh20", "HH20")):
        rows.append([label, cell(f"before_{key}"), cell(f"after_{key}")])
    for key, label in (("primary", primary), ("helpfulness", "helpfulness")):
        p = (ev.get("pairwise") or {}).get(key) or {}
        if p.get("win") is not None:
            rows.append([f"pairwise {label}: win / tie / loss",
                         "–", f"{p['win']:.2f} [{p['win_low']:.2f}, {p['win_high']:.2f}] / "
                         f"{p['tie']:.2f} / {p['loss']:.2f}"])
    for task, metrics in sorted((ev.get("benchmarks") or {}).items()):
        for metric, pair in sorted(metrics.items()):
            rows.append([f"{task} {metric} (lm-eval)", _fmt(pair.get("before"), 3),
                         _fmt(pair.get("after"), 3)])
    s.table = rows
    s.text = "Means with 95 % percentile-bootstrap intervals (2000 resamples, seed 0)."
    if ev.get("benchmarks"):
        s.text += " Rows marked lm-eval: EleutherAI's lm-evaluation-harness (evaluation.benchmarks)."
    return s


# --- rendering -------------------------------------------------------------------------------

def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows[1:])
    return (f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


# Phones: the viewport meta (below) lays the page out at the screen's width; a table wider
# than that scrolls inside its own box, never the page; plots shrink to fit.
_CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem;color:#222}.table{overflow-x:auto}"
        "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;"
        "padding:.25rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}"
        ".missing{color:#a33}img{max-width:100%;height:auto}h2{border-bottom:1px solid #ddd}")


def write_report(root: RunDir, name: str, spec: dict[str, Any], iterations: int,
                 out: Path) -> tuple[Path, Path]:
    """Write report.html and report.md (and the PNGs) into the local directory `out`."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    primary = (spec.get("objectives") or {}).get("primary", "primary")
    rho = float((spec.get("denoising") or {}).get("rho", 30.0))
    html_parts = [f"<h1>SPA run report — {html.escape(name)}</h1>",
                  f"<p>Run directory: <code>{html.escape(root.url())}</code></p>"]
    md_parts = [f"# SPA run report — {name}", f"Run directory: `{root.url()}`"]
    if spec.get("method") == "selfCriticism":
        note = ("Method: the Self-Criticism baseline. Each prompt's first sample was critiqued "
                "and revised; the pairs are the revisions over those samples, neither "
                "denoised nor weighted, so the groups \"kept\" are the prompts with both.")
        html_parts.append(f"<p>{html.escape(note)}</p>")
        md_parts.append(note)
    for i in range(iterations):
        it = root.child(iteration_dir(i))
        images: dict[str, bytes] = {}

        def plot(key: str, draw: Callable[[Figure], None], i: int = i,
                 images: dict[str, bytes] = images) -> str:
            fig = plt.figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
            draw(fig)
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            plt.close(fig)
            file = f"iter-{i:02d}-{key}.png"
            images[file] = buf.getvalue()
            (out / file).write_bytes(buf.getvalue())
            return file

        stats = collect(root, i)  # prompts, samples and every filter's counts
        ev = finished_stats(it, "evaluate")
        sections = [_headline(ev, spec), _funnel(stats, plot), _dets(it, rho, plot),
                    _pairs(it, plot), _training(it, plot), _scores(it, primary, plot),
                    _eval_table(ev, primary)]
        html_parts.append(f"<h2>Iteration {i}</h2>")
        md_parts.append(f"## Iteration {i}")
        for s in sections:
            html_parts.append(f"<h3>{html.escape(s.title)}</h3>")
            md_parts.append(f"### {s.title}")
            if s.missing:
                html_parts.append(f'<p class="missing">{html.escape(s.missing)}</p>')
                md_parts.append(f"_{s.missing}_")
                continue
            if s.text:
                html_parts.append(f"<p>{html.escape(s.text)}</p>")
                md_parts.append(s.text)
            if s.table:
                html_parts.append(_html_table(s.table))
                md_parts.append(_md_table(s.table))
            if s.image:
                data = base64.b64encode(images[s.image]).decode()
                html_parts.append(f'<img alt="{html.escape(s.title)}" '
                                  f'src="data:image/png;base64,{data}">')
                md_parts.append(f"![{s.title}]({s.image})")
    html_path, md_path = out / REPORT_HTML, out / REPORT_MD
    html_path.write_text("<!doctype html><html><head><meta charset='utf-8'>"
                         "<meta name='viewport' content='width=device-width, initial-scale=1'>"
                         f"<title>SPA report — {html.escape(name)}</title>"
                         f"<style>{_CSS}</style></head><body>"
                         + "\n".join(html_parts) + "</body></html>\n")
    md_path.write_text("\n\n".join(md_parts) + "\n")
    return html_path, md_path
