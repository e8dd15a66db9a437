"""Which layer groups train, and how fast, relative to the head."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transferlab.errors import ConfigError
from transferlab.layer_groups import LayerGroup


@dataclass(frozen=True)
class Schedule:
    """``freeze_depth`` layer groups (input side first) are frozen; ``"all"`` freezes the whole backbone.

    ``backbone_lr_mult`` scales the learning rate of the trainable backbone groups against ``optimizer.lr``,
    which the head uses. Presets: ``full`` (0), ``frozen`` (all: a linear probe), ``freeze_depth`` (N).
    """

    freeze_depth: int | str = 0
    backbone_lr_mult: float = 1.0

    def frozen_count(self, groups: list[LayerGroup]) -> int:
        depth = self.freeze_depth
        if depth == "all":
            return len(groups)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= len(groups):
            names = ", ".join(g.name for g in groups)
            raise ConfigError(
                f"schedule.freeze_depth={depth}: the backbone has {len(groups)} layer groups ({names}); "
                f"use 0..{len(groups)} or all"
            )
        return depth

    def apply(self, model: nn.Module, groups: list[LayerGroup]) -> list[nn.Module]:
        """Set ``requires_grad`` per group; return the BatchNorm modules whose statistics must stay fixed."""
        if self.backbone_lr_mult <= 0:
            raise ConfigError(
                f"schedule.backbone_lr_mult={self.backbone_lr_mult}: must be > 0; freeze groups with freeze_depth"
            )
        frozen = {n for g in groups[: self.frozen_count(groups)] for n in g.param_names}
        for name, param in model.named_parameters():
            param.requires_grad_(name not in frozen)
        return frozen_batchnorms(model, frozen, whole=self.frozen_count(groups) == len(groups))


def frozen_batchnorms(model: nn.Module, frozen: set[str], whole: bool) -> list[nn.Module]:
    """BatchNorm layers inside frozen groups; those without affine parameters count when all is frozen."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]
            if (params and all(p in frozen for p in params)) or (not params and whole):
                found.append(module)
    return found
