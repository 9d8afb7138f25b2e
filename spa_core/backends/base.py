"""The backend interface: chat requests in, texts out, in the same order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Backend", "BackendUnavailable", "ChatRequest", "ChatResult", "OnDone"]

#: Progress callback: called with the number of requests that just finished (k >= 1).
OnDone = Callable[[int], None]


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to generate."""

    messages: list[dict[str, str]]
    """OpenAI chat format: [{"role": "system"|"user"|"assistant", "content": ...}, ...]."""
    temperature: float
    """0 is greedy decoding."""
    max_tokens: int
    """Maximum new tokens."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    seed: int | None = None
    """Sampling seed, where the backend supports it."""
    json_schema: dict | None = None
    """Constrain the output to this JSON schema, where the backend supports it."""


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one request."""

    text: str | None
    """The generated text; None when the request failed."""
    finish_reason: str | None = None
    """`stop` (end of sequence), `length` (max_tokens reached), or the server's reason."""
    error: str | None = None
    """Why the request failed (a per-request, non-transient error)."""


class BackendUnavailable(RuntimeError):
    """The generation server could not be reached after retries; the message names its URL."""


@runtime_checkable
class Backend(Protocol):
    """Generates chat completions; stages reach models only through this."""

    supports_json_schema: bool
    """Whether `ChatRequest.json_schema` is enforced (may turn False once a server rejects it)."""

    def generate(
        self, requests: Sequence[ChatRequest], *, on_done: OnDone | None = None
    ) -> list[ChatResult]:
        """One result per request, in the order of `requests`.

        `on_done(k)` is called each time k more requests finish (for progress bars).
        Raises BackendUnavailable when the server cannot be reached.
        """
        ...

    def close(self) -> None:
        """Release the model or connections."""
        ...
