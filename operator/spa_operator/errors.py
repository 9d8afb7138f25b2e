"""Domain errors of the operator; handlers map them to kopf's permanent / temporary errors."""

from __future__ import annotations

__all__ = ["ClusterSpecError"]


class ClusterSpecError(ValueError):
    """A spec that is valid for `spa run` but cannot run in a cluster; names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}")
        self.field = field
