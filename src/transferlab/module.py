"""TransferModule: backbone + head + loss + metrics, with per-layer-group learning rates and frozen parts."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from transferlab.backbones import Backbone
from transferlab.optim import LrSchedulerFactory, param_groups
from transferlab.schedules import Schedule, apply_phase


class TransferModule(pl.LightningModule):
    """Classifies images with a (partly) frozen pretrained backbone and a new head, phase by phase.

    At the start of each epoch the schedule's phase for that epoch is applied: which layer groups train, their lr
    scales (in the optimizer and the lr scheduler alike) and BatchNorm modes. Under DDP or torch.compile frozen
    parameters keep ``requires_grad`` (wrappers built earlier never see a flip) and their gradients are dropped.

    ``metadata`` (backbone and head configs, the data config the images were prepared with; the backbone's by
    default) is saved in every checkpoint under ``"transferlab"``, with the class names, so that eval and predict
    can rebuild the model and its transforms without the data module.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        class_names: list[str],
        schedule: Schedule | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        lr_scheduler: LrSchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.backbone = backbone.model
        self.num_features = backbone.num_features
        self.head = head
        self.layer_groups = backbone.layer_groups
        self.class_names = list(class_names)
        self.schedule = schedule or Schedule()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        if channels_last:  # NHWC: faster convolutions on tensor cores; images are converted in forward
            self.backbone.to(memory_format=torch.channels_last)
        self.metadata = {
            "data_config": backbone.data_config,
            **(metadata or {}),
            "class_names": self.class_names,
        }
        self.schedule.check(self.layer_groups)
        self.phase_index = 0
        self.phase_history: list[dict[str, Any]] = []
        self._resumed_epoch = 0
        self.mask_frozen_grads = False
        self._apply_phase()

        num_classes = len(self.class_names)
        metrics = {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
        if num_classes > 5:
            metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        collection = MetricCollection(metrics)
        self.train_metrics = collection.clone(prefix="train/")
        self.val_metrics = collection.clone(prefix="val/")
        self.test_metrics = collection.clone(prefix="test/")
        self.confusion = MulticlassConfusionMatrix(num_classes)

    @property
    def binary(self) -> bool:
        return bool(getattr(self.head, "binary", False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(images))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, classes) probabilities, also for a binary head's single logit."""
        if self.binary:
            p = torch.sigmoid(logits.squeeze(1))
            return torch.stack([1 - p, p], dim=1)
        return logits.softmax(dim=1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            soft = target.float() * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), soft)
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def backbone_frozen(self, epoch: int | None = None) -> bool:
        """Whether the phase of ``epoch`` (default: the epoch about to train) freezes every layer group, BatchNorm
        statistics included: then the backbone's features do not change and the data module may serve them from
        its feature cache."""
        if epoch is None:
            # A resumed run builds its first loaders before Lightning restores the epoch counter.
            epoch = max(self.current_epoch, self._resumed_epoch)
        phase = self.schedule.phases[self.schedule.phase_index(epoch)]
        # affine_only trains BatchNorm affine parameters in frozen groups too.
        return all(phase.frozen_groups(self.layer_groups)) and phase.bn_mode != "affine_only"

    @property
    def phase(self):
        return self.schedule.phases[self.phase_index]

    def _apply_phase(self) -> None:
        self.phase_state = apply_phase(self.backbone, self.layer_groups, self.phase, mask_only=self.mask_frozen_grads)
        params = dict(self.backbone.named_parameters())
        self._frozen_params = [params[n] for n in sorted(self.phase_state.frozen_params)]
        self._freeze_batchnorm_statistics()

    def train(self, mode: bool = True):
        # Whoever calls .train() (users, strategies, older Lightning), frozen BatchNorm keeps its statistics.
        super().train(mode)
        self._freeze_batchnorm_statistics()
        return self

    def _freeze_batchnorm_statistics(self) -> None:
        for bn in self.phase_state.eval_batchnorms:
            bn.eval()

    def setup(self, stage: str) -> None:
        compiled = getattr(self, "_compiled_call_impl", None) is not None  # nn.Module.compile()
        if isinstance(self.trainer.strategy, ParallelStrategy) or compiled:
            self.mask_frozen_grads = True
            self._apply_phase()

    def on_train_epoch_start(self) -> None:
        index = self.schedule.phase_index(self.current_epoch)
        if index != self.phase_index or not self.phase_history:
            self._enter_phase(index)
        # Lightning 2.x does not call .train(): it restores each module's own mode after validation, so eval
        # mode set here lasts the epoch.
        self._freeze_batchnorm_statistics()

    def on_train_epoch_end(self) -> None:
        # A data module may serve cached features while the backbone is frozen: reload its loaders where the next
        # epoch switches between features and images, and only there (elsewhere it would hand back the loaders
        # already in use).
        switch = self.backbone_frozen(self.current_epoch + 1) != self.backbone_frozen(self.current_epoch)
        self.trainer.reload_dataloaders_every_n_epochs = int(switch)

    def _enter_phase(self, index: int) -> None:
        """Epoch starts are optimizer-step boundaries (Lightning steps at an epoch's last batch), so no gradient
        accumulated under one phase is applied under the next."""
        changed = index != self.phase_index
        self.phase_index = index
        self._apply_phase()
        if changed:
            self._set_lr_scales(self.phase.lr_scales(len(self.layer_groups)))
        optimizer = self._optimizer()
        entry = {
            "phase": index,
            "start_epoch": self.current_epoch,
            "freeze_depth": self.phase.frozen_count(self.layer_groups),
            "bn_mode": self.phase.bn_mode,
            "lr": {g["name"]: g["lr"] for g in optimizer.param_groups} if optimizer else {},
            "trainable_params": self._trainable_count(),
        }
        self.phase_history.append(entry)
        rank_zero_info(
            f"phase {index + 1}/{len(self.schedule.phases)} from epoch {self.current_epoch}: "
            f"{entry['freeze_depth']} of {len(self.layer_groups)} layer groups frozen, BatchNorm {entry['bn_mode']}\n"
            + self.parameter_table()
        )

    def _optimizer(self) -> torch.optim.Optimizer | None:
        trainer = self._trainer
        return trainer.optimizers[0] if trainer is not None and trainer.optimizers else None

    def _set_lr_scales(self, scales: list[float]) -> None:
        """Rescale each group's lr where the optimizer and the scheduler keep it, so the schedule's factor holds."""
        optimizer = self._optimizer()
        if optimizer is None:
            return
        schedulers = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        for i, (group, scale) in enumerate(zip(optimizer.param_groups, scales)):
            ratio = scale / group["lr_scale"]
            group["lr_scale"] = scale
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
            for scheduler in schedulers:
                scheduler.base_lrs[i] *= ratio

    def on_after_backward(self) -> None:
        if self.mask_frozen_grads:
            for param in self._frozen_params:
                param.grad = None

    def _step(self, batch, metrics: MetricCollection, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, target = batch
        # Cached features come as (batch, features) and go straight to the head; images are 4-D.
        logits = self.head(images) if images.ndim == 2 else self(images)
        loss = self.loss(logits, target)
        probs = self.probabilities(logits)
        metrics.update(probs, target)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(target),
            sync_dist=not on_step,
        )  # val/test loss averaged over DDP ranks; train/loss stays per rank
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "test")
        return loss, probs

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_metrics, "train")[0]

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        _, probs = self._step(batch, self.test_metrics, "test")
        self.confusion.update(probs.argmax(1), batch[1])

    def on_test_epoch_start(self) -> None:
        self.confusion.reset()

    def predict_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.probabilities(self(images))

    def configure_optimizers(self):
        groups = param_groups(self.backbone, self.layer_groups, self.head, self.phase.lr_scales(len(self.layer_groups)))
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:  # the optimizer's own lr (optimizer.lr) is the head's
            group["lr"] *= group["lr_scale"]
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def parameter_table(self) -> str:
        params = dict(self.backbone.named_parameters())
        frozen = self.phase_state.frozen_params
        rows = [(g.name, [(params[n], n in frozen) for n in g.param_names]) for g in self.layer_groups]
        rows.append(("head", [(p, False) for p in self.head.parameters()]))
        width = max(len(name) for name, _ in rows)
        lines = [f"{'layer group':<{width}}  {'trainable':>12}  {'total':>12}"]
        for name, ps in rows:
            trainable = sum(p.numel() for p, is_frozen in ps if not is_frozen)
            lines.append(f"{name:<{width}}  {trainable:>12,}  {sum(p.numel() for p, _ in ps):>12,}")
        return "\n".join(lines)

    def _trainable_count(self) -> int:
        frozen = self.phase_state.frozen_params
        return sum(p.numel() for n, p in self.named_parameters() if n.removeprefix("backbone.") not in frozen)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["transferlab"] = self.metadata
        # The phase belongs in the checkpoint: a resumed run must not silently re-freeze (Lightning 21901).
        checkpoint["phase"] = {"index": self.phase_index, "history": self.phase_history}
        # RNG states make a run resumed from this checkpoint draw what the uninterrupted run draws.
        # Tensors, tuples and ints only: checkpoints must load with torch.load(weights_only=True).
        np_state = np.random.get_state()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": (torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        phase = checkpoint.get("phase")
        if phase:
            self.phase_index, self.phase_history = phase["index"], list(phase["history"])
            self._apply_phase()  # the optimizer state restored next already holds this phase's lr scales
        # Epochs whose batches all ran: the epoch a resumed run trains next (a mid-epoch save repeats its epoch).
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
        self._resumed_epoch = progress.get("current", {}).get("processed", 0)
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            key, *rest = rng["numpy"]
            np.random.set_state(("MT19937", key.numpy().astype(np.uint32), *rest))
            random.setstate(rng["python"])


def load_module(ckpt_path: str, map_location: str = "cpu") -> TransferModule:
    """Rebuild a TransferModule from a transferlab checkpoint alone (no data module, no Hydra app).

    The backbone is built from the saved config without downloading or loading weights: the checkpoint has them.
    """
    from transferlab.cli import instantiate
    from transferlab.errors import ConfigError

    try:
        checkpoint = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise ConfigError(f"ckpt_path={ckpt_path}: file not found; give a checkpoint from a run's checkpoints/") from e
    meta = checkpoint.get("transferlab") if isinstance(checkpoint, dict) else None
    if meta is None:
        raise ConfigError(f"ckpt_path={ckpt_path}: not a transferlab checkpoint (no 'transferlab' metadata)")
    backbone = instantiate({**meta["backbone"], "pretrained": False, "weights": None})
    head = instantiate(meta["head"])(in_features=backbone.num_features, num_classes=len(meta["class_names"]))
    module = TransferModule(backbone, head, class_names=meta["class_names"], metadata=meta)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()
