"""What every stage receives: the run, its directory, the iteration and shared backends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from spa_core.layout import CHECKPOINT, iteration_dir
from spa_core.rundir import RunDir
from spa_core.spec import SPAAlignmentRun

if TYPE_CHECKING:
    from spa_core.backends import Backend

__all__ = ["StageContext"]


def remote_model_dir(name: str) -> str | None:
    """A local copy of a model given as a remote URI (`s3://bucket/.../checkpoint-final`)."""
    if "://" not in name:
        return None
    parent, _, leaf = name.rstrip("/").rpartition("/")
    return str(RunDir(parent).local_dir(leaf))


@dataclass
class StageContext:
    """A run, its directory, the iteration being worked on, and lazily built backends."""

    run: SPAAlignmentRun
    root: RunDir
    iteration: int = 0
    force: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True))
    _backends: dict[str | None, Backend] = field(default_factory=dict, repr=False)

    @property
    def spec(self):  # noqa: ANN201 - RunSpec, kept short for stage code
        return self.run.spec

    @property
    def dir(self) -> RunDir:
        """This iteration's directory."""
        return self.root.child(iteration_dir(self.iteration))

    def policy_id(self) -> object:
        """What names this iteration's policy in the stages' configuration hashes, fetching
        nothing: the previous iteration's checkpoint (its URI), else `model`. The same in
        every pod, whatever its cache directory."""
        if self.iteration == 0:
            return self.spec.model
        return self.root.url(self._previous_checkpoint())

    def _previous_checkpoint(self) -> str:
        rel = f"{iteration_dir(self.iteration - 1)}/{CHECKPOINT}"
        if not self.root.exists(rel):
            raise FileNotFoundError(
                f"iteration {self.iteration} starts from {self.root.url(rel)}, which does not "
                f"exist: finish iteration {self.iteration - 1} first"
            )
        return rel

    def policy_path(self) -> str | None:
        """The model this iteration samples from: the previous iteration's checkpoint, if any.

        In iteration 0, `model.name` given as an fsspec URI (a checkpoint another run
        trained, as a schedule chains them) is downloaded; a Hub id or path is used as is.
        """
        if self.iteration == 0:
            return remote_model_dir(self.spec.model.name)
        return str(self.root.local_dir(self._previous_checkpoint()))

    def trained_path(self) -> str:
        """The checkpoint this iteration's training stage produced."""
        rel = f"{iteration_dir(self.iteration)}/{CHECKPOINT}"
        if not self.root.exists(rel):
            raise FileNotFoundError(f"{self.root.url(rel)} does not exist: run `spa train` first")
        return str(self.root.local_dir(rel))

    def backend(self, model_path: str | None = None) -> Backend:
        """The backend serving `model_path` (default: this iteration's policy), built once.

        A server that names its model (`generator.servedModelName`) needs no local copy of
        the policy: none is fetched."""
        from spa_core.backends import make_backend

        gen = self.spec.generator
        served = gen.backend == "openai" and gen.served_model_name is not None
        key = model_path or (None if served else self.policy_path())
        if key not in self._backends:
            self._backends[key] = make_backend(
                self.spec.model, self.spec.generator, model_path=key
            )
        return self._backends[key]

    def release(self, model_path: str) -> None:
        """Close the backend serving `model_path`, freeing its memory."""
        backend = self._backends.pop(model_path, None)
        if backend is not None:
            backend.close()

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[callable]:
        """A progress bar; yields `advance(k)`."""
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=not self.console.is_terminal,
        )
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda k=1: bar.advance(task, k)
