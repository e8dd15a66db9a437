"""FeatureServing: a frozen backbone's cached features in place of its inputs, in the epochs where that is exact.

One component owns the decisions: in which epochs features stand in for inputs (the schedule's
``backbone_frozen``, on one device), where and how they are computed (the Trainer's device and precision), and
when loaders reload (where an epoch switches between features and inputs). The data module asks it for a
split's dataset; the exact probe asks it for the train split's features.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from transferlab import features

if TYPE_CHECKING:
    from transferlab.backbones import Backbone


class FeatureServing(pl.Callback):
    """Serves ``backbone``'s features from the cache in ``folder`` (None: never served; the probe's are then
    computed into memory) in epochs where ``backbone_frozen(epoch)`` holds. ``served`` lists each served split:
    hit or computed, how long, which file (summary.json's ``feature_cache``)."""

    def __init__(self, backbone: Backbone, folder: str | Path | None, backbone_frozen: Callable[[int], bool]):
        self.backbone, self.backbone_frozen = backbone, backbone_frozen
        self.folder = None if folder is None else Path(folder).expanduser()
        self.served: list[dict[str, Any]] = []
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer  # the device, precision and epoch that features are computed and served for

    def active(self) -> bool:
        """Whether features stand in for inputs now: a cache folder, this epoch's phase freezes the whole
        backbone, and one device (DDP's gradient sync expects the backbone in every step's graph)."""
        trainer = self._trainer
        if self.folder is None or trainer is None or isinstance(trainer.strategy, ParallelStrategy):
            return False
        return self.backbone_frozen(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Loaders reload where the next epoch switches between cached features and inputs, and only there (every
        # reload makes Lightning create one more iterator).
        epoch = trainer.current_epoch
        switches = self.folder is not None and self.backbone_frozen(epoch + 1) != self.backbone_frozen(epoch)
        trainer.reload_dataloaders_every_n_epochs = int(switches)

    def dataset(self, split: str, dataset: Dataset, loader: DataLoader) -> features.FeatureDataset:
        """``dataset``'s features as a dataset of FeatureBatches (``loader`` iterates ``dataset`` in order)."""
        return features.FeatureDataset(self.features(split, dataset, loader, log=True), dataset.labels)

    def features(self, split: str, dataset: Dataset, loader: DataLoader, log: bool = False) -> np.ndarray:
        """The backbone's features of ``dataset`` through the cache (the fp16 entry, memory-mapped; in memory
        without a cache folder); ``log``: listed in ``served``."""
        trainer = self._trainer
        assert trainer is not None, "FeatureServing serves once the Trainer has set it up"
        start = time.perf_counter()
        values, hit, path = features.split_features(
            self.folder,
            split,
            dataset,
            self.backbone,
            loader,
            trainer.strategy.root_device,
            trainer.precision_plugin.forward_context,
            str(trainer.precision),
        )
        seconds = round(time.perf_counter() - start, 3)
        if path is not None and log:
            self.served.append(
                {"epoch": trainer.current_epoch, "split": split, "hit": hit, "seconds": seconds, "file": str(path)}
            )
        what = "reused" if hit else f"computed in {seconds:.1f}s"
        rank_zero_info(
            f"{split} features of the frozen backbone {what}: {len(values)} x {values.shape[1]}, {path or 'not cached'}"
        )
        return values
