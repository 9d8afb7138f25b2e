"""The run directory: Parquet tables and JSON manifests under a local path or an fsspec URI.

Every write is atomic from a reader's point of view: data goes to a temporary name first
and is moved into place only once it is complete, so a crash or a full disk never leaves
a truncated file under a final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ROW_GROUP_ROWS", "RunDir", "TableWriter"]

#: Rows per Parquet row group of a streamed table (the last one holds the rest).
ROW_GROUP_ROWS = 16_384


class TableWriter:
    """A Parquet file written in pieces: rows are buffered and written in row groups of
    exactly `row_group_rows` rows, so the file's bytes depend on its rows alone, not on how
    they were handed in, and memory holds at most one row group."""

    def __init__(self, writer: pq.ParquetWriter, row_group_rows: int) -> None:
        self._writer = writer
        self._rows = row_group_rows
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.num_rows = 0

    def write(self, table: pa.Table) -> None:
        """Append `table`'s rows (its schema must be the file's)."""
        self.num_rows += table.num_rows
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._rows:
            buffered = pa.concat_tables(self._pending)
            self._write_group(buffered.slice(0, self._rows))
            rest = buffered.slice(self._rows)
            self._pending, self._pending_rows = [rest], rest.num_rows

    def _write_group(self, table: pa.Table) -> None:
        # One row group, written from contiguous columns as pq.write_table writes them.
        self._writer.write_table(table.combine_chunks(), row_group_size=max(table.num_rows, 1))

    def close(self) -> None:
        if self._pending_rows or self.num_rows == 0:
            self._write_group(pa.concat_tables(self._pending) if self._pending
                              else self._writer.schema.empty_table())
        self._pending, self._pending_rows = [], 0
        self._writer.close()


class RunDir:
    """A directory of run artifacts addressed by relative POSIX paths."""

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        self.uri = str(uri)
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self.is_local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        if self.is_local:
            self.root = os.path.abspath(self.root)

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    def path(self, *parts: str) -> str:
        """Absolute path (in the filesystem's own terms) of a relative location."""
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        """A URI for the location that other processes can open."""
        p = self.path(*parts)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    def child(self, *parts: str) -> RunDir:
        """A RunDir rooted at a subdirectory."""
        return RunDir(self.url(*parts))

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.exists(self.path(*parts)))

    def makedirs(self, *parts: str) -> None:
        self.fs.makedirs(self.path(*parts), exist_ok=True)

    def _commit(self, tmp: str, final: str) -> None:
        if self.is_local:
            os.replace(tmp, final)
        else:  # object stores: a completed PUT is atomic; mv is copy + delete.
            self.fs.mv(tmp, final)

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Write a Parquet file atomically."""
        final = self.path(rel)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
            self._commit(tmp, final)
        except BaseException:
            self._discard(tmp)
            raise

    @contextlib.contextmanager
    def table_writer(self, rel: str, schema: pa.Schema,
                     row_group_rows: int | None = None) -> Iterator[TableWriter]:
        """A Parquet file written piece by piece (`TableWriter.write`), atomically: it
        appears under `rel` only once the block ends without an error. Row groups hold
        `row_group_rows` rows (default ROW_GROUP_ROWS)."""
        final = self.path(rel)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as fh:
                writer = TableWriter(pq.ParquetWriter(fh, schema, compression="zstd"),
                                     row_group_rows or ROW_GROUP_ROWS)
                yield writer
                writer.close()
            self._commit(tmp, final)
        except BaseException:
            self._discard(tmp)
            raise

    @contextlib.contextmanager
    def parquet_file(self, rel: str) -> Iterator[pq.ParquetFile]:
        """The Parquet file at `rel`, open for reading in batches or row groups."""
        with self.fs.open(self.path(rel), "rb") as fh:
            yield pq.ParquetFile(fh)

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.path(rel), "rb") as fh:
            return pq.read_table(fh, columns=columns)

    def write_json(self, rel: str, data: Any) -> None:
        """Write a JSON document atomically."""
        final = self.path(rel)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
        try:
            with self.fs.open(tmp, "wb") as fh:
                fh.write(payload)
            self._commit(tmp, final)
        except BaseException:
            self._discard(tmp)
            raise

    def read_json(self, rel: str) -> Any:
        with self.fs.open(self.path(rel), "rb") as fh:
            return json.loads(fh.read())

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching a glob, sorted."""
        prefix = self.root.rstrip("/") + "/"
        return sorted(p[len(prefix):] if p.startswith(prefix) else p
                      for p in self.fs.glob(self.path(pattern)))

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)

    def _discard(self, tmp: str) -> None:
        try:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
        except OSError:
            pass

    def local_dir(self, rel: str, cache: Path | None = None) -> Path:
        """A local directory holding `rel`: itself when local, else a downloaded copy."""
        if self.is_local:
            return Path(self.path(rel))
        cache = cache or Path(os.environ.get("SPA_CACHE", Path.home() / ".cache" / "spa"))
        target = cache / "rundirs" / uuid.uuid5(uuid.NAMESPACE_URL, self.url(rel)).hex
        if not target.exists():
            tmp = target.with_name(target.name + f".tmp-{uuid.uuid4().hex}")
            self.fs.get(self.path(rel), str(tmp), recursive=True)
            os.replace(tmp, target)
        return target

    def upload_dir(self, local: Path, rel: str) -> None:
        """Copy a local directory into the run directory (no-op when already there).

        Locally it appears at once (a rename); on an object store, where a rename is a copy
        of every object, each file is written once under its final name.
        """
        if not self.is_local:
            self.put_files(local, rel)
            return
        if Path(self.path(rel)).resolve() == local.resolve():
            return
        tmp = f"{self.path(rel)}.tmp-{uuid.uuid4().hex}"
        self.fs.put(str(local), tmp, recursive=True)
        self._commit(tmp, self.path(rel))

    def put_files(self, local: Path, rel: str, *, skip: str | None = None) -> None:
        """Upload every file under the local directory `local` to `rel` (but `skip`, a path
        relative to `local`), each file in one write under its final name."""
        files = sorted(p for p in local.rglob("*")
                       if p.is_file() and p.relative_to(local).as_posix() != skip)
        if files:
            self.fs.put([str(p) for p in files],
                        [self.path(rel, p.relative_to(local).as_posix()) for p in files])
