"""TransferModule: backbone + head + loss + metrics, with optimizer groups per layer group; load_module()."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from transferlab.backbones import Backbone, Inputs, inputs_from_state
from transferlab.batches import Batch, FeatureBatch
from transferlab.errors import ConfigError
from transferlab.optim import LrSchedulerFactory, ParamGroup, param_groups


class TransferModule(pl.LightningModule):
    """Classifies a backbone's inputs (images, texts) with a pretrained backbone and a new head.

    The optimizer gets the groups of :meth:`param_groups` (per layer group and the head, scaled by ``lr_scales``:
    what the schedule's first phase says; :class:`~transferlab.phase_control.PhaseControl` applies the phases from
    there). ``metadata`` (backbone, head and data configs) is saved in every checkpoint under ``"transferlab"``,
    with ``inputs.state()`` (how inputs are prepared: the backbone's, with the run's data options) and the class
    names, so that eval and predict can rebuild the model and its preparation without the data module.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        class_names: list[str],
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        lr_scheduler: LrSchedulerFactory | None = None,
        lr_scales: Mapping[str, float] | None = None,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        filter_bias_and_bn: bool = True,
        inputs: Inputs | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.backbone = backbone.model
        self.inputs = inputs or backbone.inputs
        self.head = head
        self.layer_groups = backbone.layer_groups
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scales = dict(lr_scales or {name: 1.0 for name in [g.name for g in self.layer_groups] + ["head"]})
        self.label_smoothing = label_smoothing
        # Each example's loss weighed by its class (class_weights); not saved as weights: the metadata has them.
        weights = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.filter_bias_and_bn = bool(filter_bias_and_bn)
        self.metadata = {**(metadata or {}), "inputs": self.inputs.state(), "class_names": self.class_names}
        if class_weights is not None:
            self.metadata["class_weights"] = [float(w) for w in class_weights]

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
        self.eval_losses = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test", "target")})

    @property
    def binary(self) -> bool:
        return bool(getattr(self.head, "binary", False))

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.head(self.encode(inputs))

    def encode(self, inputs: Any) -> torch.Tensor:
        """The backbone's pooled features of a batch's inputs, prepared as the backbone takes them."""
        return self.backbone(self.inputs.prepare(inputs))

    def logits(self, batch: Batch | FeatureBatch) -> torch.Tensor:
        # A frozen backbone's cached features (served by FeatureServing) go straight to the head.
        return self.head(batch.features) if isinstance(batch, FeatureBatch) else self(batch.inputs)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, classes) probabilities, also for a binary head's single logit."""
        if self.binary:
            p = torch.sigmoid(logits.squeeze(1))
            return torch.stack([1 - p, p], dim=1)
        return logits.softmax(dim=1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            soft = target.float() * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            weight = None if self.class_weights is None else self.class_weights[target]
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), soft, weight=weight)
        return F.cross_entropy(logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing)

    def score(
        self, logits: torch.Tensor, target: torch.Tensor, metrics: MetricCollection, stage: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and probabilities of ``logits``, logged under ``stage/`` with ``metrics``."""
        loss = self.loss(logits, target)
        probs = self.probabilities(logits)
        metrics.update(probs, target)
        # add_dataloader_idx=False: a labelled target is a second val/test loader, logged as target/.
        if stage == "train":  # per rank, per step
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(target))
        else:
            # A metric's state is summed over DDP ranks: the mean over every example, not a mean of rank means.
            mean = self.eval_losses[stage]
            mean.update(loss.detach(), weight=len(target))
            self.log(f"{stage}/loss", mean, on_step=False, on_epoch=True, prog_bar=True, add_dataloader_idx=False)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "test", add_dataloader_idx=False)
        return loss, probs

    def training_step(self, batch, batch_idx):
        return self.score(self.logits(batch), batch.target, self.train_metrics, "train")[0]

    def validation_step(self, batch, batch_idx):
        self.score(self.logits(batch), batch.target, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        _, probs = self.score(self.logits(batch), batch.target, self.test_metrics, "test")
        self.confusion.update(probs.argmax(1), batch.target)

    def on_test_epoch_start(self) -> None:
        self.confusion.reset()

    def predict_step(self, batch, batch_idx):
        return self.probabilities(self(batch.inputs))

    def param_groups(self) -> list[ParamGroup]:
        """The optimizer's groups: each backbone layer group and the head, at their ``lr_scales``."""
        return param_groups(self.backbone, self.layer_groups, self.head, self.lr_scales, self.filter_bias_and_bn)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([group.as_dict() for group in self.param_groups()])
        for group in optimizer.param_groups:  # the optimizer's own lr (optimizer.lr) is the head's
            group["lr"] *= group["lr_scale"]
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["transferlab"] = self.metadata

    def metric_names(self, stages: Sequence[str] = ("train", "val")) -> list[str]:
        """What training and validation log, each epoch: the names ``monitor`` may take."""
        names = ("loss", *self.val_metrics.keys(keep_base=True))
        return [f"{stage}/{name}" for stage in stages for name in names]


def checkpoint_metadata(checkpoint: dict, ckpt_path: str, option: str = "ckpt_path") -> dict[str, Any]:
    """What a transferlab checkpoint says of its model (backbone, head and data configs, class names, inputs)."""
    meta = checkpoint.get("transferlab")
    if not isinstance(meta, dict) or not {"backbone", "head", "class_names"} <= set(meta):
        raise ConfigError(f"{option}={ckpt_path}: not a transferlab checkpoint (no 'transferlab' metadata)")
    return meta


def checkpoint_inputs(meta: dict[str, Any]) -> Inputs:
    """How the checkpoint's model prepares its inputs (the backbone's, with its run's data options)."""
    # Checkpoints from before the inputs interface saved an image data config alone.
    return inputs_from_state(meta.get("inputs") or {"kind": "image", "data_config": meta["data_config"]})


def read_checkpoint(ckpt_path: str, map_location: str = "cpu", mmap: bool = False, option: str = "ckpt_path") -> dict:
    """A checkpoint file as a dict, loaded with ``weights_only=True``; an unreadable one is a one-line ConfigError."""
    from transferlab.errors import ConfigError

    try:
        checkpoint = torch.load(ckpt_path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ConfigError(
            f"{option}={ckpt_path}: file not found; give a checkpoint from a run's checkpoints/"
        ) from None
    except Exception as e:  # truncated, not a torch file, or a pickle of code
        reason = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)[:160]
        raise ConfigError(
            f"{option}={ckpt_path}: not a readable checkpoint ({type(e).__name__}: {reason}); "
            "give a checkpoint from a run's checkpoints/"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{option}={ckpt_path}: holds a {type(checkpoint).__name__}, not a checkpoint")
    return checkpoint


def check_class_weights(value: Any) -> None:
    """``class_weights``: null, ``balanced``, or a list of positive numbers (one per class, checked with the data)."""
    if value is None or value == "balanced":
        return
    numbers = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    if not numbers or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < float("inf") for w in value
    ):
        raise ConfigError(f"class_weights={value}: use null, balanced, or a list of numbers > 0, one per class")


def class_weights_for(value: Any, labels: Any, class_names: Sequence[str]) -> list[float] | None:
    """The weights ``class_weights`` gives each class: ``balanced`` is scikit-learn's n / (classes x count)
    over the train labels (a class absent from train gets 1)."""
    import numpy as np

    if value is None:
        return None
    if value == "balanced":
        counts = np.bincount(np.asarray(labels), minlength=len(class_names))
        return [round(len(labels) / (len(class_names) * c), 6) if c else 1.0 for c in counts]
    if len(value) != len(class_names):
        raise ConfigError(
            f"class_weights={list(value)}: {len(value)} weights for {len(class_names)} classes "
            f"({', '.join(class_names)}); give one per class, in that order"
        )
    return [float(w) for w in value]


def load_module(ckpt_path: str, map_location: str = "cpu") -> TransferModule:
    """Rebuild a TransferModule from a transferlab checkpoint alone (no data module, no Hydra app).

    The backbone is built from the saved config without downloading or loading weights: the checkpoint has them.
    """
    from transferlab.cli import instantiate

    checkpoint = read_checkpoint(ckpt_path, map_location)
    meta = checkpoint_metadata(checkpoint, ckpt_path)
    backbone = instantiate({**meta["backbone"], "pretrained": False, "weights": None})
    head = instantiate(meta["head"])(in_features=backbone.num_features, num_classes=len(meta["class_names"]))
    module = TransferModule(
        backbone,
        head,
        class_names=meta["class_names"],
        inputs=checkpoint_inputs(meta),
        class_weights=meta.get("class_weights"),
        metadata=meta,
    )
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
