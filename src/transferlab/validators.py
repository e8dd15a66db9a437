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
- ``target/dev`` (min): deep embedded validation (You et al. 2019), where the source has a val split: the
  source val loss (each example's cross-entropy) weighted by its density ratio p_target(x) / p_source(x), with
  the authors' control variate. The ratio comes from a domain classifier (scikit-learn's logistic regression on
  the standardised features the head's classifier reads) fit on source val against target val, cross-fitted in
  ``DEV_FOLDS`` folds so that no example's weight comes from a classifier that saw it (the authors fit on source
  train against target train and weigh source val; this needs no pass over the training data). The only
  validator that reads source labels. Meant as an estimate of the target risk, so a model that predicts one class
  scores badly; where the domains are easy to tell apart the ratios collapse and its values lie far from the
  target loss (benchmarks/README.md), though it may still rank epochs well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

DIRECTIONS = {"target/entropy": "min", "target/im": "max", "target/snd": "max", "target/dev": "min"}


def direction(metric: str) -> str:
    """Which way ``metric`` is better: ``min`` for losses and ``target/entropy``, ``max`` for the rest."""
    return DIRECTIONS.get(metric) or ("min" if metric.endswith("loss") else "max")


SND_TEMPERATURE = 0.05
DEV_FOLDS = 5
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


def density_ratios(source: torch.Tensor, target: torch.Tensor, folds: int = DEV_FOLDS) -> torch.Tensor:
    """p_target(x) / p_source(x) at each ``source`` row: a domain classifier's odds times n_source / n_target,
    each row's from a classifier fit on the other folds (seeded: every DDP rank gets the same)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = torch.cat([source, target]).double().cpu().numpy()
    is_target = np.r_[np.zeros(len(source)), np.ones(len(target))]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    p_target = cross_val_predict(classifier, features, is_target, cv=cv, method="predict_proba")[: len(source), 1]
    p_target = np.clip(p_target, 1e-6, 1 - 1e-6)
    return torch.from_numpy(p_target / (1 - p_target) * len(source) / len(target))


def deep_embedded_validation(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """DEV's risk: mean(w l) + eta mean(w) - eta, eta = -Cov(w l, w) / Var(w) (You et al. 2019, their code)."""
    weighted = weights * losses
    variance = weights.var()
    eta = -torch.cov(torch.stack([weighted, weights]))[0, 1] / variance if variance > 0 else weights.new_zeros(())
    return weighted.mean() + eta * weights.mean() - eta


class ImportanceWeightedValidation(Metric):
    """``target/dev`` over an epoch: ``update(features, losses)`` with the source val's features and per-example
    losses, ``update(features)`` with the target val's (gathered across DDP ranks). Too few examples of either
    domain for the folds, or features that are not finite (a diverged model): NaN."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("source_features", "source_losses", "target_features"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor, losses: torch.Tensor | None = None) -> None:
        if losses is None:
            self.target_features.append(features.detach().float())
        else:
            self.source_features.append(features.detach().float())
            self.source_losses.append(losses.detach().float())

    def compute(self) -> torch.Tensor:
        if len(self.source_features) == 0 or len(self.target_features) == 0:
            return torch.tensor(float("nan"))
        source, target = dim_zero_cat(self.source_features), dim_zero_cat(self.target_features)
        if min(len(source), len(target)) < DEV_FOLDS or not (source.isfinite().all() and target.isfinite().all()):
            return torch.tensor(float("nan"), device=source.device)
        weights = density_ratios(source, target).to(source.device, torch.float64)
        return deep_embedded_validation(dim_zero_cat(self.source_losses).double(), weights).float()


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
