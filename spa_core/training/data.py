"""The pairs Parquet as TRL datasets (conversational preference / prompt-completion format)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "PairsError",
    "load_pairs",
    "preference_dataset",
    "sft_dataset",
]

#: Columns the trainer reads from the pairs Parquet; any others are ignored.
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected", "weight")
#: Read when present: the system prompt the responses were sampled under (null: none).
OPTIONAL_COLUMNS = ("system_prompt",)


class PairsError(ValueError):
    """A pairs file the trainer cannot use; the message says what is wrong and where."""


def load_pairs(path: str) -> pa.Table:
    """Read and check the trainer's columns of a pairs Parquet (local path or fsspec URI).

    Raises PairsError for missing columns (all named), no rows, null texts, or weights that
    are not finite and non-negative.
    """
    with fsspec.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = set(parquet.schema_arrow.names)
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise PairsError(
                f"{path}: missing column(s) {', '.join(missing)} "
                f"(the trainer needs {', '.join(REQUIRED_COLUMNS)}; "
                f"found {', '.join(sorted(names))})"
            )
        columns = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in names]
        table = parquet.read(columns=columns)
    if table.num_rows == 0:
        raise PairsError(f"{path}: no preference pairs to train on")
    for name in ("prompt", "chosen", "rejected"):
        if table.column(name).null_count:
            row = table.column(name).to_pylist().index(None)
            raise PairsError(f"{path}: column {name} is null in row {row}")
    for row, weight in enumerate(table.column("weight").to_pylist()):
        if weight is None or not math.isfinite(weight) or weight < 0:
            raise PairsError(
                f"{path}: weight must be finite and >= 0, got {weight!r} in row {row}"
            )
    return table


def _prompt_messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return messages


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    for row in rows:
        row.setdefault("system_prompt", None)
    return rows


def preference_dataset(table: pa.Table, *, with_weight: bool = True) -> Dataset:
    """TRL's conversational preference format: prompt (system? + user), chosen, rejected
    (one assistant message each), and the pair's `weight` unless `with_weight` is False."""
    from datasets import Dataset

    records: dict[str, list[Any]] = {"prompt": [], "chosen": [], "rejected": []}
    if with_weight:
        records["weight"] = []
    for row in _rows(table):
        records["prompt"].append(_prompt_messages(row["prompt"], row["system_prompt"]))
        records["chosen"].append([{"role": "assistant", "content": row["chosen"]}])
        records["rejected"].append([{"role": "assistant", "content": row["rejected"]}])
        if with_weight:
            records["weight"].append(float(row["weight"]))
    return Dataset.from_dict(records)


def sft_dataset(table: pa.Table) -> Dataset:
    """TRL's conversational prompt-completion format over the distinct (prompt, chosen) pairs.

    A response that wins several pairs is one SFT example, not one per pair.
    """
    from datasets import Dataset

    records: dict[str, list[Any]] = {"prompt": [], "completion": []}
    seen: set[tuple[str | None, str, str]] = set()
    for row in _rows(table):
        key = (row["system_prompt"], row["prompt"], row["chosen"])
        if key in seen:
            continue
        seen.add(key)
        records["prompt"].append(_prompt_messages(row["prompt"], row["system_prompt"]))
        records["completion"].append([{"role": "assistant", "content": row["chosen"]}])
    return Dataset.from_dict(records)
