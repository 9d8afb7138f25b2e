"""Stage manifests: what a stage has finished, under which configuration.

A manifest lists finished shards. A shard is recorded only after its file is completely
written, so a stage killed at any point (or failing on a full disk) redoes exactly the
shards that are not listed, and never trusts a partial one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spa_core.layout import MANIFEST
from spa_core.rundir import RunDir

__all__ = ["ConfigMismatch", "StageManifest", "config_hash"]


class ConfigMismatch(RuntimeError):
    """A stage's existing output was produced with another configuration."""


def config_hash(*parts: Any) -> str:
    """A stable hash of JSON-serialisable configuration (pydantic models included)."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "model_dump"):
            return obj.model_dump(mode="json")
        return str(obj)

    blob = json.dumps(parts, sort_keys=True, default=default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class StageManifest:
    """The `_manifest.json` of one stage directory."""

    stage: str
    config_hash: str
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None

    @classmethod
    def open(cls, rundir: RunDir, stage: str, chash: str, *, force: bool = False) -> StageManifest:
        """Load the stage's manifest, or start a new one.

        `force` discards earlier output and starts over. Without it, earlier output made
        with another configuration raises ConfigMismatch (unless nothing was finished yet).
        """
        rel = f"{stage}/{MANIFEST}"
        if rundir.exists(rel):
            data = rundir.read_json(rel)
            if data.get("config_hash") == chash and not force:
                return cls(**data)
            nothing_to_lose = not data.get("shards") and not data.get("complete")
            if not (force or nothing_to_lose):
                raise ConfigMismatch(
                    f"{rundir.url(stage)} was produced with another configuration "
                    f"(hash {data.get('config_hash')}, now {chash}); rerun with --force to "
                    "redo it, or use a new run directory"
                )
        # Anything left in the directory (partial shards, a trainer's checkpoints) belongs to
        # an abandoned attempt: start clean.
        rundir.remove(stage)
        manifest = cls(stage=stage, config_hash=chash)
        manifest.save(rundir)
        return manifest

    @staticmethod
    def load(rundir: RunDir, stage: str) -> StageManifest | None:
        rel = f"{stage}/{MANIFEST}"
        return StageManifest(**rundir.read_json(rel)) if rundir.exists(rel) else None

    def save(self, rundir: RunDir) -> None:
        rundir.write_json(f"{self.stage}/{MANIFEST}", self.__dict__)

    def is_done(self, shard: str) -> bool:
        return shard in self.shards

    def mark_shard(self, rundir: RunDir, shard: str, **info: Any) -> None:
        """Record a finished shard; call only after its file is in place."""
        self.shards[shard] = {**info, "finished_at": _now()}
        self.save(rundir)

    def finish(self, rundir: RunDir, **stats: Any) -> None:
        self.stats = stats
        self.complete = True
        self.finished_at = _now()
        self.save(rundir)
