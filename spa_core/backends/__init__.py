"""Generation backends: an OpenAI-compatible server, or transformers in-process.

Importing this package never imports torch or transformers; the `transformers` backend
imports them when it is made.
"""

from __future__ import annotations

from spa_core.backends.base import (
    Backend,
    BackendUnavailable,
    ChatRequest,
    ChatResult,
    OnDone,
)
from spa_core.spec import GeneratorSpec, ModelSpec

__all__ = [
    "Backend",
    "BackendUnavailable",
    "ChatRequest",
    "ChatResult",
    "OnDone",
    "make_backend",
]


def make_backend(
    model: ModelSpec, generator: GeneratorSpec, *, model_path: str | None = None
) -> Backend:
    """The backend `generator.backend` names, serving `model` (or `model_path`, which wins).

    For `openai`, `generator.url` is required and the served model name is
    `generator.served_model_name`, else `model_path`, else `model.name`.
    """
    if generator.backend == "openai":
        from spa_core.backends.openai_backend import OpenAIBackend

        return OpenAIBackend.from_spec(model, generator, model_path=model_path)
    if generator.backend == "transformers":
        from spa_core.backends.transformers_backend import TransformersBackend

        return TransformersBackend.from_spec(model, generator, model_path=model_path)
    raise ValueError(f"unknown generator backend {generator.backend!r}")
