"""Domain errors of the operator; handlers map them to kopf's permanent / temporary errors."""

from __future__ import annotations

from typing import Any

__all__ = ["ClusterSpecError", "InvalidObject"]


class ClusterSpecError(ValueError):
    """A spec that is valid for `spa run` but cannot run in a cluster; names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec.{field}: {message}")
        self.field = field


class InvalidObject(ValueError):
    """A resource whose spec passed the CRD schema but can never run (a permanent error),
    with the status that says so."""

    def __init__(self, message: str, status: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
