"""TransferModule: backbone + head + loss + metrics, with per-layer-group learning rates and frozen parts."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from transferlab.backbones import Backbone
from transferlab.optim import LrSchedulerFactory, param_groups
from transferlab.schedules import Schedule


class TransferModule(pl.LightningModule):
    """Classifies images with a (partly) frozen pretrained backbone and a new head.

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
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.backbone = backbone.model
        self.head = head
        self.layer_groups = backbone.layer_groups
        self.class_names = list(class_names)
        self.schedule = schedule or Schedule()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.label_smoothing = label_smoothing
        self.metadata = {
            "data_config": backbone.data_config,
            **(metadata or {}),
            "class_names": self.class_names,
        }
        self.frozen_batchnorms = self.schedule.apply(self.backbone, self.layer_groups)

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

    def train(self, mode: bool = True):
        # Whoever calls .train() (users, strategies, older Lightning), frozen BatchNorm keeps its statistics.
        super().train(mode)
        self._freeze_batchnorm_statistics()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning 2.x does not call .train(): it restores each module's own mode after validation, so eval
        # mode set here lasts the epoch.
        self._freeze_batchnorm_statistics()

    def _freeze_batchnorm_statistics(self) -> None:
        for bn in self.frozen_batchnorms:
            bn.eval()

    def _step(self, batch, metrics: MetricCollection, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, target = batch
        logits = self(images)
        loss = self.loss(logits, target)
        probs = self.probabilities(logits)
        metrics.update(probs, target)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(target))
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
        groups = param_groups(self.backbone, self.layer_groups, self.head, self.schedule.backbone_lr_mult)
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:  # the optimizer's own lr (optimizer.lr) is the head's
            group["lr"] *= group["lr_scale"]
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        rank_zero_info(self.parameter_table())

    def parameter_table(self) -> str:
        params = dict(self.backbone.named_parameters())
        rows = [(g.name, [params[n] for n in g.param_names]) for g in self.layer_groups]
        rows.append(("head", list(self.head.parameters())))
        width = max(len(name) for name, _ in rows)
        lines = [f"{'layer group':<{width}}  {'trainable':>12}  {'total':>12}"]
        for name, ps in rows:
            trainable = sum(p.numel() for p in ps if p.requires_grad)
            lines.append(f"{name:<{width}}  {trainable:>12,}  {sum(p.numel() for p in ps):>12,}")
        return "\n".join(lines)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["transferlab"] = self.metadata
        # RNG states make a run resumed from this checkpoint draw what the uninterrupted run draws.
        # Tensors, tuples and ints only: checkpoints must load with torch.load(weights_only=True).
        np_state = np.random.get_state()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": (torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
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
