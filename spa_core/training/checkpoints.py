"""Which `checkpoint-N` is complete, and checkpoints kept on an object store.

A `checkpoint-N` is complete once its `trainer_state.json`, the last file the Trainer writes
into it, exists: locally and on a store alike, where it is uploaded last, after every rank's
part. `CheckpointStore` is a training run's output directory on an fsspec URI (`s3://`,
`gs://`): the ranks train into a local directory (`scratch_dir`), each node uploads the files
its ranks wrote to `checkpoint-N`, a restarted run downloads the last complete one and resumes
from it, and rank 0 publishes `checkpoint-final` with its result file last. Light: fsspec only;
the barriers use accelerate's process state when torch.distributed runs.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from spa_core.layout import FINAL_CHECKPOINT
from spa_core.rundir import RunDir

__all__ = [
    "CHECKPOINT_MARKER",
    "FINAL_CHECKPOINT",
    "RESULT_FILE",
    "CheckpointStore",
    "checkpoint_step",
    "last_checkpoint",
    "scratch_dir",
]

#: Written inside `checkpoint-final`, last: what `train` returned, so a rerun can return it again.
RESULT_FILE = "spa_train_result.json"
#: The last file the Trainer writes into a `checkpoint-N`: its presence marks it complete.
CHECKPOINT_MARKER = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """N of a `checkpoint-N` path, or None for anything else."""
    match = _CHECKPOINT.match(posixpath.basename(str(path).rstrip("/")))
    return int(match.group(1)) if match else None


def _newest_complete(paths: Iterable[str], is_file: Callable[[str], bool]) -> str | None:
    """The `checkpoint-N` among `paths` with the highest N whose marker file exists."""
    steps = sorted((step, p) for p in paths if (step := checkpoint_step(p)) is not None)
    for _, path in reversed(steps):
        if is_file(posixpath.join(path, CHECKPOINT_MARKER)):
            return path
    return None


def last_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The highest `checkpoint-N` in the local `output_dir` that was completely written (its
    trainer_state.json, the last file the Trainer writes, exists), or None."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    return _newest_complete((str(p) for p in root.iterdir() if p.is_dir()),
                            lambda path: Path(path).is_file())


def _distributed() -> Any:
    """accelerate's PartialState when torch.distributed is initialised, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - the train extra brings torch
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    from accelerate import PartialState

    return PartialState()


def _barrier() -> None:
    state = _distributed()
    if state is not None:
        state.wait_for_everyone()


def _is_main() -> bool:
    state = _distributed()
    return state is None or state.is_main_process


def _is_local_main() -> bool:
    state = _distributed()
    return state is None or state.is_local_main_process


