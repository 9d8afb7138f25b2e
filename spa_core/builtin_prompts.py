"""The seed prompts shipped with spa_core (`prompts.builtin`): small sets for trying the method.

Written for this project: harmlessness-critical requests that a careful assistant should
refuse or redirect while still helping, and honesty-critical ones (real-time questions,
false premises, missing images or audio, the assistant's own feelings or memory, expertise
it lacks). They are short so that a 135M model answers them quickly on a CPU.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from itertools import chain, zip_longest
from typing import Literal

__all__ = ["BuiltinKind", "load_builtin"]

BuiltinKind = Literal["harmlessness", "honesty", "mixed"]

_FILES = {"harmlessness": "harmlessness.jsonl", "honesty": "honesty.jsonl"}


def load_builtin(kind: BuiltinKind) -> list[str]:
    """The built-in prompts of `kind`; `mixed` interleaves harmlessness and honesty ones."""
    if kind == "mixed":
        pairs = zip_longest(_read("harmlessness"), _read("honesty"))
        return [p for p in chain.from_iterable(pairs) if p is not None]
    if kind not in _FILES:
        raise ValueError(
            f"unknown built-in prompt set {kind!r}: use harmlessness, honesty or mixed"
        )
    return list(_read(kind))


@cache
def _read(kind: str) -> tuple[str, ...]:
    resource = files("spa_core").joinpath("data", "prompts", _FILES[kind])
    prompts = []
    for number, line in enumerate(resource.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"{_FILES[kind]}:{number}: expected an object with a non-empty 'prompt'"
            )
        prompts.append(prompt)
    return tuple(prompts)
