"""metav1.Condition bookkeeping: a transition time changes only when the status does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from spa_operator.timestamps import stamp

__all__ = ["set_condition"]


def set_condition(conditions: list[dict[str, Any]], type_: str, status: str, reason: str,
                  message: str, generation: int | None, now: datetime) -> list[dict[str, Any]]:
    """`conditions` with `type_` set (a new list; the input is not modified)."""
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status
    condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": stamp(now) if changed
        else previous["lastTransitionTime"],
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return [c for c in conditions if c.get("type") != type_] + [condition]
