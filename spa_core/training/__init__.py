"""Preference training: the weighted SimPO loss, the pairs dataset and the trainer.

`spa_core.training.loss` and `.data` are light; `train` (and the trainer classes) import
torch, transformers and TRL on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["PairsError", "SPATrainer", "TrainResult", "spa_simpo_loss", "train"]

if TYPE_CHECKING:
    from spa_core.training.data import PairsError
    from spa_core.training.loss import spa_simpo_loss
    from spa_core.training.trainer import SPATrainer, TrainResult, train

_WHERE = {
    "PairsError": "spa_core.training.data",
    "spa_simpo_loss": "spa_core.training.loss",
    "SPATrainer": "spa_core.training.trainer",
    "TrainResult": "spa_core.training.trainer",
    "train": "spa_core.training.trainer",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
