"""Optimizer parameter groups per layer group, and learning-rate schedules that keep their scales."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from transferlab.errors import ConfigError, is_number
from transferlab.layer_groups import LayerGroup


@dataclass
class ParamGroup:
    """One optimizer group: ``layer_group`` is what phases and layer decay rescale it by (a backbone layer group,
    ``head``, or a group no phase touches, such as ``discriminator``); ``name`` is unique (lr logging);
    ``weight_decay`` None keeps the optimizer's."""

    name: str
    params: list[nn.Parameter]
    layer_group: str
    lr_scale: float = 1.0
    weight_decay: float | None = None

    def as_dict(self) -> dict:
        """What torch's optimizers take; ``lr_scale`` and ``layer_group`` ride along for phase control."""
        extra = {} if self.weight_decay is None else {"weight_decay": self.weight_decay}
        return {
            "params": self.params,
            "name": self.name,
            "layer_group": self.layer_group,
            "lr_scale": self.lr_scale,
            **extra,
        }


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names of ``model``'s parameters that get no weight decay, by timm's rule (``param_groups_weight_decay``):
    biases, norm weights and any other 1-d parameter, and what the model's own ``no_weight_decay()`` lists."""
    listed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias") or n in listed}


def split_by_decay(
    name: str, named: list[tuple[str, nn.Parameter]], skip: set[str], lr_scale: float, layer_group: str | None = None
) -> list[ParamGroup]:
    """``named`` parameters as a group that decays and a ``<name>.no_decay`` group (weight decay 0) of the names in
    ``skip``; an empty one is left out."""
    decay = [p for n, p in named if n not in skip]
    plain = [p for n, p in named if n in skip]
    layer_group = layer_group or name
    groups = [ParamGroup(name, decay, layer_group, lr_scale)] if decay else []
    if plain:
        groups.append(ParamGroup(f"{name}.no_decay", plain, layer_group, lr_scale, weight_decay=0.0))
    return groups


def param_groups(
    backbone: nn.Module,
    groups: list[LayerGroup],
    head: nn.Module,
    scales: Mapping[str, float],
    filter_bias_and_bn: bool = True,
) -> list[ParamGroup]:
    """Optimizer groups per layer group (input to output), then the head's, each with its ``scales`` entry (by layer
    group name; the head's is ``head``). With ``filter_bias_and_bn``, biases and norm weights get no weight decay.

    ``lr_scale`` multiplies the optimizer's lr once the optimizer exists. Every group is registered up front,
    frozen ones too (their parameters get no gradient and do not move), so schedulers built now see every group
    later (PyTorch 62475).
    """
    params = dict(backbone.named_parameters())
    skip = no_weight_decay(backbone) if filter_bias_and_bn else set()
    head_skip = {f"head.{n}" for n in no_weight_decay(head)} if filter_bias_and_bn else set()
    out = []
    for group in groups:
        out += split_by_decay(group.name, [(n, params[n]) for n in group.param_names], skip, scales[group.name])
    named_head = [(f"head.{n}", p) for n, p in head.named_parameters()]
    return out + split_by_decay("head", named_head, head_skip, scales["head"])


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup then cosine decay to ``min_lr_ratio`` x each group's own lr, stepped per optimizer step."""
    if not is_number(warmup_steps, whole=True) or warmup_steps < 0:
        raise ConfigError(f"lr_scheduler.warmup_steps={warmup_steps}: use a whole number >= 0, e.g. 100")
    if not is_number(min_lr_ratio) or not 0 <= min_lr_ratio <= 1:
        raise ConfigError(f"lr_scheduler.min_lr_ratio={min_lr_ratio}: use a number in [0, 1], e.g. 0.01")
    if warmup_steps >= total_steps > 1:
        raise ConfigError(
            f"lr_scheduler.warmup_steps={warmup_steps}: the run has only {total_steps} optimizer steps; "
            f"use fewer warmup steps, e.g. {total_steps // 10}"
        )

    def scale(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, scale)


def multistep(
    optimizer: torch.optim.Optimizer, total_steps: int, milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1
) -> LambdaLR:
    """Multiply each group's lr by ``gamma`` at each milestone, given as a fraction of all optimizer steps."""
    fractions = list(milestones) if isinstance(milestones, Sequence) and not isinstance(milestones, str) else None
    if not fractions or not all(is_number(m) and 0 < m < 1 for m in fractions) or fractions != sorted(fractions):
        raise ConfigError(
            f"lr_scheduler.milestones={milestones}: use increasing fractions of the run in (0, 1), e.g. [0.5,0.75]"
        )
    if not is_number(gamma) or gamma <= 0:
        raise ConfigError(f"lr_scheduler.gamma={gamma}: use a number > 0, e.g. 0.1")
    steps = [int(m * total_steps) for m in milestones]
    return LambdaLR(optimizer, lambda step: gamma ** sum(step >= s for s in steps))


LrSchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
