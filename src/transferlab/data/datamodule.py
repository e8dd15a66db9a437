"""The LightningDataModule for image classification: a source, split, subsampled and prepared for the backbone."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from transferlab.data import digits, images, sources, texts
from transferlab.data.options import check_digit_classes, check_options
from transferlab.data.sampling import CycleShuffle, EpochShuffle, LengthGroupedShuffle
from transferlab.errors import ConfigError
from transferlab.features import FeatureDataset

DIGIT_SOURCES = {  # built in: (classes, photos) -> (split, class names)
    "digits": lambda classes, photos: digits.load_digits(classes),
    "digits_m": digits.load_digits_m,
}

if TYPE_CHECKING:
    from transferlab.backbones import Inputs
    from transferlab.feature_serving import FeatureServing


class ClassificationDataModule(pl.LightningDataModule):
    """Train/val(/test) image classification data, configured by the ``data.`` options.

    ``class_names``, ``num_classes`` and ``inputs`` (the backbone's preparation with ``data.input_size``,
    ``data.mean`` and ``data.std`` applied) are ready after ``__init__`` (folders are listed, no image is decoded);
    ``setup`` checks the files, makes the splits and builds the datasets.

    With ``features`` (a :class:`~transferlab.feature_serving.FeatureServing`), the train (without augmentation)
    and val splits are served as its cached features in the epochs where it is active.

    ``source="none"``: no source data (a source-free run, whose target :class:`~transferlab.data.target.TargetData`
    serves every split); ``class_names`` and ``inputs`` are then the source checkpoint's.
    """

    def __init__(
        self,
        source: str = "digits",
        root: str | None = None,
        classes: list[int] | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        samples_per_class: int | None = None,
        train_fraction: float | None = None,
        augment: str = "none",
        input_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        inputs: Inputs | None = None,
        bad_files: str = "skip",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        cache_images: bool = False,
        output_dir: str | None = None,
        photos: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        bad_rows: str = "skip",
        group_column: str | None = None,
        features: FeatureServing | None = None,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        check_options({k: v for k, v in locals().items() if not k.startswith("_") and k not in ("self", "class_names")})
        self.source, self.root, self.augment, self.bad_files = source, root, augment, bad_files
        self.classes, self.photos = classes, photos
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_seed = int(split_seed)
        self.samples_per_class = None if samples_per_class is None else int(samples_per_class)
        self.train_fraction = None if train_fraction is None else float(train_fraction)
        self.batch_size = int(batch_size)
        self.eval_batch_size = self.batch_size if eval_batch_size is None else int(eval_batch_size)
        self.num_workers, self.pin_memory = int(num_workers), pin_memory
        self.cache_images = bool(cache_images)
        self._loaders: dict[str, DataLoader] = {}
        self.output_dir = None if output_dir is None else Path(output_dir).expanduser()
        self.features = features
        from transferlab.image_inputs import ImageInputs  # the default: image inputs import data.transforms

        overrides = {k: v for k, v in {"input_size": input_size, "mean": mean, "std": std}.items() if v is not None}
        self.inputs = inputs or ImageInputs()
        if overrides:  # image options (check_options refuses them for texts)
            self.inputs = self.inputs.override(**overrides)
        self.texts = self.inputs.kind == "text"
        if source != "none" and self.texts != (source == "text"):
            fix = "a text backbone (backbone=hf)" if source == "text" else "data=text"
            raise ConfigError(f"data.source={source}: the backbone takes {self.inputs.kind}s; use {fix}")

        # Listing is cheap and catches layout mistakes before any model is built.
        self.text_column, self.label_column, self.bad_rows = text_column, label_column, bad_rows
        if source == "none":
            if class_names is None:
                # A source-free run gives them (its checkpoint's): only a module rebuilt from its saved data
                # config (eval, export) gets here.
                raise ConfigError(
                    "data.source=none: no source data, so nothing to split or score (a source-free run's data); "
                    "name labelled data: +data.source=folder data.root=PATH"
                )
            self._raw, self.class_names = {}, list(class_names)
        elif source == "text":
            self._raw, self.class_names = texts.scan_texts(
                root, text_column, label_column, bad_rows, self.output_dir, group_column=group_column
            )
        else:
            self._raw, self.class_names = _list_source(source, root, classes, photos)
        self.num_classes = len(self.class_names)
        self._datasets: dict[str, sources.LabeledImages] = {}

    # --- Lightning hooks ------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Check the files, split and subsample, build the datasets; later calls do nothing."""
        if self._datasets or not self._raw:  # built, or no source data (data.source=none)
            return
        splits = self.make_splits(self.readable(self._raw, "data.root", self.root, self.source == "folder"))
        splits["train"] = sources.few_shot(
            splits["train"], self.class_names, self.split_seed, self.samples_per_class, self.train_fraction
        )
        self._datasets = self.labelled(splits)

    def labelled(self, splits: dict[str, sources.Split]) -> dict[str, sources.LabeledImages]:
        """Datasets of ``splits``: those named ``*train`` with the train transform, the others with the eval one."""
        train_tf = self.inputs.transform(self.augment, train=True)
        eval_tf = self.inputs.transform(self.augment, train=False)
        return {
            name: self._dataset(split, train_tf if name.endswith("train") else eval_tf)
            for name, split in splits.items()
        }

    def _dataset(self, split: sources.Split, transform) -> Dataset:
        return (texts.LabeledTexts if self.texts else sources.LabeledImages)(split, transform)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", self.datasets["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", self.datasets["val"])

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            fix = "set data.test_fraction, e.g. data.test_fraction=0.2"
            if self.source == "folder" and "all" not in self._raw:
                fix = f"add a test/ folder beside train/ and val/ in data.root={self.root}, or {fix}"
            raise ConfigError(f"no test split: {fix}")
        return self.loader("test", self.datasets["test"])

    def predict_dataloader(self) -> DataLoader:
        split = "test" if "test" in self.datasets else "val"
        return self.loader(split, self.datasets[split])

    # --- helpers --------------------------------------------------------------------------------------

    @property
    def datasets(self) -> dict[str, sources.LabeledImages]:
        """The built datasets by split name (``train``, ``val``, maybe ``test``); sets up on first use."""
        self.setup()
        return self._datasets

    def split_sizes(self, datasets: dict[str, Dataset] | None = None) -> dict[str, int]:
        """Examples per split (of ``datasets``, default this module's) after bad-file removal and few-shot
        subsampling; ``test`` is 0 when absent."""
        datasets = self.datasets if datasets is None else datasets
        return {name: len(datasets.get(name, ())) for name in sources.SPLITS}

    def has_test(self) -> bool:
        return bool(self.split_sizes().get("test"))

    def loader(self, split: str, dataset: Dataset, shuffle: bool = False, num_samples: int | None = None) -> DataLoader:
        """A loader of ``dataset`` (the split named ``split``), or of its cached features where they apply. A
        train or val loader is kept while its kind stays, so per-epoch reloads (schedules whose phases switch
        between the two) keep persistent workers. ``num_samples``: drawn each epoch by CycleShuffle."""
        use_features = self._features_apply(split)
        kept = self._loaders.get(split)
        if kept is not None and isinstance(kept.dataset, FeatureDataset) == use_features:
            return kept
        if use_features:
            dataset = self.features.dataset(split, dataset, self.eval_loader(dataset))
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        workers = 0 if use_features else self.num_workers  # reading a memory map needs no worker processes
        sampler = None
        if shuffle and num_samples is None and hasattr(dataset, "lengths"):  # texts, padded to a batch's longest
            sampler = LengthGroupedShuffle(dataset, dataset.lengths(), batch_size)
        elif shuffle:
            sampler = EpochShuffle(dataset) if num_samples is None else CycleShuffle(dataset, num_samples)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning's DistributedSampler would pad each rank's share with repeated examples, which the metrics
            # then count twice: each rank gets a disjoint share instead (uneven by at most one).
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        drawn = len(dataset) if num_samples is None else num_samples
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=sampler.generator if shuffle else None,  # worker seeds too
            # A last training batch of one example breaks BatchNorm ("more than 1 value per channel"): drop it.
            drop_last=shuffle and drawn % batch_size == 1,
            num_workers=workers,
            pin_memory=self._pin_memory(),
            persistent_workers=workers > 0,
            collate_fn=None if use_features else self.inputs.collate,
        )
        if split.removeprefix("target_") in ("train", "val"):
            self._loaders[split] = loader
        return loader

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """``dataset`` in order, in eval batches: what features are computed from, and what eval scores."""
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            pin_memory=self._pin_memory(),
            collate_fn=self.inputs.collate,
        )

    def eval_view(self, split: str) -> sources.LabeledImages:
        """``split`` with the eval transform (no augmentation): what the exact probe's features come from."""
        return self.without_augmentation(self.datasets[split])

    def without_augmentation(self, dataset: Dataset) -> Dataset:
        """The examples of one of this module's datasets with the eval transform."""
        return self._dataset(sources.Split(dataset.items, dataset.labels), self.inputs.transform("none", False))

    def _pin_memory(self) -> bool:
        """data.pin_memory, or when unset: pin on CUDA, where it lets host-to-device copies overlap compute."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        return self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)

    def _features_apply(self, split: str) -> bool:
        """Cached features may stand in for train (without augmentation: features of one fixed view) and val."""
        split = split.removeprefix("target_")
        if self.features is None or split not in ("train", "val") or (split == "train" and self.augment != "none"):
            return False
        return self.features.active()

    def make_splits(self, raw: dict[str, sources.Split]) -> dict[str, sources.Split]:
        """``raw`` split by this module's data.val_fraction, data.test_fraction and data.split_seed."""
        return sources.make_splits(raw, self.val_fraction, self.test_fraction, self.split_seed)

    def readable(
        self, raw: dict[str, sources.Split], option: str, root, folder: bool, prefix: str = ""
    ) -> dict[str, sources.Split]:
        """The splits of a folder without the files PIL cannot read (data.bad_files; skipped ones are listed in
        output_dir/<prefix>bad_files.txt), decoded into memory with data.cache_images; digits as they are."""
        if not folder:
            return raw
        paths = [path for split in raw.values() for path in split.items]
        subject = f"{option}={root}"
        listing = f"{prefix}{images.BAD_FILES}"
        bad, skipped = images.screen(paths, self.bad_files, "data.bad_files", root, subject, self.output_dir, listing)
        if skipped is not None:
            warnings.warn(skipped, stacklevel=2)
            raw = {name: self._kept(split, bad, subject, name) for name, split in raw.items()}
        if self.cache_images:
            raw = {name: sources.decoded(split) for name, split in raw.items()}
        return raw

    def _kept(self, split: sources.Split, bad: set, subject: str, name: str) -> sources.Split:
        """``split`` without the ``bad`` files; a split (or a labelled split's class) left empty is a ConfigError.
        Listing already found images in each, so only skipping can empty one."""
        kept = split.subset([i for i, path in enumerate(split.items) if path not in bad])
        where = "" if name == "all" else f" in {name}"
        if not len(kept):
            raise ConfigError(f"{subject}: no readable image{where}; add images")
        labelled = kept.labels[0] >= 0  # an unlabelled target's labels are -1
        for label, class_name in enumerate(self.class_names if labelled else ()):
            if not (kept.labels == label).any():
                raise ConfigError(
                    f"{subject}: class folder '{class_name}'{where} has no readable images; remove it or add images"
                )
        return kept


def _list_source(source: str, root: str | None, classes, photos) -> tuple[dict[str, sources.Split], list[str]]:
    """The source's images (not decoded) by split, and its class names."""
    if source in DIGIT_SOURCES:
        if root is not None:
            raise ConfigError(f"data.root={root} is set but data.source={source}; add data.source=folder")
        split, class_names = DIGIT_SOURCES[source](check_digit_classes(classes), photos)
        return {"all": split}, class_names
    if root is None:
        raise ConfigError("data.root is required with data.source=folder; set data.root=PATH/TO/IMAGES")
    if classes is not None:
        raise ConfigError("data.classes selects digits and only applies to data.source=digits; remove data.classes")
    return sources.scan_folder(root)
