"""Scores of a model on unlabelled target data, to choose checkpoints and settings without target labels.

Computed every epoch on the target's val split (an unlabelled target's own images or texts, without augmentation:
the transductive setting these validators were proposed for), logged under ``target/`` and usable as ``monitor=``
with the direction in :data:`DIRECTIONS` (``monitor_mode`` is checked against it):

- ``target/entropy`` (min): the mean entropy of the predictions (Morerio et al. 2018, "Minimal-entropy correlation
  alignment"). A model that predicts one class everywhere scores best too: read it beside ``target/im``.
- ``target/im`` (max): information maximisation, the entropy of the mean prediction minus the mean entropy of the
  predictions: confident and diverse (Gomes et al. 2010; the objective of SHOT, Liang et al. 2020).
- ``target/snd`` (max): soft neighbourhood density (Saito et al. 2021): each example's softmax over its
  similarities (temperature 0.05) to the others' L2-normalised predictions, its entropy averaged: high where
  predictions form dense neighbourhoods, but also where every prediction is alike (all uniform): read it beside
  ``target/entropy``. As the authors' code computes it (self-similarity masked to -1/T, log(p + 1e-5)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

DIRECTIONS = {"target/entropy": "min", "target/im": "max", "target/snd": "max"}


def direction(metric: str) -> str:
    """Which way ``metric`` is better: ``min`` for losses and ``target/entropy``, ``max`` for the rest."""
    return DIRECTIONS.get(metric) or ("min" if metric.endswith("loss") else "max")


SND_TEMPERATURE = 0.05
_EPS = 1e-5  # as in the SND authors' entropy


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Each row's entropy (nats)."""
    return -(probs * torch.log(probs + _EPS)).sum(1)


def information_maximisation(probs: torch.Tensor) -> torch.Tensor:
    return entropy(probs.mean(0, keepdim=True))[0] - entropy(probs).mean()


def soft_neighbourhood_density(probs: torch.Tensor, temperature: float = SND_TEMPERATURE, chunk: int = 1024):
    """SND of ``probs`` (n, classes), in blocks of ``chunk`` rows so that memory grows with n, not n squared."""
    normed = F.normalize(probs, dim=1)
    total = probs.new_zeros(())
    for start in range(0, len(normed), chunk):
        block = normed[start : start + chunk] @ normed.T / temperature
        rows = torch.arange(len(block), device=block.device)
        block[rows, rows + start] = -1 / temperature
        total = total + entropy(block.softmax(1)).sum()
    return total / max(1, len(normed))


class TargetValidators(Metric):
    """The validators above over every target example of an epoch (gathered across DDP ranks)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("probs", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())

    def compute(self) -> dict[str, torch.Tensor]:
        probs = dim_zero_cat(self.probs)
        return {
            "target/entropy": entropy(probs).mean(),
            "target/im": information_maximisation(probs),
            "target/snd": soft_neighbourhood_density(probs),
        }
