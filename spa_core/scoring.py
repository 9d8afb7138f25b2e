"""Reading the two scores out of a judge's answer, however untidy, without ever raising.

A strong judge answers with the JSON object the template asks for; a weak one (the
embedded 135M model) writes prose, Markdown, code fences, "7/10", single-quoted or
lowercase keys, or nothing usable. `parse_scores` recovers what it can and says how
(`status`), so that stages can count how noisy their judge is:

* ``ok``: the whole answer is a JSON object with both exact keys and numbers in 1..10;
* ``loose``: both scores recovered from anything else (prose, fences, bad JSON, ...);
* ``partial``: one dimension found, the other is None;
* ``out_of_range``: a score was given outside 1..10 (or on another scale, "4/5"): it is
  treated as missing, never clamped; the other score is kept if it is usable;
* ``missing``: nothing usable (including no text at all).

A score is the first number written after the dimension's name (separated only by
punctuation, Markdown, a parenthetical such as "(1-10)", or words like "score", "is",
"of"), so numbers elsewhere in the text, before the name or in prose, are not mistaken
for scores. When a name occurs several times, the first occurrence followed by a number wins.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeGuard

__all__ = [
    "STATUSES",
    "ParsedScores",
    "ScoreCounts",
    "ScoreStatus",
    "parse_scores",
]

ScoreStatus = Literal["ok", "loose", "partial", "out_of_range", "missing"]

#: Every status, from best to worst.
STATUSES: tuple[ScoreStatus, ...] = ("ok", "loose", "partial", "out_of_range", "missing")

_LOW, _HIGH = 1.0, 10.0


@dataclass(frozen=True, slots=True)
class ParsedScores:
    """The primary (`a`) and secondary (`b`) scores of one judge answer, and how they were read."""

    a: float | None
    b: float | None
    status: ScoreStatus

    @property
    def ok(self) -> bool:
        """Whether both scores are usable."""
        return self.a is not None and self.b is not None


@dataclass(slots=True)
class ScoreCounts:
    """How many judge answers ended in each status: the noise summary of a stage."""

    ok: int = 0
    loose: int = 0
    partial: int = 0
    out_of_range: int = 0
    missing: int = 0

    def add(self, parsed: ParsedScores | ScoreStatus) -> None:
        """Count one parsed answer (or a bare status)."""
        status = parsed.status if isinstance(parsed, ParsedScores) else parsed
        if status not in STATUSES:
            raise ValueError(f"unknown score status {status!r}")
        setattr(self, status, getattr(self, status) + 1)

    def update(self, parsed: Iterable[ParsedScores | ScoreStatus]) -> None:
        """Count many parsed answers."""
        for item in parsed:
            self.add(item)

    @property
    def total(self) -> int:
        """All answers counted."""
        return sum(self.as_dict().values())

    @property
    def usable(self) -> int:
        """Answers with both scores (`ok` + `loose`)."""
        return self.ok + self.loose

    def as_dict(self) -> dict[str, int]:
        """The counts by status, in STATUSES order (for JSON stage summaries)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __add__(self, other: ScoreCounts) -> ScoreCounts:
        if not isinstance(other, ScoreCounts):
            return NotImplemented
        return ScoreCounts(**{k: v + getattr(other, k) for k, v in self.as_dict().items()})


def parse_scores(text: str | None, names: tuple[str, str]) -> ParsedScores:
    """Both scores of a judge answer; `names` as the judge saw them ("Harmlessness", ...)."""
    if not isinstance(text, str) or not text.strip():
        return ParsedScores(None, None, "missing")
    strict = _strict_json(text, names)
    if strict is not None:
        return ParsedScores(strict[0], strict[1], "ok")
    squeezed = _squeeze_whitespace(text)
    found = [_loose_score(squeezed, name) for name in names]
    values = [value if in_range else None for value, in_range in found]
    if any(value is not None and not in_range for value, in_range in found):
        status: ScoreStatus = "out_of_range"
    elif all(v is not None for v in values):
        status = "loose"
    elif any(v is not None for v in values):
        status = "partial"
    else:
        status = "missing"
    return ParsedScores(values[0], values[1], status)


def _strict_json(text: str, names: tuple[str, str]) -> tuple[float, float] | None:
    """Both scores when the whole text is a JSON object with the exact keys and in-range numbers."""
    try:
        document = json.loads(text.strip(), object_pairs_hook=_first_key_wins)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    scores = []
    for name in names:
        value = document.get(name)
        if not _is_number(value) or not _LOW <= value <= _HIGH:
            return None
        scores.append(float(value))
    return scores[0], scores[1]


def _first_key_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        document.setdefault(key, value)
    return document


def _is_number(value: object) -> TypeGuard[int | float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


# What may stand between a dimension name and its score: quotes, Markdown, ":", "=", a
# dash before a space ("Harmlessness - 8"), a short parenthetical ("(1-10)"), "(" itself
# ("(8/10)"), and a few words ("score", "rating of", "is").
_SEPARATOR = (
    r"(?P<gap>(?:[\s\"'`*_:=|>\[\](]"
    r"|[-\u2013\u2014](?=\s)"
    r"|\([^()\n]{0,40}\)"
    r"|\b(?:score|rating|rated|is|of|at)\b"
    r"){0,16})"
)
# The score itself: a whole number (not the start of a longer one, not a range "1-10"),
# then an optional scale: "/10", "out of 10".
_NUMBER = (
    r"(?P<num>[-+]?\d+(?:\.\d+)?)(?!\d)(?!\.\d)(?![eE][-+]?\d)"
    r"(?!\s*(?:[-\u2013\u2014]|to\b)\s*\d)"
    r"(?:\s*(?:/|\bout\s+of\b)\s*(?P<den>\d+(?:\.\d+)?)(?!\d)(?!\.\d))?"
)
_PATTERNS: dict[str, re.Pattern[str]] = {}


def _pattern(name: str) -> re.Pattern[str]:
    pattern = _PATTERNS.get(name)
    if pattern is None:
        pattern = re.compile(
            rf"(?<![A-Za-z]){re.escape(name)}(?![A-Za-z]){_SEPARATOR}{_NUMBER}",
            re.IGNORECASE,
        )
        _PATTERNS[name] = pattern
    return pattern


# A score on the line after its name must stand alone on that line ("**Harmlessness**\n8"),
# so that list numbers ("Harmlessness:\n1. The response ...") and scores written before
# their names ("7 - Harmlessness\n9 - Helpfulness") are not taken for it.
_ALONE_ON_LINE = re.compile(r"[^\S\n]*[*_`\"',;.)\]}]*[^\S\n]*(?:\n|$)")


def _squeeze_whitespace(text: str) -> str:
    """Runs of blanks become one space, blank lines vanish: keeps the separator short."""
    return _LINE_BREAKS.sub("\n", _BLANKS.sub(" ", text))


_BLANKS = re.compile(r"[^\S\n]+")
_LINE_BREAKS = re.compile(r" ?\n\s*")  # after _BLANKS: linear, unlike \s*\n\s*


def _loose_score(text: str, name: str) -> tuple[float | None, bool]:
    """(score, whether it is on the 1..10 scale) of the first number after `name`."""
    pattern, start = _pattern(name), 0
    while (match := pattern.search(text, start)) is not None:
        if "\n" not in match["gap"] or _ALONE_ON_LINE.match(text, match.end()):
            break
        start = match.start() + 1
    if match is None:
        return None, False
    value = float(match["num"])
    scale = match["den"]
    if scale is not None and float(scale) != _HIGH:
        return value, False
    return value, _LOW <= value <= _HIGH
