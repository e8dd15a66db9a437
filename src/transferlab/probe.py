"""The exact linear probe: the linear head fitted on the frozen backbone's features as an L2-regularised logistic
regression, to convergence, full batch, with the regularisation strength chosen on held-out training data.

The protocol of CLIP's and DINOv2's linear evaluations (and scikit-learn's ``LogisticRegression``): for each ``C``
of a grid, fit on k-1 folds of the train split and score accuracy on the k-th; refit on the whole train split with
the best ``C``. The objective is scikit-learn's, ``C * sum(log loss) + ||W||^2 / 2`` (the bias unpenalised),
minimised by ``torch.optim.LBFGS`` in float64. The val split is never seen. Unlike an epoch-wise SGD probe, the
result does not depend on ``optimizer.lr`` or ``data.batch_size``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

C_GRID = tuple(10.0**k for k in range(-4, 5))  # 1e-4 .. 1e4, as scikit-learn's LogisticRegressionCV default
FOLDS = 5
# Converged: the largest gradient entry of the mean objective below TOLERANCE, scikit-learn's lbfgs criterion.
TOLERANCE = 1e-4
MAX_ITER = 2000


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    c: float,
    start: tuple | None = None,
    class_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(weight (outputs x features), bias) of the L2 logistic regression at ``c``: one output for two classes
    (the binary model, as scikit-learn fits it), else one per class (multinomial). ``start``: a (weight, bias)
    to start from (a neighbouring ``c``'s solution), which only makes it converge sooner. ``class_weights``
    weigh each example's loss by its class, as scikit-learn's ``class_weight`` does."""
    # Features far from unit scale (an unnormalised network's, of 1e6) never meet the stopping rule, and each fit
    # would run MAX_ITER: they are fitted as features / s (s their RMS) at C s^2, the same optimum
    # (x.w = (x/s).(w s), ||w||^2 = ||w s||^2 / s^2). Features of ordinary scale are fitted as they are, by
    # scikit-learn's rule (parity tested).
    features = np.asarray(features, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.square(features))))
    s = rms if rms and not 1e-2 <= rms <= 1e2 else 1.0
    c = c * s * s
    x = torch.as_tensor(features / s)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    outputs = 1 if num_classes == 2 else num_classes
    weight = torch.zeros(outputs, x.shape[1], dtype=torch.float64)
    bias = torch.zeros(outputs, dtype=torch.float64)
    if start is not None:
        weight, bias = torch.as_tensor(start[0]).clone() * s, torch.as_tensor(start[1]).clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=MAX_ITER, tolerance_grad=TOLERANCE, tolerance_change=1e-12, history_size=20,
        line_search_fn="strong_wolfe",
    )  # fmt: skip
    scale = 1.0 / (c * len(y))  # the objective divided by C * n: a mean loss, well scaled for any C
    target = y.double() if outputs == 1 else y
    per_example = torch.ones(len(y), dtype=torch.float64)
    if class_weights is not None:
        per_example = torch.as_tensor(np.asarray(class_weights, dtype=np.float64))[y]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight.T + bias
        if outputs == 1:
            losses = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        else:
            losses = F.cross_entropy(logits, target, reduction="none")
        loss = (losses * per_example).mean() + 0.5 * scale * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().numpy() / s, bias.detach().numpy()


def predict(weight: np.ndarray, bias: np.ndarray, features: np.ndarray) -> np.ndarray:
    logits = np.asarray(features, dtype=np.float64) @ weight.T + bias
    return (logits[:, 0] > 0).astype(np.int64) if weight.shape[0] == 1 else logits.argmax(1)


