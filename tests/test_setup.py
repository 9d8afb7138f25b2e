"""The README's commands as a newcomer runs them: from a login shell's environment, with only
HOME set, the Makefile's recipes must find every tool that setup installed (uv lives under the
project's cache, not on PATH) and the ones the machine provides (python3, cargo, go)."""

import os
import re
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def login_shell(command: str) -> subprocess.CompletedProcess[str]:
    env = {"HOME": os.environ["HOME"]}
    if "SPA_CACHE" in os.environ:  # a moved cache is the user's own setting: keep it
        env["SPA_CACHE"] = os.environ["SPA_CACHE"]
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()),
                           "bash", "-lc", command],
                          capture_output=True, text=True, timeout=300)


def test_make_tools_runs_from_a_login_shell():
    result = login_shell(f"make --no-print-directory -C {shlex.quote(str(REPO))} tools")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split(maxsplit=1) for line in result.stdout.splitlines() if line.strip())
    assert re.match(r"uv \d+\.\d+\.\d+", lines["uv"]), lines
    # The project's own uv, under the cache: nothing depends on the caller's PATH.
    cache = os.environ.get("SPA_CACHE", os.path.join(os.environ["HOME"], ".cache", "spa"))
    assert f"({cache}/uv/" in lines["uv"], lines
    for tool in ("python3", "cargo", "go"):
        assert "MISSING" not in lines[tool], lines
    # `uv run` really ran, in this clone's environment.
    assert re.match(r"Python 3\.\d+", lines["venv"]), lines

