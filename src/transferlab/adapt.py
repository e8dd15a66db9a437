"""Domain adaptation from unlabelled target images: one more loss on a batch of source and target images.

DANN (Ganin & Lempitsky 2015): a domain discriminator learns to tell source from target features, and a gradient
reversal layer makes the features fool it. CDAN (Long et al. 2018): the discriminator sees the features
conditioned on the class predictions (their outer product), each example weighted by its prediction's certainty.
MCC (Jin et al. 2020): no extra network; it penalises confusion between classes in the target predictions.
DANN or CDAN can be combined with MCC. The losses follow thuml's Transfer-Learning-Library.

Source-free (SHOT, Liang et al. 2020): from a trained source checkpoint (``source_ckpt``), training batches hold
target images alone, the source classifier stays fixed and information maximisation (``im_weight``: confident and
diverse target predictions) moves the features to it.

BatchNorm, apart from any loss: with ``target_in_batchnorm`` the target images share every training batch, so the
backbone's BatchNorm normalises with statistics of both domains (every method above does; with no loss, it is the
control that tells what alignment adds beyond re-normalisation); with ``target_statistics`` (AdaBN, Li et al. 2016)
the target is scored with BatchNorm statistics re-estimated on its own training images.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.errors import ConfigError, is_number
from transferlab.optim import ParamGroup, no_weight_decay, split_by_decay
from transferlab.validators import entropy, information_maximisation

ADVERSARIAL = ("dann", "cdan")
RANDOMIZED_ABOVE = 4096  # CDAN: a features x classes outer product wider than this gets a random projection
RANDOMIZED_WIDTH = 1024  # ... of this width (Long et al.'s choice)


MAX_LOSS_WEIGHT = 10


def check_options(options: dict[str, Any]) -> None:
    """The ``adapt.`` options that cannot work, as one-line errors."""
    adversarial = options.get("adversarial")
    if adversarial is not None and adversarial not in ADVERSARIAL:
        raise ConfigError(f"adapt.adversarial={adversarial}: unknown; choose dann, cdan or null")
    for option, default, example in (
        ("adversarial_weight", 1.0, "1.0"),
        ("mcc_weight", 0.0, "1.0"),
        ("discriminator_lr_mult", 1.0, "1.0"),
        ("temperature", 2.5, "2.5"),
        ("im_weight", 0.0, "1.0"),
    ):
        value = options.get(option, default)
        positive = option in ("discriminator_lr_mult", "temperature")
        # A loss weight far above the classifier's own (1) drowns it: training quietly stops learning the task.
        weight = option.endswith("_weight")
        if not is_number(value) or value < 0 or (positive and value == 0) or (weight and value > MAX_LOSS_WEIGHT):
            bound = "> 0" if positive else f"in [0, {MAX_LOSS_WEIGHT}]" if weight else ">= 0"
            raise ConfigError(f"adapt.{option}={value}: use a number {bound}, e.g. adapt.{option}={example}")
    hidden = options.get("discriminator_hidden", 1024)
    if not is_number(hidden, whole=True) or hidden < 1:
        raise ConfigError(f"adapt.discriminator_hidden={hidden}: use a whole number >= 1, e.g. 1024")
    source_ckpt = options.get("source_ckpt")
    if options.get("im_weight") and source_ckpt is None:  # SHOT's loss alone would collapse a model being taught
        raise ConfigError(
            "adapt.source_ckpt=null: SHOT (adapt.im_weight > 0) adapts a trained source model without its data; "
            "set adapt.source_ckpt=<source run>/checkpoints/best.ckpt"
        )
    if source_ckpt is not None:
        from transferlab.run_folder import checkpoint_file

        checkpoint_file(
            source_ckpt, "give a trained source run's checkpoint, e.g. <run>/checkpoints/best.ckpt", "adapt.source_ckpt"
        )
        if adversarial is not None:
            raise ConfigError(
                f"adapt.adversarial={adversarial}: a source-free run (adapt.source_ckpt) has no source images for a "
                "discriminator to tell apart; use adapt=shot, or drop adapt.source_ckpt"
            )
    mixed, statistics = options.get("target_in_batchnorm", True), options.get("target_statistics", False)
    for option, value in (("target_in_batchnorm", mixed), ("target_statistics", statistics)):
        if not isinstance(value, bool):
            raise ConfigError(f"adapt.{option}={value}: use true or false")
    losses = adversarial is not None or bool(options.get("mcc_weight")) or bool(options.get("im_weight"))
    if source_ckpt is not None and not losses:
        raise ConfigError(
            f"adapt.source_ckpt={source_ckpt}: a source-free run needs a target loss; set adapt.im_weight=1.0 "
            "(adapt=shot)"
        )
    if losses and not mixed:
        raise ConfigError(
            "adapt.target_in_batchnorm=false: the adaptation losses need target images in the training batches; "
            "set it true, or use adapt=adabn (no loss)"
        )
    if not (losses or mixed or statistics):
        raise ConfigError(
            "adapt: adapts nothing (adversarial=null, mcc_weight=0, im_weight=0, target_in_batchnorm=false, "
            "target_statistics=false); use adapt=dann, cdan, mcc, shot, adabn or mixed_bn"
        )


def ramp(progress: float) -> float:
    """Ganin et al.'s trade-off schedule 2 / (1 + exp(-10 p)) - 1: 0 at the start, near 1 from half-way on."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coefficient * grad, None


