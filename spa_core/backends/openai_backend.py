"""The `openai` backend: any OpenAI-compatible chat server (vLLM, llama.cpp's server).

Requests run concurrently on the `openai` SDK's async client, at most
`generator.concurrency` at a time. Retries are the SDK's own: connection errors, timeouts,
408, 409, 429 and 5xx are retried `max_retries` times with exponential backoff (0.5 s
doubling to 8 s, minus up to 25 % jitter; a server's Retry-After is honoured). A request
that still cannot reach the server raises BackendUnavailable and cancels the rest of the
batch, so a dead server fails the whole call within one request's retry budget. Any other
error status is recorded in that request's ChatResult.error.

JSON-schema requests use OpenAI's `response_format={"type": "json_schema", ...}` (vLLM,
llama.cpp's llama-server). llama-cpp-python's server rejects that form but takes
`{"type": "json_object", "schema": ...}`; the first constrained request of a backend finds
which form the server accepts (or none, after which `supports_json_schema` is False).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Sequence
from typing import Any

import openai

from spa_core.backends.base import BackendUnavailable, ChatRequest, ChatResult, OnDone
from spa_core.spec import GeneratorSpec, ModelSpec

__all__ = ["API_KEY_ENV", "OpenAIBackend"]

log = logging.getLogger(__name__)

#: Environment variable holding the server's API key ("EMPTY" when unset, as vLLM expects).
API_KEY_ENV = "SPA_OPENAI_API_KEY"

#: Upper bound on the TCP connect timeout, so an unroutable host fails fast.
_MAX_CONNECT_TIMEOUT = 10.0

#: response_format dialects, tried in this order until the server takes one: OpenAI's
#: (vLLM, llama.cpp's llama-server), then llama-cpp-python's, then none (unconstrained).
_NEXT_FORMAT: dict[str, str | None] = {"json_schema": "json_object", "json_object": None}


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server at `base_url` (`.../v1`)."""

    supports_json_schema: bool = True

    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        concurrency: int = 64,
        timeout_seconds: float = 600.0,
        max_retries: int = 5,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url
        self.model_name = model_name
        self.concurrency = concurrency
        self.timeout = openai.Timeout(
            timeout_seconds, connect=min(timeout_seconds, _MAX_CONNECT_TIMEOUT)
        )
        self.max_retries = max_retries
        self._api_key = api_key or os.environ.get(API_KEY_ENV) or "EMPTY"
        # The response_format dialect for JSON-schema requests, settled by the first one.
        self._format: str | None = "json_schema"
        self._format_settled = False

    @classmethod
    def from_spec(
        cls, model: ModelSpec, generator: GeneratorSpec, *, model_path: str | None = None
    ) -> OpenAIBackend:
        """The backend a run spec describes (`generator.url` is required)."""
        if not generator.url:
            raise ValueError(
                "generator.url is required for the openai backend (the server's .../v1 URL)"
            )
        return cls(
            generator.url,
            generator.served_model_name or model_path or model.name,
            concurrency=generator.concurrency,
            timeout_seconds=generator.timeout_seconds,
            max_retries=generator.max_retries,
        )

    def generate(
        self, requests: Sequence[ChatRequest], *, on_done: OnDone | None = None
    ) -> list[ChatResult]:
        """Results in request order; raises BackendUnavailable if the server is unreachable."""
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests, on_done=on_done))
        # Called from inside a running event loop (a notebook, an async caller): run our
        # own loop in a worker thread rather than nesting loops.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.agenerate(requests, on_done=on_done)).result()

    async def agenerate(
        self, requests: Sequence[ChatRequest], *, on_done: OnDone | None = None
    ) -> list[ChatResult]:
        """The async form of `generate`, for callers that already run an event loop."""
        results: list[ChatResult | None] = [None] * len(requests)
        semaphore = asyncio.Semaphore(self.concurrency)
        negotiation = asyncio.Lock()
        async with openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
        ) as client:

            async def run(index: int, request: ChatRequest) -> None:
                async with semaphore:
                    results[index] = await self._complete(client, request, negotiation)
                if on_done is not None:
                    on_done(1)

            try:
                async with asyncio.TaskGroup() as group:
                    for index, request in enumerate(requests):
                        group.create_task(run(index, request))
            except* BackendUnavailable as failures:
                raise failures.exceptions[0] from None
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    async def _complete(
        self, client: openai.AsyncOpenAI, request: ChatRequest, negotiation: asyncio.Lock
    ) -> ChatResult:
        if request.json_schema is not None and not self._format_settled:
            # The first constrained request finds the response_format dialect the server
            # takes, while the others wait, so a rejection is paid for once, not per request.
            async with negotiation:
                if not self._format_settled:
                    result = await self._negotiate_format(client, request)
                    if result is not None:
                        return result
        try:
            response = await client.chat.completions.create(**self._arguments(request))
        except openai.APIConnectionError as exc:  # includes timeouts, after the SDK's retries
            what = "timed out" if isinstance(exc, openai.APITimeoutError) else "is unreachable"
            raise BackendUnavailable(
                f"generation server {self.base_url} {what} after {self.max_retries} retries "
                f"(per-request timeout {self.timeout.read} s): {exc}"
            ) from exc
        except openai.APIStatusError as exc:
            return ChatResult(text=None, error=_describe(exc))
        return _result(response)

    async def _negotiate_format(
        self, client: openai.AsyncOpenAI, request: ChatRequest
    ) -> ChatResult | None:
        """Try each response_format dialect once; the result if one was accepted, else None.

        None also means "undecided" (an error unrelated to response_format): the caller then
        sends the request the ordinary way, with retries, and a later request tries again.
        """
        once = client.with_options(max_retries=0)
        while self._format is not None:
            try:
                response = await once.chat.completions.create(**self._arguments(request))
            except openai.APIStatusError as exc:
                if not _rejects_response_format(exc):
                    return None
                rejected, self._format = self._format, _NEXT_FORMAT[self._format]
                log.log(
                    logging.INFO if self._format else logging.WARNING,
                    "%s rejected response_format %r (%s); trying %s",
                    self.base_url,
                    rejected,
                    _describe(exc),
                    repr(self._format) if self._format else "unconstrained output",
                )
                continue
            except openai.APIConnectionError:
                return None
            self._format_settled = True
            return _result(response)
        self._format_settled = True
        self.supports_json_schema = False
        return None

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        """The chat.completions.create arguments for one request."""
        arguments: dict[str, Any] = {
            "model": self.model_name,
            "messages": request.messages,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            arguments["seed"] = request.seed
        if request.json_schema is not None and self._format == "json_schema":
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "scores", "schema": request.json_schema, "strict": True},
            }
        elif request.json_schema is not None and self._format == "json_object":
            # llama-cpp-python's server: JSON mode constrained by a schema.
            arguments["response_format"] = {"type": "json_object", "schema": request.json_schema}
        return arguments

    def close(self) -> None:
        """Nothing to release: each `generate` call opens and closes its own client."""

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r}, model={self.model_name!r})"


def _result(response: Any) -> ChatResult:
    if not response.choices:
        return ChatResult(text=None, error="the server returned no choices")
    choice = response.choices[0]
    return ChatResult(text=choice.message.content or "", finish_reason=choice.finish_reason)


def _rejects_response_format(exc: openai.APIStatusError) -> bool:
    """Whether an error status says the server does not take our response_format.

    llama-cpp-python's server answers an unknown format with a 500 naming the field.
    """
    return exc.status_code in (400, 422, 500) and "response_format" in _server_message(exc)


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return str(exc.message)


def _describe(exc: openai.APIStatusError) -> str:
    """A one-line reason for a failed request: status code and the server's message."""
    message = " ".join(_server_message(exc).split())
    if len(message) > 500:
        message = message[:500] + "..."
    return f"HTTP {exc.status_code}: {message}"
