"""Optimizer parameter groups per layer group, and learning-rate schedules that keep their scales."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from transferlab.layer_groups import LayerGroup


def param_groups(backbone: nn.Module, groups: list[LayerGroup], head: nn.Module, backbone_lr_mult: float) -> list[dict]:
    """One optimizer group per layer group (named, for lr logging) and one for the head.

    ``lr_scale`` multiplies the optimizer's lr once the optimizer exists; torch and Lightning schedulers then
    scale each group's own lr, so the ratios hold at every step.

    Every group is registered up front, frozen ones too (their parameters get no gradient and do not move), so
    schedulers built now see every group later (PyTorch 62475).
    """
    params = dict(backbone.named_parameters())
    out = [{"params": [params[n] for n in g.param_names], "lr_scale": backbone_lr_mult, "name": g.name} for g in groups]
    out.append({"params": list(head.parameters()), "lr_scale": 1.0, "name": "head"})
    return out


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup then cosine decay to ``min_lr_ratio`` x each group's own lr, stepped per optimizer step."""

    def scale(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, scale)


LrSchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
