"""Shared fixtures."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from object_store_helpers import S3Bucket

SERVER_START_TIMEOUT = 120.0

#: Session fixtures that start something big (the one-node cluster, the API server, llama.cpp's
#: server), and the xdist group of the tests that use each: under `pytest -n N --dist
#: loadgroup` (what `make test` runs) a group stays on one worker, so each starts once.
SHARED_FIXTURES = {"cluster": "cluster", "kube": "kube", "llama_server": "llama-server"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = next((g for f, g in SHARED_FIXTURES.items()
                      if f in getattr(item, "fixturenames", ())), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on loopback, serving the embedded GGUF model.

    Yields the base URL (`http://127.0.0.1:PORT/v1`). Mark tests using it `server`.
    """
    from spa_core.models import EMBEDDED_GGUF, embedded_model_dir

    gguf = embedded_model_dir() / EMBEDDED_GGUF
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    base_url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"llama.cpp server exited with {process.returncode}:\n{_tail(log_path)}"
                )
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"llama.cpp server did not answer {base_url}/models within "
                    f"{SERVER_START_TIMEOUT:.0f} s:\n{_tail(log_path)}"
                )
            time.sleep(0.25)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[tuple[dict[str, str], list[str]]]:
    """moto's S3-compatible server (ThreadedMotoServer) on loopback; yields the environment
    of a client with credentials for it, and the log of the requests it served, in order."""
    import logging

    from moto.server import ThreadedMotoServer

    requests: list[str] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            requests.append(record.getMessage())

    access_log = logging.getLogger("werkzeug")  # one INFO line per request
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    access_log.addHandler(Record())
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "spa-test-key",
            "AWS_SECRET_ACCESS_KEY": "spa-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }, requests
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: tuple[dict[str, str], list[str]],
              request: pytest.FixtureRequest) -> S3Bucket:
    """A new bucket for one test (named after it)."""
    import re
    import uuid

    stem = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    return S3Bucket(f"{stem}-{uuid.uuid4().hex[:8]}", *s3_server)
