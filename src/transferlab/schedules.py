"""Schedules: a list of phases, each saying which layer groups train, how fast, and what BatchNorm does.

``full``, ``frozen``, ``freeze_depth``, ``gradual`` (ULMFiT), ``lp_ft`` (Kumar et al. 2022) and ``layer_decay``
(MAE/BEiT fine-tuning) are presets of the one mechanism; ``Schedule(phases=[...])`` spells phases out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from transferlab.errors import ConfigError, is_number
from transferlab.layer_groups import LayerGroup

BN_MODES = ("train", "frozen_stats", "frozen", "affine_only")
PROBES = ("sgd", "exact")
PRESETS = ("full", "frozen", "freeze_depth", "gradual", "lp_ft", "layer_decay", "phases")


@dataclass(frozen=True)
class Phase:
    """One stretch of training.

    ``freeze_depth``: layer groups frozen from the input side (``"all"``: the whole backbone). Learning rates are
    ``optimizer.lr`` x ``head_lr_mult`` for the head and x ``backbone_lr_mult`` x ``layer_decay ** k`` for the
    backbone group k groups below the head (floored at ``min_lr_scale``); groups scaled below ``freeze_below``
    are frozen too. ``bn_mode`` says what BatchNorm in trainable groups does (frozen groups keep statistics fixed):
    ``train``; ``frozen_stats`` (eval mode, affine trains); ``frozen`` (eval mode, affine frozen too);
    ``affine_only`` (eval mode, and BatchNorm affine parameters train in every group, frozen ones included).
    ``epochs=None`` lasts to the end of training. ``probe="exact"`` (a phase that freezes the whole backbone)
    fits the linear head exactly at the phase's start and keeps it (see :mod:`transferlab.probe`); ``sgd``
    trains it with the optimizer, epoch by epoch.
    """

    epochs: int | None = None
    freeze_depth: int | str = 0
    backbone_lr_mult: float = 1.0
    head_lr_mult: float = 1.0
    layer_decay: float | None = None
    min_lr_scale: float = 0.0
    freeze_below: float | None = None
    bn_mode: str = "train"
    probe: str = "sgd"

    def __post_init__(self) -> None:
        if self.bn_mode not in BN_MODES:
            raise ConfigError(f"schedule.bn_mode={self.bn_mode}: choose one of {', '.join(BN_MODES)}")
        for option in ("backbone_lr_mult", "head_lr_mult"):
            value = getattr(self, option)
            if not is_number(value) or value <= 0:
                raise ConfigError(f"schedule.{option}={value}: must be > 0; freeze with freeze_depth")
        if self.layer_decay is not None and not (is_number(self.layer_decay) and 0 < self.layer_decay <= 1):
            raise ConfigError(f"schedule.layer_decay={self.layer_decay}: use a number in (0, 1], e.g. 0.65")
        if not (is_number(self.min_lr_scale) and self.min_lr_scale >= 0):
            raise ConfigError(f"schedule.min_lr_scale={self.min_lr_scale}: use a number >= 0, e.g. 0.0")
        if self.freeze_below is not None and not (is_number(self.freeze_below) and self.freeze_below >= 0):
            raise ConfigError(f"schedule.freeze_below={self.freeze_below}: use a number >= 0 or null, e.g. 1e-3")
        if self.epochs is not None and not (is_number(self.epochs, whole=True) and self.epochs >= 1):
            raise ConfigError(f"schedule.phases: a phase lasts at least 1 epoch, not {self.epochs}")
        if self.probe not in PROBES:
            raise ConfigError(f"schedule.probe={self.probe}: choose one of {', '.join(PROBES)}")
        if self.probe == "exact" and self.freeze_depth != "all":
            raise ConfigError(
                f"schedule.probe=exact: fits the head on a frozen backbone's features, but this phase has "
                f"freeze_depth={self.freeze_depth}; set schedule.freeze_depth=all or schedule.probe=sgd"
            )
        depth = self.freeze_depth
        if depth != "all" and (not is_number(depth, whole=True) or depth < 0):
            raise ConfigError(f"schedule.freeze_depth={depth}: use a whole number of layer groups >= 0, or all")

    def frozen_count(self, groups: Sequence[LayerGroup]) -> int:
        depth = self.freeze_depth
        if depth == "all":
            return len(groups)
        if depth > len(groups):
            names = ", ".join(g.name for g in groups)
            raise ConfigError(
                f"schedule.freeze_depth={depth}: the backbone has {len(groups)} layer groups ({names}); "
                f"use 0..{len(groups)} or all"
            )
        return depth

    def lr_scales(self, n_groups: int) -> list[float]:
        """One lr scale per backbone group (input to output), then the head's. Frozen groups keep theirs."""
        decay = self.layer_decay or 1.0
        scales = [max(self.backbone_lr_mult * decay ** (n_groups - i), self.min_lr_scale) for i in range(n_groups)]
        return [*scales, self.head_lr_mult]

    def frozen_groups(self, groups: Sequence[LayerGroup]) -> list[bool]:
        depth = self.frozen_count(groups)
        scales = self.lr_scales(len(groups))
        below = self.freeze_below
        return [i < depth or (below is not None and scales[i] < below) for i in range(len(groups))]


