"""spa_simpo_loss: SimPO exactly (TRL's own code) with unit weights; weights scale each pair."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest

import torch

from spa_core.training.loss import spa_simpo_loss

BETA, GAMMA = 2.0, 1.0


def trl_simpo_losses(
    chosen: torch.Tensor, rejected: torch.Tensor, beta: float, gamma: float
) -> torch.Tensor:
    """Per-pair losses from TRL's CPOTrainer.cpo_loss itself, run on a minimal `self`
    holding the attributes that method reads (building a trainer needs a model and data)."""
    from trl.import_utils import TRLExperimentalWarning

    with warnings.catch_warnings():  # the notice that trl.experimental may change (pinned)
        warnings.filterwarnings("ignore", category=TRLExperimentalWarning)
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    config = CPOConfig(output_dir="unused", loss_type="simpo", cpo_alpha=0.0, beta=beta,
                       simpo_gamma=gamma, activation_checkpointing=False, use_cpu=True,
                       report_to="none")
    trainer = SimpleNamespace(
        alpha=config.alpha, beta=config.beta, simpo_gamma=config.simpo_gamma,
        loss_type=config.loss_type, label_smoothing=config.label_smoothing,
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    losses, _, _ = CPOTrainer.cpo_loss(trainer, chosen, rejected)
    return losses


@pytest.fixture
def logps() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    chosen = -3 * torch.rand(16, generator=generator)
    rejected = -3 * torch.rand(16, generator=generator)
    return chosen, rejected


@pytest.mark.parametrize("weights", ["none", "ones"])
def test_unit_weights_equal_trl_simpo(logps, weights):
    chosen, rejected = logps
    w = None if weights == "none" else torch.ones_like(chosen)
    expected = trl_simpo_losses(chosen, rejected, BETA, GAMMA)
    per_pair = spa_simpo_loss(chosen, rejected, w, beta=BETA, gamma=GAMMA, reduction="none")
    assert torch.allclose(per_pair, expected, atol=1e-6, rtol=0)
    loss = spa_simpo_loss(chosen, rejected, w, beta=BETA, gamma=GAMMA)
    assert abs(loss.item() - expected.mean().item()) < 1e-6


def test_unit_weights_equal_trl_simpo_for_other_beta_gamma(logps):
    chosen, rejected = logps
    expected = trl_simpo_losses(chosen, rejected, 10.0, 5.4)
    loss = spa_simpo_loss(chosen, rejected, beta=10.0, gamma=5.4)
    assert abs(loss.item() - expected.mean().item()) < 1e-6


# Three pairs worked by hand: z = beta * (c - r) - gamma = [0, -3, -1].
CHOSEN = [-1.0, -2.0, -0.5]
REJECTED = [-1.5, -1.0, -0.5]
WEIGHTS = [0.5, 1.0, 1.5]
Z = [0.0, -3.0, -1.0]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_weighted_loss_is_the_weighted_mean_of_pair_losses():
    c, r, w = (torch.tensor(x, dtype=torch.float64) for x in (CHOSEN, REJECTED, WEIGHTS))
    loss = spa_simpo_loss(c, r, w, beta=BETA, gamma=GAMMA)
    # -log sigmoid(z) = softplus(-z)
    expected = sum(w * _softplus(-z) for w, z in zip(WEIGHTS, Z, strict=True)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    unweighted = sum(_softplus(-z) for z in Z) / 3
    assert abs(loss.item() - unweighted) > 0.1


def test_weights_scale_each_pairs_gradient():
    chosen = torch.tensor(CHOSEN, dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor(REJECTED, dtype=torch.float64, requires_grad=True)
    spa_simpo_loss(chosen, rejected, torch.tensor(WEIGHTS, dtype=torch.float64),
                   beta=BETA, gamma=GAMMA).backward()
    # d/dc_i [w_i softplus(-z_i)] / 3 = -w_i * beta * sigmoid(-z_i) / 3; the opposite for r_i.
    expected = [-w * BETA * _sigmoid(-z) / 3 for w, z in zip(WEIGHTS, Z, strict=True)]
    assert chosen.grad.tolist() == pytest.approx(expected, abs=1e-12)
    assert rejected.grad.tolist() == pytest.approx([-g for g in expected], abs=1e-12)


def test_zero_weight_removes_a_pair_from_the_gradient():
    chosen = torch.tensor(CHOSEN, requires_grad=True)
    spa_simpo_loss(chosen, torch.tensor(REJECTED), torch.tensor([0.0, 1.0, 1.0]),
                   beta=BETA, gamma=GAMMA).backward()
    assert chosen.grad[0].item() == 0.0
    assert chosen.grad[1].item() != 0.0


def test_reductions():
    c, r, w = torch.tensor(CHOSEN), torch.tensor(REJECTED), torch.tensor(WEIGHTS)
    per_pair = spa_simpo_loss(c, r, w, beta=BETA, gamma=GAMMA, reduction="none")
    assert per_pair.shape == (3,)
    assert spa_simpo_loss(c, r, w, beta=BETA, gamma=GAMMA, reduction="sum").item() == pytest.approx(
        per_pair.sum().item())
    with pytest.raises(ValueError, match="reduction"):
        spa_simpo_loss(c, r, w, beta=BETA, gamma=GAMMA, reduction="max")  # type: ignore[arg-type]


def test_shape_mismatches_are_rejected():
    c, r = torch.tensor(CHOSEN), torch.tensor(REJECTED)
    with pytest.raises(ValueError, match="weights must have shape"):
        spa_simpo_loss(c, r, torch.ones(2), beta=BETA, gamma=GAMMA)
    with pytest.raises(ValueError, match="1-D"):
        spa_simpo_loss(c, r[:2], beta=BETA, gamma=GAMMA)