def choose_c(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    grid: Sequence[float] = C_GRID,
    seed: int = 0,
    class_weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Mean held-out accuracy of each ``C`` over stratified folds of the train split; the best (ties: the
    smallest C, the strongest regularisation)."""
    from sklearn.model_selection import StratifiedKFold

    folds = int(min(FOLDS, np.bincount(labels, minlength=num_classes).min()))
    if folds < 2:
        return {"grid": list(grid), "cv_acc": None, "folds": folds, "C": 1.0}  # too few images to hold any out
    split = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels))
    accs = np.zeros((len(grid), folds))
    for f, (fit, held) in enumerate(split):
        start = None  # each fold walks the grid from strong to weak regularisation, starting from the last solution
        for c in sorted(grid):
            start = fit_logistic(features[fit], labels[fit], num_classes, c, start, class_weights)
            accs[list(grid).index(c), f] = (predict(*start, features[held]) == labels[held]).mean()
    scores = [round(float(a), 6) for a in accs.mean(1)]
    return {"grid": list(grid), "cv_acc": scores, "folds": folds, "C": grid[int(np.argmax(scores))]}


def fit_probe(
    features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0, class_weights: np.ndarray | None = None
) -> tuple[dict, tuple]:
    """The protocol above: (its record for summary.json, (weight, bias) refitted on all of ``features``)."""
    start = time.perf_counter()
    chosen = choose_c(features, labels, num_classes, seed=seed, class_weights=class_weights)
    weight, bias = fit_logistic(features, labels, num_classes, chosen["C"], class_weights=class_weights)
    train_acc = float((predict(weight, bias, features) == labels).mean())
    record = {
        **chosen,
        "train_acc": round(train_acc, 6),
        "n": len(labels),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return record, (weight, bias)


def write_head(linear: nn.Linear, weight: np.ndarray, bias: np.ndarray) -> None:
    """The fitted model into ``linear``; a two-class softmax head gets the binary model as logits (-z/2, z/2),
    whose softmax is the binary model's sigmoid."""
    w, b = torch.as_tensor(weight), torch.as_tensor(bias)
    if linear.out_features == 2 and w.shape[0] == 1:
        w, b = torch.cat([-w / 2, w / 2]), torch.cat([-b / 2, b / 2])
    with torch.no_grad():
        linear.weight.copy_(w.to(linear.weight))
        linear.bias.copy_(b.to(linear.bias))


class ExactProbe(pl.Callback):
    """Fits ``linear`` (the head's classifier) exactly at the start of each phase whose ``probe`` is ``exact``,
    on ``train_features()`` (the frozen backbone's features of the train split, eval transform), and keeps it
    fixed through that phase (its gradients are dropped: the epochs still report train and val metrics).

    ``probe_at(epoch)`` says whether an epoch's phase is an exact probe; ``phase_start(epoch)`` the first epoch of
    that epoch's phase."""

    def __init__(
        self,
        linear: nn.Linear,
        num_classes: int,
        probe_at: Callable[[int], bool],
        phase_start: Callable[[int], int],
        train_features: Callable[[], tuple[np.ndarray, np.ndarray]],
        seed: int = 0,
        class_weights: Sequence[float] | None = None,
    ):
        self.linear, self.num_classes, self.seed = linear, num_classes, seed
        self.class_weights = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)
        self.probe_at, self.phase_start, self.train_features = probe_at, phase_start, train_features
        self.fits: list[dict[str, Any]] = []  # one record per fit: for summary.json

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self.probe_at(epoch) or any(r["epoch"] == self.phase_start(epoch) for r in self.fits):
            return
        features, labels = self.train_features()
        record, (weight, bias) = fit_probe(
            np.asarray(features, dtype=np.float64), np.asarray(labels), self.num_classes, self.seed, self.class_weights
        )
        write_head(self.linear, weight, bias)
        self.fits.append({"epoch": self.phase_start(epoch), **record})
        rank_zero_info(
            f"exact linear probe: C={record['C']:g} of {len(record['grid'])} (held-out accuracy "
            f"{max(record['cv_acc'] or [0]):.4f}, {record['folds']} folds), train accuracy {record['train_acc']:.4f}, "
            f"{record['seconds']:.2f}s"
        )

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe_at(trainer.current_epoch):
            self.linear.weight.grad = self.linear.bias.grad = None  # the optimizer skips them: the fit stays

    def state_dict(self) -> dict[str, Any]:
        return {"fits": self.fits}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fits = list(state_dict["fits"])


def exact_probe(schedule, phases, head, source, serving, seed: int, class_weights=None) -> ExactProbe | None:
    """The ExactProbe callback where a phase of ``schedule`` asks for it (schedule.probe=exact), on a linear head:
    fitted on the frozen backbone's features (through ``serving``) of ``source``'s train split, without
    augmentation."""
    from transferlab.errors import ConfigError
    from transferlab.heads import LinearHead

    if not any(p.probe == "exact" for p in schedule.phases):
        return None
    if not isinstance(head, LinearHead):
        raise ConfigError(
            f"schedule.probe=exact: fits a linear head, not {type(head).__name__}; use head=linear or schedule.probe=sgd"
        )

    def train_features():
        train = source.eval_view("train")
        return serving.features("train", train, source.eval_loader(train)), train.labels

    return ExactProbe(
        head.fc, source.num_classes, phases.probe_at, phases.phase_start, train_features, seed, class_weights
    )