@dataclass(frozen=True)
class Schedule:
    """Phases run one after another; the last one lasts to the end of training."""

    phases: tuple[Phase, ...] = field(default_factory=lambda: (Phase(),))

    def __post_init__(self) -> None:
        phases = tuple(p if isinstance(p, Phase) else Phase(**p) for p in self.phases)
        if not phases:
            raise ConfigError("schedule.phases: give at least one phase")
        object.__setattr__(self, "phases", phases)

    def phase_index(self, epoch: int) -> int:
        start = 0
        for index, phase in enumerate(self.phases):
            if phase.epochs is None or epoch < start + phase.epochs:
                return index
            start += phase.epochs
        return len(self.phases) - 1

    def start_epoch(self, index: int) -> int:
        return sum(p.epochs or 0 for p in self.phases[:index])

    def check(self, groups: Sequence[LayerGroup]) -> None:
        """Fail before training on a phase that does not fit this backbone."""
        for phase in self.phases:
            phase.frozen_groups(groups)


def preset(
    name: str = "full",
    freeze_depth: int | str = 0,
    backbone_lr_mult: float = 1.0,
    head_lr_mult: float = 1.0,
    layer_decay: float | None = None,
    min_lr_scale: float = 0.0,
    freeze_below: float | None = None,
    bn_mode: str = "train",
    unfreeze_every: int | None = None,
    unfreeze_fraction: float = 0.5,
    milestones: Sequence[Sequence[int]] | None = None,
    probe_epochs: int = 1,
    probe: str = "sgd",
    ft_lr_mult: float = 0.1,
    phases: Sequence[dict[str, Any]] | None = None,
    num_groups: int | None = None,
    max_epochs: int | None = None,
) -> Schedule:
    """Build a preset schedule. Every preset takes ``freeze_depth`` and ``layer_decay`` so sweeps can vary them.

    - ``full`` / ``freeze_depth`` / ``layer_decay``: one phase with those settings; ``frozen``: freeze_depth=all.
    - ``gradual``: head only, then one more group (output towards input) every ``unfreeze_every`` epochs down to
      ``freeze_depth``; or ``milestones: [[epoch, freeze_depth], ...]``. Needs ``num_groups`` unless milestones.
      Without either, the unfreezing is spread over ``unfreeze_fraction`` of ``max_epochs`` (the run's length),
      at least one epoch per group; without ``max_epochs``, one epoch per group.
    - ``lp_ft``: a linear probe for ``probe_epochs``, then fine-tuning down to ``freeze_depth`` with every lr
      times ``ft_lr_mult``.
    - ``probe`` (``sgd`` or ``exact``) is how ``frozen`` and ``lp_ft``'s first phase fit the head.
    - ``phases``: ``phases`` spelled out, each a dict of :class:`Phase` fields over the common values.
    """
    common: dict[str, Any] = dict(
        freeze_depth=freeze_depth,
        backbone_lr_mult=backbone_lr_mult,
        head_lr_mult=head_lr_mult,
        layer_decay=layer_decay,
        min_lr_scale=min_lr_scale,
        freeze_below=freeze_below,
        bn_mode=bn_mode,
    )
    if probe != "sgd" and name not in ("frozen", "lp_ft"):
        raise ConfigError(f"schedule.probe={probe}: applies to schedule=frozen and lp_ft (set it per phase otherwise)")
    if name in ("full", "freeze_depth", "layer_decay"):
        if name == "layer_decay" and layer_decay is None:
            raise ConfigError("schedule.layer_decay is required with schedule=layer_decay; e.g. 0.65")
        return Schedule((Phase(**common),))
    if name == "frozen":
        return Schedule((Phase(**{**common, "freeze_depth": "all", "probe": probe}),))
    if name == "lp_ft":
        first = Phase(**{**common, "epochs": probe_epochs, "freeze_depth": "all", "probe": probe})
        lrs = {"backbone_lr_mult": backbone_lr_mult * ft_lr_mult, "head_lr_mult": head_lr_mult * ft_lr_mult}
        return Schedule((first, Phase(**{**common, **lrs})))
    if name == "phases":
        return Schedule(tuple(Phase(**{**common, **p}) for p in phases or ()))
    if name == "gradual":
        if unfreeze_every is None:
            unfreeze_every = _pace(common["freeze_depth"], num_groups, unfreeze_fraction, max_epochs)
        return Schedule(tuple(_gradual_phases(common, unfreeze_every, milestones, num_groups)))
    raise ConfigError(f"schedule.name={name}: choose one of {', '.join(PRESETS)}")


