"""Generation backends: the openai backend against a real llama.cpp server, and the
transformers backend on the embedded model."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spa_core.backends import BackendUnavailable, ChatRequest, ChatResult, make_backend
from spa_core.backends.openai_backend import OpenAIBackend
from spa_core.models import EMBEDDED_GGUF, ModelNotFound, embedded_model_dir, resolve_model
from spa_core.spec import EMBEDDED_MODEL, GeneratorSpec, ModelSpec

SCORES_SCHEMA = {
    "type": "object",
    "properties": {"harmlessness": {"type": "integer"}, "helpfulness": {"type": "integer"}},
    "required": ["harmlessness", "helpfulness"],
    "additionalProperties": False,
}
QUESTIONS = ["Say hi.", "Name a colour.", "What is 2 + 2?", "Name a fruit.", "Who wrote Hamlet?"]


def ask(question: str, max_tokens: int = 6, **kwargs) -> ChatRequest:
    return ChatRequest(
        [{"role": "user", "content": question}], temperature=0.0, max_tokens=max_tokens, **kwargs
    )


def openai_backend(url: str, **kwargs) -> OpenAIBackend:
    generator = GeneratorSpec(backend="openai", url=url, **kwargs)
    backend = make_backend(ModelSpec(), generator)
    assert isinstance(backend, OpenAIBackend)
    return backend


# --- openai backend, real server ---------------------------------------------------------


@pytest.mark.server
def test_openai_plain_chat_returns_text(llama_server: str) -> None:
    [result] = openai_backend(llama_server).generate([ask("Say hi.")])
    assert result.error is None
    assert result.text
    assert result.finish_reason in {"stop", "length"}


@pytest.mark.server
def test_openai_json_schema_is_honoured(llama_server: str) -> None:
    backend = openai_backend(llama_server)
    request = ask(
        "Rate the answer 'Paris is the capital of France' for harmlessness and "
        "helpfulness, 1 to 10.",
        max_tokens=40,
        json_schema=SCORES_SCHEMA,
    )
    [result] = backend.generate([request])
    assert result.error is None, result.error
    scores = json.loads(result.text)
    assert set(scores) == {"harmlessness", "helpfulness"}
    assert backend.supports_json_schema


@pytest.mark.server
def test_openai_results_keep_request_order_under_concurrency(llama_server: str) -> None:
    requests = [ask(q) for q in QUESTIONS]
    one_by_one = openai_backend(llama_server, concurrency=1)
    expected = [one_by_one.generate([r])[0].text for r in requests]
    assert len(set(expected)) > 1, "answers must differ for the order to be checked"
    finished: list[int] = []

    results = openai_backend(llama_server, concurrency=4).generate(
        requests, on_done=finished.append
    )

    assert [r.text for r in results] == expected
    assert sum(finished) == len(requests)


@pytest.mark.server
def test_openai_rejected_request_is_recorded_not_raised(llama_server: str) -> None:
    too_long = ask("hello " * 3000)  # beyond the server's 2048-token context: HTTP 400
    results = openai_backend(llama_server).generate([too_long, ask("Say hi.")])
    assert results[0].text is None
    assert results[0].error is not None and "400" in results[0].error
    assert "context" in results[0].error
    assert results[1].error is None and results[1].text


@pytest.mark.server
def test_openai_rejected_constrained_request_keeps_json_schema_on(llama_server: str) -> None:
    backend = openai_backend(llama_server)
    [result] = backend.generate([ask("hello " * 3000, json_schema=SCORES_SCHEMA)])
    assert result.error is not None and "400" in result.error
    assert backend.supports_json_schema


def test_openai_unreachable_server_fails_fast_naming_the_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, then closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    backend = openai_backend(url, max_retries=2, timeout_seconds=5, concurrency=4)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}"):
        backend.generate([ask(q) for q in QUESTIONS * 4])
    # Two backoffs (0.5 s + 1 s at most), not one retry budget per request.
    assert time.monotonic() - started < 10


def test_openai_backend_needs_a_url() -> None:
    with pytest.raises(ValueError, match="generator.url"):
        make_backend(ModelSpec(), GeneratorSpec(backend="openai"))


def test_backends_import_without_torch() -> None:
    code = (
        "import sys, spa_core.backends, spa_core.backends.openai_backend, spa_core.models; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- embedded model -----------------------------------------------------------------------


def test_embedded_model_resolves_to_the_packaged_gguf() -> None:
    path, gguf_file = resolve_model(ModelSpec(name=EMBEDDED_MODEL))
    assert gguf_file == EMBEDDED_GGUF
    assert (Path(path) / gguf_file).is_file()


def test_override_path_wins_over_the_model(tmp_path: Path) -> None:
    assert resolve_model(ModelSpec(), str(tmp_path)) == (str(tmp_path), None)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")
    assert resolve_model(ModelSpec(), str(gguf)) == (str(tmp_path), "model.gguf")
    assert resolve_model(ModelSpec(name="org/model", gguf_file="m.gguf")) == ("org/model", "m.gguf")


def test_missing_embedded_package_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("spa_core.models.EMBEDDED_PACKAGE", "spa_no_such_package")
    with pytest.raises(ModelNotFound, match="embedded"):
        embedded_model_dir()


# --- transformers backend, embedded model -------------------------------------------------


@pytest.fixture(scope="module")
def local_backend():
    backend = make_backend(ModelSpec(), GeneratorSpec(backend="transformers", batch_size=8))
    yield backend
    backend.close()


def test_transformers_greedy_is_deterministic(local_backend) -> None:
    first, second = local_backend.generate([ask("Say hi."), ask("Say hi.")])
    assert first.text and first == second


def test_transformers_batch_matches_one_by_one(local_backend) -> None:
    requests = [
        ask("Say hi."),
        ask("What is the capital of France? One word."),
        ask("Name a colour.", max_tokens=3),
    ]
    finished: list[int] = []
    batched = local_backend.generate(requests, on_done=finished.append)
    single = [local_backend.generate([r])[0] for r in requests]
    assert batched == single
    assert sum(finished) == len(requests)
    assert all(isinstance(r, ChatResult) and r.error is None for r in batched)
    assert batched[2].finish_reason == "length"


def test_transformers_seeded_sampling_repeats(local_backend) -> None:
    requests = [
        ChatRequest(
            [{"role": "user", "content": "Tell me a word."}], temperature=1.0, max_tokens=6, seed=s
        )
        for s in (1, 2)
    ]
    assert local_backend.generate(requests) == local_backend.generate(requests)


def test_transformers_json_schema_is_enforced(local_backend) -> None:
    """The 135M model ignores the judge format when free; constrained, every answer parses."""
    assert local_backend.supports_json_schema
    from spa_core.prompts import score_json_schema

    schema = score_json_schema("harmlessness")
    requests = [ask(f"Rate this answer: {q}", max_tokens=32, json_schema=schema)
                for q in QUESTIONS[:3]]
    for result in local_backend.generate(requests):
        data = json.loads(result.text)
        assert set(data) == {"Harmlessness", "Helpfulness"}
        assert all(isinstance(v, int) and 1 <= v <= 10 for v in data.values())
