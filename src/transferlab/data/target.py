"""TargetData: a second domain beside a source data module, for domain adaptation and for scoring on it."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader

from transferlab.data import sources, texts
from transferlab.data.datamodule import DIGIT_SOURCES, ClassificationDataModule
from transferlab.data.options import check_digit_classes, check_target
from transferlab.errors import ConfigError


def split_options(options: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, Any] | None, str | None]:
    """The ``data.`` options (a dict or the config node, whose name errors keep) as (the source data module's,
    ``data.target`` when it names a target, else None, ``data.feature_cache``): the target wraps the source
    module, the cache is the feature server's."""
    from omegaconf import OmegaConf, open_dict

    options = copy.copy(options)
    with open_dict(options) if OmegaConf.is_config(options) else contextlib.nullcontext():
        target = options.pop("target", None) or {}
        feature_cache = options.pop("feature_cache", None)
    target = OmegaConf.to_container(target, resolve=True) if OmegaConf.is_config(target) else dict(target)
    named = target.get("root") is not None or target.get("source") in DIGIT_SOURCES
    return options, (target if named else None), feature_cache


class TargetData(pl.LightningDataModule):
    """``source``'s data plus a target domain: ``{"root": PATH}`` (class folders like the source's: labelled,
    the labels only score; or flat: unlabelled) or ``{"source": "digits_m"}``, split like the source
    (``target_train``, ``target_val``, ``target_test``; unlabelled examples are all ``target_train``, and
    ``target_val`` without augmentation, which the validators score).

    The target's val split (and a labelled target's test split) is served beside the source's (dataloader_idx 1).
    ``training_batches``: ``source`` (the source's batches alone), ``source+target`` (every training batch is
    ``{"source": batch, "target": batch}``, with as many target examples as source ones, drawn by a shuffle of
    their own: CycleShuffle) or ``target`` (``{"target": batch}``: source-free, an epoch is the target's length).
    Without source data (``data.source=none``; ``source_data`` False) the target's loaders are the only ones.
    """

    TRAINING_BATCHES = ("source", "source+target", "target")

    def __init__(self, source: ClassificationDataModule, target: dict[str, Any], training_batches: str = "source"):
        super().__init__()
        check_target(target)
        if training_batches not in self.TRAINING_BATCHES:
            raise ValueError(f"training_batches={training_batches}: choose one of {self.TRAINING_BATCHES}")
        self.source, self.target = source, dict(target)
        self.root = self.target.get("root")
        self.source_data = source.source != "none"
        if not self.source_data and training_batches != "target":
            raise ValueError("without source data (data.source=none) the training batches are the target's")
        self.training_batches = training_batches
        self.class_names, self.num_classes = source.class_names, source.num_classes
        self._raw, self.labelled = self._list()
        self._datasets: dict[str, sources.LabeledImages] = {}

    def _list(self) -> tuple[dict[str, sources.Split], bool]:
        """The target's images (not decoded) and whether they are labelled."""
        kind = self.target.get("source") or "folder"
        if kind in DIGIT_SOURCES:
            split, names = DIGIT_SOURCES[kind](check_digit_classes(self.source.classes), self.source.photos)
            raw, shown = {"all": split}, f"data.target.source={kind}"
        elif self.source.texts:
            source = self.source
            raw, names = texts.scan_target(self.root, source.text_column, source.label_column, source.bad_rows)
            shown = f"data.target.root={self.root}"
        else:
            raw, names = sources.scan_target(self.root)
            shown = f"data.target.root={self.root}"
        if names is not None and names != self.class_names:
            raise ConfigError(
                f"{shown}: its classes {names} differ from the source's {self.class_names}; give the target the "
                "source's class folders (or a flat folder of unlabelled images)"
            )
        return raw, names is not None

    def setup(self, stage: str | None = None) -> None:
        self.source.trainer = self.trainer  # the source's loaders pin memory where this Trainer runs on CUDA
        self.source.setup(stage)
        if self._datasets:
            return
        images = self.root is not None and not self.source.texts  # image files to screen
        raw = self.source.readable(self._raw, "data.target.root", self.root, images, "target_")
        # An unlabelled target's val is its own examples without augmentation: what the validators score.
        splits = self.source.make_splits(raw) if self.labelled else {"train": raw["all"], "val": raw["all"]}
        self._datasets = self.source.labelled({f"target_{name}": split for name, split in splits.items()})

    @property
    def datasets(self) -> dict[str, sources.LabeledImages]:
        self.setup()
        return self._datasets

    def statistics_batches(self) -> DataLoader:
        """The target's training examples without augmentation, in order: what AdaBN estimates BatchNorm
        statistics on (the whole set on every DDP rank, so every rank estimates the same)."""
        train = self.datasets["target_train"]
        return self.source.eval_loader(self.source.without_augmentation(train))

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        if self.training_batches == "target":  # the source's training images are never read
            return CombinedLoader({"target": self.source.loader("target_train", self.datasets["target_train"], True)})
        source = self.source.train_dataloader()
        if self.training_batches == "source":
            return source
        target = self.source.loader(
            "target_train", self.datasets["target_train"], shuffle=True, num_samples=len(source.dataset)
        )
        return CombinedLoader({"source": source, "target": target}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self.source_data:
            return self.source.loader("target_val", self.datasets["target_val"])
        return self._beside(self.source.val_dataloader(), "target_val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        if not self.source_data:
            return self.source.loader("target_test", self.datasets["target_test"])
        return self._beside(self.source.test_dataloader(), "target_test")

    def has_test(self) -> bool:
        """Whether there is a test split to score: the source's, or without source data a labelled target's."""
        return self.source.has_test() or (not self.source_data and "target_test" in self.datasets)

    def _beside(self, source: DataLoader, split: str) -> DataLoader | list[DataLoader]:
        if split not in self.datasets:
            return source
        return [source, self.source.loader(split, self.datasets[split])]

    def summary(self) -> dict[str, Any]:
        """What summary.json says of the target: where it is from, whether labelled, its splits."""
        where = {"root": self.root} if self.root is not None else {"source": self.target["source"]}
        sizes = self.source.split_sizes({k.removeprefix("target_"): v for k, v in self.datasets.items()})
        return {**where, "labelled": self.labelled, "split_sizes": sizes}
