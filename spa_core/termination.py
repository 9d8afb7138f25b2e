"""A stage's last word to the operator: its counts, or its error, as the container's
termination message (Kubernetes keeps it in the pod's status after the container exits).

The operator sets `SPA_TERMINATION_LOG` to the container's terminationMessagePath; outside
a pod the variable is unset and nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from spa_core.layout import finished_stats, iteration_dir
from spa_core.rundir import RunDir

__all__ = ["TERMINATION_LOG_ENV", "USAGE_ERROR_EXIT_CODE", "evaluation_headline",
           "stage_counts", "write_termination_message"]

TERMINATION_LOG_ENV = "SPA_TERMINATION_LOG"
#: A stage's exit code when it fails in a way no retry cures (a spec it refuses, GPUs asked for
#: and missing): the operator's Jobs fail at once on it rather than retry.
USAGE_ERROR_EXIT_CODE = 2
#: Kubernetes keeps at most 4096 bytes of a container's termination message.
LIMIT = 4096


def write_termination_message(text: str) -> str | None:
    """Write `text` (cut to the limit) where the operator reads it; the error if that fails."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    if not path:
        return None
    data = text.encode()[:LIMIT].decode(errors="ignore")
    try:
        Path(path).write_text(data)
    except OSError as exc:
        return f"cannot write the termination message to {path}: {exc}"
    return None


def stage_counts(root: RunDir, iteration: int) -> dict[str, int]:
    """What a run's status counts (prompts, samples, kept groups, pairs) so far."""
    from spa_core.summary import collect

    stats = collect(root, iteration)
    keys = {"prompts": "prompts", "samples": "samples", "kept": "groups_kept", "pairs": "pairs"}
    return {k: int(v) for k, src in keys.items() if isinstance(v := stats.get(src), int)}


def evaluation_headline(root: RunDir, iteration: int) -> dict[str, float]:
    """Before/after means and pairwise win rates of a finished evaluate stage (camelCase,
    as the run's status shows them)."""
    stats = finished_stats(root.child(iteration_dir(iteration)), "evaluate")
    out = {}
    for key, name in (("before_primary", "beforePrimary"), ("after_primary", "afterPrimary"),
                      ("before_helpfulness", "beforeHelpfulness"),
                      ("after_helpfulness", "afterHelpfulness")):
        if isinstance(stats.get(key), int | float):
            out[name] = round(float(stats[key]), 4)
    for dim, name in (("primary", "winRatePrimary"), ("helpfulness", "winRateHelpfulness")):
        win = ((stats.get("pairwise") or {}).get(dim) or {}).get("win")
        if isinstance(win, int | float):
            out[name] = round(float(win), 4)
    return out
