"""The run directory's layout is one light module: the stages, the report and the operator
import it, not each other."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from spa_core.layout import finished_stats
from spa_core.rundir import RunDir
from spa_core.stages.manifest import StageManifest

ROOT = Path(__file__).resolve().parents[1]
OPERATOR = ROOT / "operator" / "spa_operator"

#: Modules that read the layout and must not reach into the stages or the trainer for it.
READERS = [*sorted(OPERATOR.rglob("*.py")),
           *(ROOT / "spa_core" / rel for rel in ("evaluation/report.py", "summary.py",
                                                  "termination.py", "layout.py"))]
FORBIDDEN = ("spa_core.stages", "spa_core.training")
#: The operator mounts the distributed-training file's content, which is training
#: configuration (not layout): the one import it takes from the trainer's light module.
ALLOWED = {("builders/training.py", "spa_core.training.distributed")}


def test_importing_the_layout_loads_nothing_heavy() -> None:
    code = ("import sys, spa_core.layout; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'spa_core', 'torch', 'transformers', 'trl', 'rich', 'pyarrow', 'fsspec', "
            "'numpy', 'pydantic'}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['spa_core', 'spa_core.layout']"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            # `from spa_core import stages`
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_readers_of_the_layout_import_no_stage_or_training_code() -> None:
    assert len(READERS) > 10
    offending = []
    for path in READERS:
        rel = path.relative_to(OPERATOR).as_posix() if path.is_relative_to(OPERATOR) else None
        for module in _imported_modules(path):
            allowed = any(rel == file and (module == m or module.startswith(f"{m}."))
                          for file, m in ALLOWED)
            if module.startswith(FORBIDDEN) and not allowed:
                offending.append(f"{path.relative_to(ROOT)}: {module}")
    assert not offending


def test_finished_stats_reads_a_finished_manifest_only(tmp_path: Path) -> None:
    it = RunDir(str(tmp_path))
    assert finished_stats(it, "pairs") == {}
    manifest = StageManifest.open(it, "pairs", "hash")
    manifest.mark_shard(it, "shard-00000", rows=3)
    assert finished_stats(it, "pairs") == {}
    manifest.finish(it, pairs=2, groups_kept=1)
    assert finished_stats(it, "pairs") == {"pairs": 2, "groups_kept": 1}
    assert finished_stats(it, "pairs") == StageManifest.load(it, "pairs").stats