def reverse_gradient(x: torch.Tensor, coefficient: float) -> torch.Tensor:
    """The identity going forward; going back, the gradient times ``-coefficient``."""
    return _ReverseGradient.apply(x, coefficient)


def certainty_weights(probs: torch.Tensor) -> torch.Tensor:
    """1 + exp(-entropy) per example, normalised to mean 1: confident predictions count more (CDAN-E, MCC)."""
    weight = 1.0 + torch.exp(-entropy(probs.detach()))
    return weight * (len(weight) / weight.sum())


def class_confusion(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Minimum class confusion (Jin et al. 2020): the off-diagonal mass of the certainty-weighted, row-normalised
    class correlation of ``logits``' tempered predictions, divided by the number of classes."""
    num_classes = logits.shape[1]
    probs = F.softmax(logits / temperature, dim=1)
    weighted = probs * certainty_weights(probs).unsqueeze(1)
    confusion = weighted.t() @ probs
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / num_classes


class DomainDiscriminator(nn.Sequential):
    """Two hidden layers (linear, BatchNorm, ReLU) and one logit: source (1) or target (0)."""

    def __init__(self, in_features: int, hidden: int = 1024):
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )


class DomainAdversarialLoss(nn.Module):
    """DANN's loss: a :class:`DomainDiscriminator` tells source (the first ``num_source`` rows) from target features,
    which reach it through gradient reversal by ``coefficient``; each domain weighs half. Returns (loss, accuracy);
    DANN does not look at the ``logits``."""

    def __init__(self, in_features: int, hidden: int = 1024):
        super().__init__()
        self.discriminator = DomainDiscriminator(in_features, hidden)

    def forward(
        self, features: torch.Tensor, logits: torch.Tensor, num_source: int, coefficient: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.discriminate(features, num_source, coefficient)

    def discriminate(
        self, features: torch.Tensor, num_source: int, coefficient: float, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        domain_logit = self.discriminator(reverse_gradient(features, coefficient)).squeeze(1)
        is_source = torch.zeros_like(domain_logit)
        is_source[:num_source] = 1
        halves = torch.where(is_source > 0, 0.5 / num_source, 0.5 / max(1, len(is_source) - num_source))
        weight = halves if weight is None else halves * weight
        loss = F.binary_cross_entropy_with_logits(domain_logit, is_source, weight=weight, reduction="sum")
        acc = ((domain_logit > 0).float() == is_source).float().mean().detach()
        return loss, acc


class ConditionalDomainAdversarialLoss(DomainAdversarialLoss):
    """CDAN+E's loss: the discriminator sees the features conditioned on the class predictions (their outer
    product, or Long et al.'s randomized multilinear map where that is wider than ``RANDOMIZED_ABOVE``), each
    example weighted by its prediction's certainty."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 1024):
        width = in_features * num_classes
        randomized = width > RANDOMIZED_ABOVE
        super().__init__(RANDOMIZED_WIDTH if randomized else width, hidden)
        if randomized:  # fixed at construction
            self.register_buffer("random_features", torch.randn(in_features, RANDOMIZED_WIDTH))
            self.register_buffer("random_classes", torch.randn(num_classes, RANDOMIZED_WIDTH))

    def forward(
        self, features: torch.Tensor, logits: torch.Tensor, num_source: int, coefficient: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        probs = F.softmax(logits, dim=1).detach()  # conditioning only: no gradient into the classifier here
        if hasattr(self, "random_features"):
            joint = (features @ self.random_features) * (probs @ self.random_classes) / math.sqrt(RANDOMIZED_WIDTH)
        else:
            joint = torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)
        return self.discriminate(joint, num_source, coefficient, weight=certainty_weights(probs))


class MinimumClassConfusionLoss(nn.Module):
    """MCC's loss on the target rows' logits (:func:`class_confusion`)."""

    def __init__(self, temperature: float = 2.5):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, target_logits: torch.Tensor) -> torch.Tensor:
        return class_confusion(target_logits, self.temperature)


def information_maximisation_loss(logits: torch.Tensor) -> torch.Tensor:
    """SHOT's loss on target logits: the mean entropy of the predictions minus the entropy of their mean (lower
    is confident and diverse), with SHOT's epsilon 1e-5 inside the logarithms."""
    return -information_maximisation(F.softmax(logits, dim=1))


class DomainAdaptation(nn.Module):
    """The adaptation loss of a training batch whose first ``num_source`` rows are source examples, the rest target:
    ``adversarial`` (``dann``, ``cdan`` or None) weighted by ``adversarial_weight`` x :func:`ramp` (training
    progress) on the reversed gradient, plus ``mcc_weight`` x MCC and ``im_weight`` x information maximisation
    (:func:`information_maximisation_loss`) on the target predictions. With ``source_ckpt`` (a source run's
    checkpoint) the run is source-free: it starts from that model, trains on target batches alone (``num_source``
    0) and keeps the classifier fixed.

    ``in_features`` is the width of the adapted feature (what the head's classifier reads), ``num_classes`` the
    number of logits (two for a binary head: give two-column logits). The discriminator trains in its own
    optimizer group (:meth:`param_groups`, lr x ``discriminator_lr_mult``) that no phase freezes or rescales.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        adversarial: str | None = "dann",
        adversarial_weight: float = 1.0,
        mcc_weight: float = 0.0,
        temperature: float = 2.5,
        discriminator_hidden: int = 1024,
        discriminator_lr_mult: float = 1.0,
        target_in_batchnorm: bool = True,
        target_statistics: bool = False,
        im_weight: float = 0.0,
        source_ckpt: str | None = None,
    ):
        super().__init__()
        check_options({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.target_in_batchnorm, self.target_statistics = target_in_batchnorm, target_statistics
        self.adversarial_method, self.adversarial_weight = adversarial, float(adversarial_weight)
        self.mcc_weight, self.im_weight = float(mcc_weight), float(im_weight)
        self.source_ckpt = None if source_ckpt is None else str(source_ckpt)
        self.discriminator_lr_mult = float(discriminator_lr_mult)
        self.adversarial: DomainAdversarialLoss | None = None
        if adversarial == "cdan":
            self.adversarial = ConditionalDomainAdversarialLoss(in_features, num_classes, discriminator_hidden)
        elif adversarial == "dann":
            self.adversarial = DomainAdversarialLoss(in_features, discriminator_hidden)
        self.mcc = MinimumClassConfusionLoss(temperature) if self.mcc_weight > 0 else None

    @property
    def methods(self) -> list[str]:
        losses = [m for m in (self.adversarial_method, "mcc" if self.mcc is not None else None) if m]
        if self.im_weight > 0:
            losses.append("im")
        if self.source_free:
            losses.append("source_free")
        if self.target_statistics:
            losses.append("adabn")
        return losses or ["mixed_bn"]

    @property
    def source_free(self) -> bool:
        """Training batches hold target examples alone; the classifier stays as the source run left it."""
        return self.source_ckpt is not None

    @property
    def has_loss(self) -> bool:
        return self.adversarial is not None or self.mcc is not None or self.im_weight > 0

    def param_groups(self) -> list[ParamGroup]:
        """The discriminator's optimizer groups (none without one), biases and norm weights without weight decay."""
        if self.adversarial is None:
            return []
        named = list(self.adversarial.discriminator.named_parameters())
        skip = no_weight_decay(self.adversarial.discriminator)
        return split_by_decay("discriminator", named, skip, self.discriminator_lr_mult)

    def forward(
        self, features: torch.Tensor, logits: torch.Tensor, num_source: int, progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, what to log) for a batch of ``features`` and ``logits``, source rows first."""
        loss = features.new_zeros(())
        logs: dict[str, float] = {}
        if self.adversarial is not None:
            coefficient = self.adversarial_weight * ramp(progress)
            domain_loss, domain_acc = self.adversarial(features, logits, num_source, coefficient)
            loss = loss + domain_loss
            logs.update(
                {"adapt/lambda": coefficient, "adapt/domain_loss": domain_loss.detach(), "adapt/domain_acc": domain_acc}
            )
        if self.mcc is not None:
            mcc = self.mcc(logits[num_source:])
            loss = loss + self.mcc_weight * mcc
            logs["adapt/mcc"] = mcc.detach()
        if self.im_weight > 0:
            im = information_maximisation_loss(logits[num_source:])
            loss = loss + self.im_weight * im
            logs["adapt/im_loss"] = im.detach()
        return loss, logs


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def statistics_of(model: nn.Module, batches: Iterable[Any], encode: Callable[[Any], Any]) -> Iterator[None]:
    """Within: ``model``'s BatchNorm running statistics are those of ``batches`` (AdaBN), estimated by ``encode``
    over them in train mode with a cumulative average, without gradients; the layers' statistics, momentum and
    modes are restored after."""
    layers = batchnorms(model)
    saved = [(m.training, m.momentum, {k: v.clone() for k, v in m.named_buffers()}) for m in layers]
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # the mean over every batch, not a running one
            m.train()
        with torch.no_grad():
            for inputs in batches:
                encode(inputs)
        for m, (training, _, _) in zip(layers, saved):
            m.train(training)
        yield
    finally:
        for m, (training, momentum, buffers) in zip(layers, saved):
            m.train(training)
            m.momentum = momentum
            for name, value in buffers.items():
                getattr(m, name).copy_(value)
