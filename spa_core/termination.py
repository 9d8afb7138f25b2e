"""A stage's last word to the operator: its counts, or its error, as the container's
termination message (Kubernetes keeps it in the pod's status after the container exits).

The operator sets `SPA_TERMINATION_LOG` to the container's terminationMessagePath; outside
a pod the variable is unset and nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from spa_core.rundir import RunDir

__all__ = ["TERMINATION_LOG_ENV", "stage_counts", "write_termination_message"]

TERMINATION_LOG_ENV = "SPA_TERMINATION_LOG"
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
