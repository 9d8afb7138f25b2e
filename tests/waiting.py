"""Polling for a condition in tests that watch real processes (API servers, clusters)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float = 60.0,
             on_timeout: Callable[[], str] | None = None, interval: float = 0.3) -> T:
    """Call `probe` until it returns something truthy, and return that; fail after `timeout`
    seconds, naming `what` and adding `on_timeout()` (what a person would look at)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{on_timeout()}" if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)
