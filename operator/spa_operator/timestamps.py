"""Kubernetes timestamps (RFC 3339, UTC, whole seconds) to and from aware datetimes."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["parse_time", "stamp"]


def stamp(t: datetime) -> str:
    """`2026-11-27T02:00:00Z`, as metav1.Time serialises."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime | None:
    """An API timestamp as an aware UTC datetime; None for anything else (absent, empty)."""
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