@contextlib.contextmanager
def scratch_dir(uri: str) -> Iterator[Path]:
    """The local directory where this node's ranks train a run whose output is `uri`.

    Under torchrun it is shared by the ranks of one node, as a mounted volume would be
    (named after `uri`, the launch's run id and the node's rank, so that no rank needs to ask
    another), fresh for each launch, and removed at the end by the node's first rank; a
    single process gets a temporary directory.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:
        with tempfile.TemporaryDirectory(prefix="spa-train-") as tmp:
            yield Path(tmp)
        return
    key = f"{uri}\n{run_id}\n{os.environ.get('GROUP_RANK', '0')}"
    path = Path(tempfile.gettempdir()) / f"spa-train-{uuid.uuid5(uuid.NAMESPACE_URL, key).hex}"
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            shutil.rmtree(path, ignore_errors=True)


class CheckpointStore:
    """A training run's `checkpoint-N` and `checkpoint-final` on an fsspec URI.

    Uploads are plain PUTs of each file at its final name (an object store's rename is a copy),
    the marker last, so that a reader trusts only a checkpoint whose marker it sees.
    """

    def __init__(self, uri: str, keep: int = 2) -> None:
        self.dir = RunDir(uri)
        self.keep = keep
        """Complete `checkpoint-N` kept on the store (the Trainer's `save_total_limit`)."""

    def __repr__(self) -> str:
        return f"CheckpointStore({self.dir.uri!r})"

    @property
    def fs(self) -> Any:
        return self.dir.fs

    def url(self, *parts: str) -> str:
        return self.dir.url(*parts)

    def _checkpoints(self) -> list[str]:
        self.fs.invalidate_cache()  # other processes write here
        if not self.fs.isdir(self.dir.root):
            return []
        return [p for p in self.fs.ls(self.dir.root, detail=False)
                if checkpoint_step(p) is not None]

    def _remove(self, path: str) -> None:
        # A listing can still name a prefix whose objects are gone (s3fs raises then).
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def last_checkpoint(self) -> str | None:
        """Name of the newest complete `checkpoint-N` on the store, or None."""
        path = _newest_complete(self._checkpoints(), self.fs.isfile)
        return posixpath.basename(path.rstrip("/")) if path else None

    def final_record(self) -> dict[str, Any] | None:
        """The result file of a complete `checkpoint-final` on the store, or None."""
        rel = f"{FINAL_CHECKPOINT}/{RESULT_FILE}"
        self.fs.invalidate_cache()
        return self.dir.read_json(rel) if self.dir.exists(rel) else None

    def _put_file(self, local: Path, rel: str) -> None:
        self.fs.put_file(str(local), self.dir.path(rel))

    def restore(self, output_dir: Path) -> str | None:
        """Put the store's newest complete `checkpoint-N` under `output_dir` (every rank);
        its local path, to resume from, or None.

        Rank 0 first removes the store's incomplete checkpoints (an upload a lost attempt
        left half done); each node's first rank downloads for the node's ranks.
        """
        name = self.last_checkpoint()
        if _is_main():
            for path in self._checkpoints():
                if not self.fs.isfile(posixpath.join(path, CHECKPOINT_MARKER)):
                    self._remove(path)
        if name is None:
            _barrier()
            return None
        local = output_dir / name
        if _is_local_main():
            shutil.rmtree(local, ignore_errors=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(self.dir.path(name) + "/", str(local) + "/", recursive=True)
            if not (local / CHECKPOINT_MARKER).is_file():
                raise FileNotFoundError(f"{self.url(name)} lost its {CHECKPOINT_MARKER} while "
                                        "it was being downloaded")
        _barrier()
        return str(local)

    def save(self, local: Path) -> None:
        """Upload `checkpoint-N` as saved under `local` by every rank (every rank calls it).

        Each node's first rank uploads what the node's ranks wrote; once all have, rank 0
        uploads the marker and drops the store's checkpoints beyond `keep`. Other nodes drop
        their older local checkpoints (the Trainer rotates only rank 0's).
        """
        name = local.name
        _barrier()  # every rank's part is written
        if _is_local_main() and local.is_dir():
            self.dir.put_files(local, name, skip=CHECKPOINT_MARKER)
        _barrier()  # every node's part is uploaded
        if _is_main():
            self._put_file(local / CHECKPOINT_MARKER, f"{name}/{CHECKPOINT_MARKER}")
            complete = sorted((checkpoint_step(p), p) for p in self._checkpoints()
                              if self.fs.isfile(posixpath.join(p, CHECKPOINT_MARKER)))
            for _, path in complete[:-self.keep]:
                self._remove(path)
        elif _is_local_main():
            step = checkpoint_step(local)
            for path in local.parent.iterdir():
                older = checkpoint_step(path)
                if older is not None and step is not None and older < step:
                    shutil.rmtree(path, ignore_errors=True)

    def publish(self, final: Path, extra: Iterable[str] = ()) -> None:
        """Upload `checkpoint-final` (rank 0 only), its result file last, then drop the
        store's `checkpoint-N`, which it supersedes; `extra`: sibling directories of `final`
        to upload as well (TensorBoard's `runs`)."""
        for name in extra:
            if (final.parent / name).is_dir():
                self.dir.put_files(final.parent / name, name)
        self.dir.put_files(final, FINAL_CHECKPOINT, skip=RESULT_FILE)
        self._put_file(final / RESULT_FILE, f"{FINAL_CHECKPOINT}/{RESULT_FILE}")
        for path in self._checkpoints():
            self._remove(path)
