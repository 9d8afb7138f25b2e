"""Stage `prompts`: read the seed prompts, validate them, draw this iteration's share.

Repeated prompts are dropped first (`prompts.deduplicate`, by normalised text: the first row
stays). The source is then shuffled once with `prompts.seed`; the last `evaluation.count`
prompts are held out for evaluation, and each iteration draws `prompts.count` of the rest
(the same ones every round, or the next ones with `iterations.prompts: new`). Held-out
prompts from their own source (`evaluation.prompts`) that the training source also holds
are dropped, so evaluation never sees a training prompt. A prompt's id is its row number in
the source, so it stays the same across iterations and reruns.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spa_core.layout import HELDOUT, PROMPTS, shard_name
from spa_core.spec import PromptsSpec
from spa_core.stages.context import StageContext
from spa_core.stages.manifest import StageManifest, config_hash

__all__ = ["BadPromptRows", "PromptCursor", "PromptRows", "deduplicate", "normalise",
           "prompt_cursor", "prompt_shards", "read_prompts", "run_prompts"]

STAGE = "prompts"
MAX_PROMPT_CHARS = 100_000


class BadPromptRows(ValueError):
    """The prompt source has rows without a usable prompt (and `badRows: fail`)."""


@dataclass
class PromptRows:
    """Usable prompts with their row numbers in the source, and what was skipped."""

    rows: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)

    def add(self, row: int, value: object) -> None:
        problem = _problem(value)
        if problem:
            self.bad.append((row, problem))
        else:
            self.rows.append(row)
            self.prompts.append(str(value).strip())


def normalise(prompt: str) -> str:
    """What two prompts must share to count as the same: NFKC, case folded, whitespace
    collapsed."""
    return " ".join(unicodedata.normalize("NFKC", prompt).casefold().split())


def deduplicate(rows: PromptRows, seen: set[str] | None = None) -> tuple[PromptRows, int]:
    """`rows` without the prompts whose normalised text an earlier row (or `seen`) has; and
    how many were dropped. `seen` gains the kept prompts' texts."""
    seen = set() if seen is None else seen
    out = PromptRows(bad=rows.bad)
    for row, prompt in zip(rows.rows, rows.prompts, strict=True):
        key = normalise(prompt)
        if key not in seen:
            seen.add(key)
            out.rows.append(row)
            out.prompts.append(prompt)
    return out, len(rows.rows) - len(out.rows)


def _problem(value: object) -> str | None:
    if value is None:
        return "no prompt"
    if not isinstance(value, str):
        return f"prompt is {type(value).__name__}, not text"
    if not value.strip():
        return "empty prompt"
    if len(value) > MAX_PROMPT_CHARS:
        return f"prompt longer than {MAX_PROMPT_CHARS} characters"
    return None


def read_prompts(spec: PromptsSpec) -> PromptRows:
    """Read every row of the configured source (row numbers start at 1, as editors count)."""
    out = PromptRows()
    if spec.builtin is not None:
        from spa_core.builtin_prompts import load_builtin

        for i, text in enumerate(load_builtin(spec.builtin), start=1):
            out.add(i, text)
    elif spec.dataset is not None:
        try:
            import datasets
        except ImportError as exc:  # pragma: no cover - depends on extras
            raise ImportError("prompts.dataset needs the `hub` extra: pip install 'spa-core[hub]'") from exc
        ds = datasets.load_dataset(spec.dataset, spec.config, split=spec.split)
        if spec.column not in ds.column_names:
            where = f"{spec.config}, {spec.split}" if spec.config else spec.split
            raise BadPromptRows(
                f"dataset {spec.dataset} ({where}) has no column {spec.column!r}; "
                f"columns: {', '.join(ds.column_names)}"
            )
        for i, text in enumerate(ds[spec.column], start=1):
            out.add(i, text)
    else:
        _read_file(spec.path, spec.column, out)
    return out


