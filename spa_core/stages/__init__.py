"""The pipeline's stages, in order. Each reads and writes an iteration directory."""

from __future__ import annotations

from collections.abc import Callable

from spa_core.stages.context import StageContext

__all__ = ["STAGES", "StageContext", "stage_function"]

#: Stage names in pipeline order (the `spa` subcommand of each).
STAGES = ("prompts", "sample", "score", "refine", "pairs", "train", "evaluate")


def stage_function(name: str) -> Callable[[StageContext], dict]:
    """The function implementing a stage (imported lazily: some need torch)."""
    if name == "prompts":
        from spa_core.stages.prompts import run_prompts as fn
    elif name == "sample":
        from spa_core.stages.generate import run_sample as fn
    elif name == "score":
        from spa_core.stages.generate import run_score as fn
    elif name == "refine":
        from spa_core.stages.generate import run_refine as fn
    elif name == "pairs":
        from spa_core.stages.pairs import run_pairs as fn
    elif name == "train":
        from spa_core.stages.train import run_train as fn
    elif name == "evaluate":
        from spa_core.stages.evaluate import run_evaluate as fn
    else:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return fn
