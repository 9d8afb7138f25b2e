"""The uncertainty-weighted SimPO loss (step 7 of the method)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["spa_simpo_loss"]


def spa_simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    beta: float,
    gamma: float,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """mean_i w_i * -log sigmoid(beta * (c_i - r_i) - gamma).

    `chosen_logps` / `rejected_logps` are length-normalised (mean per completion token)
    log-probs, shape (batch,). `weights` (batch,) are the pairs' uncertainty weights; None
    means all ones, which is exactly SimPO (TRL's CPO with loss_type="simpo", cpo_alpha=0).
    `reduction="none"` returns the weighted per-pair losses.
    """
    if chosen_logps.shape != rejected_logps.shape or chosen_logps.dim() != 1:
        raise ValueError(
            f"chosen_logps and rejected_logps must be 1-D and of one shape, got "
            f"{tuple(chosen_logps.shape)} and {tuple(rejected_logps.shape)}"
        )
    # Same association as TRL's cpo_loss, so that unit weights reproduce SimPO bit for bit.
    logits = (chosen_logps - rejected_logps) - gamma / beta
    losses = -F.logsigmoid(beta * logits)
    if weights is not None:
        if weights.shape != losses.shape:
            raise ValueError(
                f"weights must have shape {tuple(losses.shape)}, got {tuple(weights.shape)}"
            )
        losses = losses * weights.to(device=losses.device, dtype=losses.dtype)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
