"""Optimizer parameter groups per layer group, and learning-rate schedules that keep their scales."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from transferlab.layer_groups import LayerGroup


def param_groups(backbone: nn.Module, groups: list[LayerGroup], head: nn.Module, scales: list[float]) -> list[dict]:
    """One optimizer group per layer group (named, for lr logging) and one for the head, with ``lr_scale`` from
    the current phase (backbone groups input to output, then the head).

    ``lr_scale`` multiplies the optimizer's lr once the optimizer exists. Every group is registered up front,
    frozen ones too (their parameters get no gradient and do not move), so schedulers built now see every group
    later (PyTorch 62475).
    """
    params = dict(backbone.named_parameters())
    out = [
        {"params": [params[n] for n in g.param_names], "lr_scale": scale, "name": g.name}
        for g, scale in zip(groups, scales)
    ]
    out.append({"params": list(head.parameters()), "lr_scale": scales[-1], "name": "head"})
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


def multistep(
    optimizer: torch.optim.Optimizer, total_steps: int, milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1
) -> LambdaLR:
    """Multiply each group's lr by ``gamma`` at each milestone, given as a fraction of all optimizer steps."""
    steps = [int(m * total_steps) for m in milestones]
    return LambdaLR(optimizer, lambda step: gamma ** sum(step >= s for s in steps))


LrSchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]