def _read_file(path: str, column: str, out: PromptRows) -> None:
    import fsspec
    import pyarrow.parquet as pq

    lower = path.lower().removesuffix(".gz")
    try:
        with fsspec.open(path, "rb", compression="infer") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise BadPromptRows(f"prompt file {path} does not exist") from None
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        for i, line in enumerate(io.StringIO(data.decode("utf-8", errors="replace")), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                out.bad.append((i, f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                out.bad.append((i, "not a JSON object"))
            elif column not in obj:
                out.bad.append((i, f"no {column!r} key"))
            else:
                out.add(i, obj[column])
    elif lower.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        if column not in table.column_names:
            raise BadPromptRows(
                f"{path} has no column {column!r}; columns: {', '.join(table.column_names)}"
            )
        for i, text in enumerate(table.column(column).to_pylist(), start=1):
            out.add(i, text)
    elif lower.endswith((".csv", ".tsv")):
        reader = csv.DictReader(
            io.StringIO(data.decode("utf-8", errors="replace")),
            delimiter="\t" if lower.endswith(".tsv") else ",",
        )
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise BadPromptRows(f"{path} has no column {column!r} in its header")
        for i, record in enumerate(reader, start=2):  # row 1 is the header
            out.add(i, record.get(column))
    else:
        raise BadPromptRows(f"{path}: unknown prompt file type (use .jsonl, .parquet or .csv)")


def draw(rows: PromptRows, spec_prompts: PromptsSpec, heldout: int, iteration: int,
         fresh_each_iteration: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into `rows`) of this iteration's training prompts and of the held-out ones."""
    order = np.random.default_rng(spec_prompts.seed).permutation(len(rows.rows))
    heldout = min(heldout, max(len(order) - 1, 0))
    pool, held = order[: len(order) - heldout], order[len(order) - heldout:]
    count = spec_prompts.count or len(pool)
    start = count * iteration if fresh_each_iteration else 0
    if start >= len(pool) or (spec_prompts.count and start + count > len(pool) and fresh_each_iteration):
        raise BadPromptRows(
            f"iteration {iteration} needs prompts {start + 1}..{start + count} of the training "
            f"pool, which has {len(pool)} (source rows minus {heldout} held out): add prompts, "
            "lower prompts.count, or use iterations.prompts: same"
        )
    return pool[start: start + count], held


def run_prompts(ctx: StageContext) -> dict:
    """Write `prompts/prompts.parquet` and `prompts/heldout.parquet` for this iteration."""
    spec = ctx.spec
    heldout = spec.evaluation.count if spec.evaluation.enabled and spec.evaluation.prompts is None else 0
    chash = config_hash(STAGE, spec.prompts, heldout, spec.iterations.prompts, ctx.iteration)
    manifest = StageManifest.open(ctx.dir, STAGE, chash, force=ctx.force)
    if manifest.complete:
        return manifest.stats

    rows = read_prompts(spec.prompts)
    if rows.bad and spec.prompts.bad_rows == "fail":
        first = "; ".join(f"row {r}: {why}" for r, why in rows.bad[:5])
        raise BadPromptRows(f"{len(rows.bad)} bad prompt row(s): {first}")
    if not rows.rows:
        raise BadPromptRows("the prompt source has no usable prompt")
    duplicates = 0
    if spec.prompts.deduplicate:
        rows, duplicates = deduplicate(rows)
    train_idx, held_idx = draw(rows, spec.prompts, heldout, ctx.iteration,
                               spec.iterations.prompts == "new")
    held_stats = {}
    if spec.evaluation.enabled and spec.evaluation.prompts is not None:
        # Disjoint from every prompt of the training source, not only this iteration's.
        training = {normalise(p) for p in rows.prompts}
        source = read_prompts(spec.evaluation.prompts)
        if spec.evaluation.prompts.deduplicate:
            source, held_stats["heldout_duplicate_rows"] = deduplicate(source)
        held_rows, in_training = deduplicate(source, training)
        held_stats["heldout_in_training"] = in_training
        if not held_rows.rows:
            raise BadPromptRows(
                f"evaluation.prompts has no prompt that is not also a training prompt "
                f"({in_training} of {len(source.rows)} are in the training source)")
        held_table = _table(held_rows, np.arange(min(spec.evaluation.count, len(held_rows.rows))))
    else:
        held_table = _table(rows, held_idx)
    ctx.dir.write_table(HELDOUT, held_table)
    ctx.dir.write_table(PROMPTS, _table(rows, np.sort(train_idx)))
    stats = {
        "source_rows": len(rows.rows) + duplicates + len(rows.bad),
        "bad_rows": len(rows.bad),
        "bad_row_examples": [f"row {r}: {why}" for r, why in rows.bad[:10]],
        "duplicate_rows": duplicates,
        "prompts": int(len(train_idx)),
        "heldout": int(held_table.num_rows),
        **held_stats,
    }
    manifest.finish(ctx.dir, **stats)
    return stats


def _table(rows: PromptRows, idx: np.ndarray) -> pa.Table:
    return pa.table({
        "prompt_id": pa.array([rows.rows[i] for i in idx], pa.int64()),
        "prompt": pa.array([rows.prompts[i] for i in idx], pa.string()),
    })


# --- reading prompts.parquet a shard at a time (the later stages) -----------------------------


def prompt_shards(ctx: StageContext) -> Iterator[tuple[str, pa.Table]]:
    """This iteration's prompts cut into shards of `storage.shardSize` rows, named as the
    sample stage names its files, read one shard at a time (never the whole file)."""
    size = ctx.spec.storage.shard_size
    with ctx.dir.parquet_file(PROMPTS) as file:
        held = file.schema_arrow.empty_table()
        index = 0
        for batch in file.iter_batches(batch_size=size):
            held = pa.concat_tables([held, pa.Table.from_batches([batch])])
            while held.num_rows >= size:
                yield shard_name(index), held.slice(0, size).combine_chunks()
                held, index = held.slice(size), index + 1
        if held.num_rows:
            yield shard_name(index), held.combine_chunks()


def prompt_count(ctx: StageContext) -> int:
    """How many prompts this iteration has (from the file's footer)."""
    with ctx.dir.parquet_file(PROMPTS) as file:
        return file.metadata.num_rows


@contextlib.contextmanager
def prompt_cursor(ctx: StageContext) -> Iterator[PromptCursor]:
    """A `PromptCursor` over this iteration's prompts.parquet, open for the block."""
    with ctx.dir.parquet_file(PROMPTS) as file:
        yield PromptCursor(file.iter_batches(batch_size=ctx.spec.storage.shard_size),
                           file.schema_arrow)


class PromptCursor:
    """prompts/prompts.parquet read forward once, a range of prompt ids at a time (the file
    is sorted by prompt id, and shards are its slices, so shard order is prompt order)."""

    def __init__(self, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> None:
        self._batches = batches
        self.schema = schema
        self._held = schema.empty_table()

    def upto(self, last: int) -> pa.Table:
        """The prompts with ids up to `last` not handed out before."""
        parts = [self._held]
        while (parts[-1].num_rows == 0 or pc.max(parts[-1].column("prompt_id")).as_py() <= last):
            batch = next(self._batches, None)
            if batch is None:
                break
            parts.append(pa.Table.from_batches([batch]))
        table = pa.concat_tables(parts)
        ids = table.column("prompt_id").to_numpy()
        cut = int(np.searchsorted(ids, last, side="right"))
        self._held = table.slice(cut)
        return table.slice(0, cut)

    def texts(self, first: int, last: int) -> dict[int, str]:
        """The texts of the prompts with ids in [first, last], by id (the ones before `first`
        are passed over: a shard finished before)."""
        self.upto(first - 1)
        table = self.upto(last)
        return dict(zip(table.column("prompt_id").to_pylist(), table.column("prompt").to_pylist(),
                        strict=True))