def _pace(freeze_depth: int | str, num_groups: int | None, fraction: float, max_epochs: int | None) -> int:
    """Epochs per unfrozen group that finish the unfreezing after ``fraction`` of ``max_epochs``."""
    if not is_number(fraction) or not 0 < fraction <= 1:
        raise ConfigError(f"schedule.unfreeze_fraction={fraction}: use a number in (0, 1], e.g. 0.5")
    if max_epochs is None or num_groups is None:
        return 1
    steps = num_groups - (0 if freeze_depth == "all" else int(freeze_depth))
    return max(1, int(fraction * max_epochs / max(steps, 1)))


def _gradual_phases(
    common: dict[str, Any], every: int, milestones: Sequence[Sequence[int]] | None, num_groups: int | None
) -> list[Phase]:
    if milestones:
        points = sorted((int(epoch), depth) for epoch, depth in milestones)
        if points[0][0] != 0:
            points.insert(0, (0, "all"))
        lengths = [b[0] - a[0] for a, b in zip(points, points[1:])] + [None]
        if any(n is not None and n < 1 for n in lengths):
            raise ConfigError("schedule.milestones: epochs must be distinct; e.g. [[0, all], [2, 3], [4, 0]]")
        return [Phase(**{**common, "epochs": n, "freeze_depth": d}) for (_, d), n in zip(points, lengths)]
    if num_groups is None:
        raise ConfigError("schedule=gradual needs the backbone's number of layer groups (set by transferlab-train)")
    if every < 1:
        raise ConfigError(f"schedule.unfreeze_every={every}: must be >= 1 epoch")
    floor = 0 if common["freeze_depth"] == "all" else common["freeze_depth"]
    depths = list(range(num_groups, floor - 1, -1)) if floor <= num_groups else [num_groups]
    return [
        Phase(**{**common, "epochs": every if i < len(depths) - 1 else None, "freeze_depth": d})
        for i, d in enumerate(depths)
    ]


def check_options(options: Mapping[str, Any]) -> None:
    """The checks of the ``schedule.`` options that need no backbone, for validation before anything is built."""
    names = {f.name for f in fields(Phase)} - {"epochs", "probe"}  # lp_ft probes in its first phase only
    Phase(**{k: v for k, v in options.items() if k in names})
    if options.get("probe", "sgd") not in PROBES:
        raise ConfigError(f"schedule.probe={options['probe']}: choose one of {', '.join(PROBES)}")
