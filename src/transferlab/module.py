"""TransferModule: backbone + head + loss + metrics, with an optimizer group per layer group."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from transferlab.backbones import Backbone
from transferlab.features import FeatureBatch
from transferlab.optim import LrSchedulerFactory, param_groups


class TransferModule(pl.LightningModule):
    """Classifies images with a pretrained backbone and a new head.

    The optimizer gets one parameter group per layer group and one for the head, each with its ``lr_scales``
    entry (what the schedule's first phase says; :class:`~transferlab.phase_control.PhaseControl` applies the
    phases from there). ``metadata`` (backbone and head configs, the data config the images were prepared
    with; the backbone's by default) is saved in every checkpoint under ``"transferlab"``, with the class
    names, so that eval and predict can rebuild the model and its transforms without the data module.

    ``adaptation`` (a :class:`~transferlab.adapt.DomainAdaptation`) adds its loss to training batches that come
    as ``{"source": ..., "target": ...}``; the features it adapts are what the head's classifier reads (the
    head's hidden layer, or the backbone's features under a linear head). With ``score_target`` the second
    val/test loader is a labelled target, logged as ``target/acc``, ``target/loss``, ``target/f1``.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        class_names: list[str],
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        lr_scheduler: LrSchedulerFactory | None = None,
        lr_scales: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        metadata: dict[str, Any] | None = None,
        adaptation: nn.Module | None = None,
        score_target: bool = False,
    ):
        super().__init__()
        self.backbone = backbone.model
        self.head = head
        self.layer_groups = backbone.layer_groups
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scales = list(lr_scales or [1.0] * (len(self.layer_groups) + 1))
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        if channels_last:  # NHWC: faster convolutions on tensor cores; images are converted in forward
            self.backbone.to(memory_format=torch.channels_last)
        self.metadata = {
            "data_config": backbone.data_config,
            **(metadata or {}),
            "class_names": self.class_names,
        }

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
        self.adaptation, self.score_target = adaptation, bool(score_target)
        if score_target:  # logged under target/ in validation and in testing alike
            self.target_val_metrics = collection.clone(prefix="target/")
            self.target_test_metrics = collection.clone(prefix="target/")

    @property
    def binary(self) -> bool:
        return bool(getattr(self.head, "binary", False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's features of a batch of images (NHWC first with channels_last)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

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

    def _step(self, batch, metrics: MetricCollection, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, target = batch
        # The frozen backbone's cached features (a FeatureBatch from the data module) go straight to the head.
        logits = self.head(inputs) if isinstance(batch, FeatureBatch) else self(inputs)
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
            add_dataloader_idx=False,  # a labelled target is a second val/test loader, logged as target/
        )  # val/test loss averaged over DDP ranks; train/loss stays per rank
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "test", add_dataloader_idx=False)
        return loss, probs

    def training_step(self, batch, batch_idx):
        if isinstance(batch, dict):  # source and target images: domain adaptation
            if self.adaptation is None:
                return self._step(batch["source"], self.train_metrics, "train")[0]
            return self._adaptation_step(batch["source"], batch["target"])
        return self._step(batch, self.train_metrics, "train")[0]

    def _adaptation_step(self, source, target) -> torch.Tensor:
        num_source = len(source[1])
        # Both domains pass the backbone in one batch, so BatchNorm normalises with statistics of both.
        features = torch.cat([source[0], target[0]])
        if not isinstance(source, FeatureBatch):
            features = self.features(features)  # not forward: the head's parts are needed apart
        adapted = self.head.hidden(features)
        logits = self.head.fc(adapted)
        loss = self.loss(logits[:num_source], source[1])
        self.train_metrics.update(self.probabilities(logits[:num_source]), source[1])
        progress = self.trainer.global_step / max(1, self.trainer.estimated_stepping_batches)
        two_column = torch.cat([-logits / 2, logits / 2], 1) if self.binary else logits
        extra, logs = self.adaptation(adapted, two_column, num_source, progress)
        log = dict(on_step=True, on_epoch=True, batch_size=num_source)
        self.log("train/loss", loss, prog_bar=True, **log)
        self.log("adapt/loss", extra, **log)
        self.log_dict(logs, **log)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss + extra

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        if dataloader_idx == 1:
            self._step(batch, self.target_val_metrics, "target")
        else:
            self._step(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        if dataloader_idx == 1:
            self._step(batch, self.target_test_metrics, "target")
            return
        _, probs = self._step(batch, self.test_metrics, "test")
        self.confusion.update(probs.argmax(1), batch[1])

    def on_test_epoch_start(self) -> None:
        self.confusion.reset()

    def predict_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.probabilities(self(images))

    def configure_optimizers(self):
        groups = param_groups(self.backbone, self.layer_groups, self.head, self.lr_scales)
        discriminator = getattr(self.adaptation, "discriminator", None)
        if discriminator is not None:  # its own group, after the head's, that no phase freezes or rescales
            scale = self.adaptation.discriminator_lr_mult
            groups.append({"params": list(discriminator.parameters()), "lr_scale": scale, "name": "discriminator"})
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:  # the optimizer's own lr (optimizer.lr) is the head's
            group["lr"] *= group["lr_scale"]
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["transferlab"] = self.metadata

    def metric_names(self) -> list[str]:
        """What training and validation log, each epoch: the names ``monitor`` may take."""
        stages = ("train", "val", "target") if self.score_target else ("train", "val")
        return [f"{stage}/{name}" for stage in stages for name in ("loss", *self.val_metrics.keys(keep_base=True))]


def read_checkpoint(ckpt_path: str, map_location: str = "cpu", mmap: bool = False) -> dict:
    """A checkpoint file as a dict, loaded with ``weights_only=True``; an unreadable one is a one-line ConfigError."""
    from transferlab.errors import ConfigError

    try:
        checkpoint = torch.load(ckpt_path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ConfigError(
            f"ckpt_path={ckpt_path}: file not found; give a checkpoint from a run's checkpoints/"
        ) from None
    except Exception as e:  # truncated, not a torch file, or a pickle of code
        reason = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)[:160]
        raise ConfigError(
            f"ckpt_path={ckpt_path}: not a readable checkpoint ({type(e).__name__}: {reason}); "
            "give a checkpoint from a run's checkpoints/"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"ckpt_path={ckpt_path}: holds a {type(checkpoint).__name__}, not a checkpoint")
    return checkpoint


def load_module(ckpt_path: str, map_location: str = "cpu") -> TransferModule:
    """Rebuild a TransferModule from a transferlab checkpoint alone (no data module, no Hydra app).

    The backbone is built from the saved config without downloading or loading weights: the checkpoint has them.
    """
    from transferlab.cli import instantiate
    from transferlab.errors import ConfigError

    checkpoint = read_checkpoint(ckpt_path, map_location)
    meta = checkpoint.get("transferlab")
    if not isinstance(meta, dict) or not {"backbone", "head", "class_names"} <= set(meta):
        raise ConfigError(f"ckpt_path={ckpt_path}: not a transferlab checkpoint (no 'transferlab' metadata)")
    backbone = instantiate({**meta["backbone"], "pretrained": False, "weights": None})
    head = instantiate(meta["head"])(in_features=backbone.num_features, num_classes=len(meta["class_names"]))
    module = TransferModule(backbone, head, class_names=meta["class_names"], metadata=meta)
    # A domain discriminator trains beside the model; inference needs none.
    state = {k: v for k, v in (checkpoint.get("state_dict") or {}).items() if not k.startswith("adaptation.")}
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))[:160]
        raise ConfigError(
            f"ckpt_path={ckpt_path}: its weights do not fit the model its metadata describes ({first}); "
            "the file was changed or damaged"
        ) from None
    return module.eval()
