"""PhaseControl: the Lightning callback that applies a schedule's phases to the backbone, epoch by epoch.

It owns what Lightning's ``BaseFinetuning`` owns for freezing, for every phase of a :class:`Schedule`: which layer
groups train (``requires_grad``, or gradient masking under DDP and torch.compile), each group's lr scale in the
optimizer and the lr scheduler, BatchNorm modes, and the phase history, saved in checkpoints so that a resumed
run restores its phase (Lightning 21901).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from transferlab.errors import ConfigError
from transferlab.layer_groups import LayerGroup
from transferlab.schedules import Phase, Schedule


class PhaseControl(pl.Callback):
    """Applies ``schedule`` to ``backbone`` (whose parameters ``layer_groups`` cover), starting with its first phase."""

    def __init__(self, schedule: Schedule, backbone: nn.Module, layer_groups: Sequence[LayerGroup]):
        schedule.check(layer_groups)
        self.has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
        modes = {phase.bn_mode for phase in schedule.phases} - {"train"}
        if modes and not self.has_batchnorm:  # a transformer's LayerNorm has no running statistics to fix
            raise ConfigError(f"schedule.bn_mode={sorted(modes)[0]}: the backbone has no BatchNorm; remove it")
        self.schedule, self.backbone, self.layer_groups = schedule, backbone, list(layer_groups)
        self.phase_index = 0
        self.history: list[dict[str, Any]] = []
        self.resumed_epoch = 0
        # DDP and torch.compile keep every parameter's requires_grad (wrappers built earlier never see a flip)
        # and drop frozen gradients after backward instead.
        self.mask_frozen_grads = False
        self._apply()

    @property
    def phase(self) -> Phase:
        return self.schedule.phases[self.phase_index]

    def lr_scales(self) -> dict[str, float]:
        """The current phase's lr scale of each backbone layer group and of the head, by name."""
        names = [g.name for g in self.layer_groups] + ["head"]
        return dict(zip(names, self.phase.lr_scales(len(self.layer_groups))))

    def backbone_frozen(self, epoch: int) -> bool:
        """Whether the phase of ``epoch`` freezes every layer group, BatchNorm statistics included: then the
        backbone's features do not change and the data module may serve them from its feature cache."""
        # A resumed run builds its first loaders before Lightning restores the epoch counter; epochs before
        # the one it resumes at are not trained by this process.
        phase = self.schedule.phases[self.schedule.phase_index(max(epoch, self.resumed_epoch))]
        # affine_only trains BatchNorm affine parameters in frozen groups too.
        return all(phase.frozen_groups(self.layer_groups)) and phase.bn_mode != "affine_only"

    def probe_at(self, epoch: int) -> bool:
        """Whether the phase of ``epoch`` fits the head with the exact probe."""
        return self.schedule.phases[self.schedule.phase_index(epoch)].probe == "exact"

    def phase_start(self, epoch: int) -> int:
        """The first epoch of the phase of ``epoch``."""
        return self.schedule.start_epoch(self.schedule.phase_index(epoch))

    def _apply(self) -> None:
        self.state = apply_phase(self.backbone, self.layer_groups, self.phase, mask_only=self.mask_frozen_grads)
        params = dict(self.backbone.named_parameters())
        self._frozen_params = [params[n] for n in sorted(self.state.frozen_params)]
        self._freeze_batchnorm_statistics()

    def _freeze_batchnorm_statistics(self) -> None:
        for bn in self.state.eval_batchnorms:
            bn.eval()

    # --- Lightning hooks ------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        compiled = getattr(pl_module, "_compiled_call_impl", None) is not None  # nn.Module.compile()
        if isinstance(trainer.strategy, ParallelStrategy) or compiled:
            self.mask_frozen_grads = True
            self._apply()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        index = self.schedule.phase_index(trainer.current_epoch)
        if index != self.phase_index or not self.history:
            self._enter_phase(index, trainer, pl_module)
        self._freeze_batchnorm_statistics()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Whoever called .train() since (users, strategies, older Lightning), frozen BatchNorm keeps its statistics.
        self._freeze_batchnorm_statistics()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mask_frozen_grads:
            for param in self._frozen_params:
                param.grad = None

    def _enter_phase(self, index: int, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Epoch starts are optimizer-step boundaries (Lightning steps at an epoch's last batch), so no gradient
        accumulated under one phase is applied under the next."""
        changed = index != self.phase_index
        self.phase_index = index
        self._apply()
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        if changed and optimizer is not None:
            schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
            set_lr_scales(optimizer, schedulers, self.lr_scales())
        table = self.parameter_table(optimizer) if optimizer else ""
        entry = {
            "phase": index,
            "start_epoch": trainer.current_epoch,
            "freeze_depth": self.phase.frozen_count(self.layer_groups),
            "bn_mode": self.phase.bn_mode,
            "lr": group_lrs(optimizer) if optimizer else {},
            "trainable_params": sum(p.numel() for p in pl_module.parameters()) - self._frozen_count(),
        }
        self.history.append(entry)
        rank_zero_info(
            f"phase {index + 1}/{len(self.schedule.phases)} from epoch {trainer.current_epoch}: "
            f"{entry['freeze_depth']} of {len(self.layer_groups)} layer groups frozen"
            + (f", BatchNorm {entry['bn_mode']}" if self.has_batchnorm else "")
            + "\n"
            + table
        )

    def _frozen_count(self) -> int:
        return sum(p.numel() for p in self._frozen_params)

    def parameter_table(self, optimizer) -> str:
        """Trainable and total parameters of each of ``optimizer``'s layer groups (the backbone's, the head's, a
        domain discriminator's), by name."""
        frozen = {id(p) for p in self._frozen_params}
        rows: dict[str, list] = {}
        for group in optimizer.param_groups:
            rows.setdefault(layer_group(group), []).extend(group["params"])
        width = max(len(name) for name in rows)
        lines = [f"{'layer group':<{width}}  {'trainable':>12}  {'total':>12}"]
        for name, ps in rows.items():
            trainable = sum(p.numel() for p in ps if id(p) not in frozen)
            lines.append(f"{name:<{width}}  {trainable:>12,}  {sum(p.numel() for p in ps):>12,}")
        return "\n".join(lines)

    # --- checkpoints ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.phase_index, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.phase_index, self.history = state_dict["index"], list(state_dict["history"])
        self._apply()  # the optimizer state restored next already holds this phase's lr scales

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Epochs whose batches all ran: the epoch a resumed run trains next (a mid-epoch save repeats its epoch).
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
        self.resumed_epoch = progress.get("current", {}).get("processed", 0)


def set_lr_scales(optimizer, schedulers: Sequence, scales: Mapping[str, float]) -> None:
    """Rescale each group whose ``layer_group`` ``scales`` names, where the optimizer and the schedulers keep its lr,
    so the schedule's factor holds; groups it does not name (a domain discriminator) keep theirs."""
    for i, group in enumerate(optimizer.param_groups):
        if group.get("layer_group") not in scales:
            continue
        scale = scales[group["layer_group"]]
        ratio = scale / group["lr_scale"]
        group["lr_scale"] = scale
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
        for scheduler in schedulers:
            scheduler.base_lrs[i] *= ratio


def group_lrs(optimizer) -> dict[str, float]:
    """The lr of each layer group (and of the head, a discriminator), by name: a group that decays and its
    ``.no_decay`` part share one."""
    return {layer_group(g): g["lr"] for g in optimizer.param_groups}


def layer_group(group: dict) -> str:
    """The layer group an optimizer group belongs to (its name, for groups made elsewhere)."""
    return group.get("layer_group", group.get("name", "group"))


@dataclass
class PhaseState:
    frozen_params: set[str]
    eval_batchnorms: list[nn.Module]


def apply_phase(model: nn.Module, groups: Sequence[LayerGroup], phase: Phase, mask_only: bool = False) -> PhaseState:
    """Set ``requires_grad`` for ``phase`` and return what stays fixed: frozen parameter names, BatchNorm in eval.

    With ``mask_only`` (DDP, torch.compile) every parameter keeps ``requires_grad=True`` so that wrappers built
    earlier see each one; the caller drops frozen gradients after backward instead.
    """
    frozen_flags = phase.frozen_groups(groups)
    frozen = {n for g, f in zip(groups, frozen_flags) if f for n in g.param_names}
    eval_bn, bn_frozen_affine, bn_trainable_affine = [], set(), set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        params = [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]
        in_frozen_group = all(p in frozen for p in params) if params else all(frozen_flags)
        if in_frozen_group or phase.bn_mode != "train":
            eval_bn.append(module)
        if phase.bn_mode == "frozen":
            bn_frozen_affine.update(params)
        elif phase.bn_mode == "affine_only":
            bn_trainable_affine.update(params)
    frozen = (frozen | bn_frozen_affine) - bn_trainable_affine
    for name, param in model.named_parameters():
        param.requires_grad_(mask_only or name not in frozen)
    return PhaseState(frozen_params=frozen, eval_batchnorms=eval_bn)
