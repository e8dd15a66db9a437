"""The LightningDataModule for image classification: a source, split, subsampled and transformed."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.utilities import CombinedLoader, rank_zero_info
from torch.utils.data import DataLoader, Dataset

from transferlab import features
from transferlab.data import images, sources
from transferlab.data.options import check_digit_classes, check_options
from transferlab.data.sampling import CycleShuffle, EpochShuffle
from transferlab.data.transforms import build_transform, resolve_data_config
from transferlab.errors import ConfigError

DIGIT_SOURCES = {  # built in: (classes, photos) -> (split, class names)
    "digits": lambda classes, photos: sources.load_digits(classes),
    "digits_m": sources.load_digits_m,
}

if TYPE_CHECKING:  # the backbone module imports this package's transforms
    from transferlab.backbones import Backbone


class ClassificationDataModule(pl.LightningDataModule):
    """Train/val(/test) image classification data, configured by the ``data.`` options.

    ``class_names``, ``num_classes`` and the resolved ``data_config`` are ready after ``__init__`` (folders
    are listed, no image is decoded); ``setup`` checks the files, makes the splits and builds the datasets.

    With a ``feature_cache`` folder, a ``backbone`` and ``backbone_frozen`` (a function of the epoch: whether
    its phase freezes the whole backbone), the train and val splits are served as the backbone's cached
    features in such epochs.

    ``target`` (``{"root": PATH}``, or ``{"source": "digits_m"}``) adds a second domain, split like the source
    (``target_train``, ``target_val``, ``target_test``; unlabelled images are all ``target_train``). A labelled
    target's val and test splits are served beside the source's; with ``target_batches`` every training batch
    is ``{"source": batch, "target": batch}`` (domain adaptation), with as many target images as source ones.
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
        data_config: dict | None = None,
        bad_files: str = "skip",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        cache_images: bool = False,
        feature_cache: str | None = None,
        output_dir: str | None = None,
        target: dict | None = None,
        photos: str | None = None,
        backbone: Backbone | None = None,
        backbone_frozen: Callable[[int], bool] | None = None,
        target_batches: bool = False,
    ):
        super().__init__()
        check_options({k: v for k, v in locals().items() if not k.startswith("_") and k != "self"})
        self.source, self.root, self.augment, self.bad_files = source, root, augment, bad_files
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_seed = int(split_seed)
        self.samples_per_class = None if samples_per_class is None else int(samples_per_class)
        self.train_fraction = None if train_fraction is None else float(train_fraction)
        self.batch_size = int(batch_size)
        self.eval_batch_size = self.batch_size if eval_batch_size is None else int(eval_batch_size)
        self.num_workers, self.pin_memory = int(num_workers), pin_memory
        self.cache_images = bool(cache_images)
        self.feature_cache = None if feature_cache is None else Path(feature_cache).expanduser()
        self.feature_cache_log: list[dict] = []  # one entry per cached split used: hit or computed, and how long
        self._loaders: dict[str, DataLoader] = {}
        self.output_dir = None if output_dir is None else Path(output_dir).expanduser()
        self.backbone, self.backbone_frozen = backbone, backbone_frozen
        self.data_config = resolve_data_config(data_config, input_size, mean, std)

        # Listing is cheap and catches layout mistakes before any model is built.
        if source in DIGIT_SOURCES:
            if root is not None:
                raise ConfigError(f"data.root={root} is set but data.source={source}; add data.source=folder")
            digits, self.class_names = DIGIT_SOURCES[source](check_digit_classes(classes), photos)
            self._raw = {"all": digits}
        else:
            if root is None:
                raise ConfigError("data.root is required with data.source=folder; set data.root=PATH/TO/IMAGES")
            if classes is not None:
                raise ConfigError(
                    "data.classes selects digits and only applies to data.source=digits; remove data.classes"
                )
            self._raw, self.class_names = sources.scan_folder(root)
        self.num_classes = len(self.class_names)
        self.target = dict(target or {})
        self.target_root = self.target.get("root")
        self._target_raw, self.target_labelled = self._list_target(classes, photos)
        self.target_batches = bool(target_batches)
        self._datasets: dict[str, sources.LabeledImages] = {}

    # --- Lightning hooks ------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Check the files, split and subsample, build the datasets; later calls do nothing."""
        if self._datasets:
            return
        splits = self._make_splits(self._readable(self._raw, "data.root", self.root, self.source == "folder"))
        splits["train"] = sources.few_shot(
            splits["train"], self.class_names, self.split_seed, self.samples_per_class, self.train_fraction
        )
        if self._target_raw is not None:
            folder = self.target_root is not None
            raw = self._readable(self._target_raw, "data.target.root", self.target_root, folder, "target_")
            target = self._make_splits(raw) if self.target_labelled else {"train": raw["all"]}
            splits.update({f"target_{name}": split for name, split in target.items()})
        train_tf = build_transform(self.data_config, self.augment, train=True)
        eval_tf = self._eval_transform = build_transform(self.data_config, self.augment, train=False)
        self._datasets = {
            name: sources.LabeledImages(split, train_tf if name.endswith("train") else eval_tf)
            for name, split in splits.items()
        }

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        source = self._loader("train", shuffle=True)
        if not self.target_batches:
            return source
        target = self._loader("target_train", shuffle=True, num_samples=len(source.dataset))
        return CombinedLoader({"source": source, "target": target}, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The source's val split, and a labelled target's (dataloader_idx 1) beside it."""
        source = self._loader("val")
        return [source, self._loader("target_val")] if "target_val" in self.datasets else source

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            fix = "set data.test_fraction, e.g. data.test_fraction=0.2"
            if self.source == "folder" and "all" not in self._raw:
                fix = f"add a test/ folder beside train/ and val/ in data.root={self.root}, or {fix}"
            raise ConfigError(f"no test split: {fix}")
        source = self._loader("test")
        return [source, self._loader("target_test")] if "target_test" in self.datasets else source

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.datasets else "val")

    # --- helpers --------------------------------------------------------------------------------------

    @property
    def datasets(self) -> dict[str, sources.LabeledImages]:
        """The built datasets by split name (``train``, ``val``, maybe ``test``); sets up on first use."""
        self.setup()
        return self._datasets

    def split_sizes(self, prefix: str = "") -> dict[str, int]:
        """Images per split after bad-file removal and few-shot subsampling; ``test`` is 0 when absent.
        ``prefix="target_"``: the target's."""
        return {name: len(self.datasets.get(prefix + name, ())) for name in sources.SPLITS}

    def target_summary(self) -> dict | None:
        """What summary.json says of the target: where it is from, whether labelled, its splits."""
        if self._target_raw is None:
            return None
        where = {"root": self.target_root} if self.target_root is not None else {"source": self.target["source"]}
        return {**where, "labelled": self.target_labelled, "split_sizes": self.split_sizes("target_")}

    def _list_target(self, classes, photos) -> tuple[dict[str, sources.Split] | None, bool]:
        """The target's images (not decoded) and whether they are labelled; None without a target."""
        kind = self.target.get("source") or "folder"
        if kind == "folder" and self.target_root is None:
            return None, False
        if kind in DIGIT_SOURCES:
            split, names = DIGIT_SOURCES[kind](check_digit_classes(classes), photos)
            raw, shown = {"all": split}, f"data.target.source={kind}"
        else:
            raw, names = sources.scan_target(self.target_root)
            shown = f"data.target.root={self.target_root}"
        if names is not None and names != self.class_names:
            raise ConfigError(
                f"{shown}: its classes {names} differ from the source's {self.class_names}; give the target the "
                "source's class folders (or a flat folder of unlabelled images)"
            )
        return raw, names is not None

    def _loader(self, split: str, shuffle: bool = False, num_samples: int | None = None) -> DataLoader:
        """Images, or the frozen backbone's cached features where they apply. The loader is kept while its kind
        stays, so per-epoch reloads (schedules whose phases switch between the two) keep persistent workers."""
        use_features = self._features_apply(split)
        kept = self._loaders.get(split)
        if kept is not None and isinstance(kept.dataset, features.FeatureDataset) == use_features:
            return kept
        dataset: Dataset = self._cached_features(split) if use_features else self.datasets[split]
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        workers = 0 if use_features else self.num_workers  # reading a memory map needs no worker processes
        sampler = None
        if shuffle:
            sampler = EpochShuffle(dataset) if num_samples is None else CycleShuffle(dataset, num_samples)
        drawn = len(dataset) if num_samples is None else num_samples
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            generator=sampler.generator if sampler else None,  # worker seeds too
            # A last training batch of one image breaks BatchNorm ("more than 1 value per channel"): drop it.
            drop_last=shuffle and drawn % batch_size == 1,
            num_workers=workers,
            pin_memory=self._pin_memory(),
            persistent_workers=workers > 0,
        )
        if split.removeprefix("target_") in ("train", "val"):
            self._loaders[split] = loader
        return loader

    def _pin_memory(self) -> bool:
        """data.pin_memory, or when unset: pin on CUDA, where it lets host-to-device copies overlap compute."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        return self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)

    def _features_apply(self, split: str) -> bool:
        """The cache serves train and val in epochs whose phase freezes the whole backbone (train only without
        augmentation), on one device."""
        trainer = self.trainer
        if self.feature_cache is None or self.backbone_frozen is None or trainer is None:
            return False
        split = split.removeprefix("target_")
        if split not in ("train", "val") or (split == "train" and self.augment != "none"):
            return False
        if isinstance(trainer.strategy, ParallelStrategy):
            return False  # DDP's gradient sync expects the backbone in every step's graph
        return self.backbone_frozen(trainer.current_epoch)

    def probe_features(self) -> tuple[np.ndarray, np.ndarray]:
        """The backbone's features of the train split with the eval transform (no augmentation) and their labels:
        what the exact linear probe fits. Cached as the others are, when data.feature_cache is set."""
        train = self.datasets["train"]
        plain = sources.LabeledImages(sources.Split(train.items, train.labels), self._eval_transform)
        return np.asarray(self._cached_features("train", plain, log=False).features, dtype=np.float32), plain.labels

    def _cached_features(
        self, split: str, dataset: sources.LabeledImages | None = None, log: bool = True
    ) -> features.FeatureDataset:
        """The backbone's features of ``dataset`` (default: the split's), through the cache; ``log``: listed in
        summary.json's ``feature_cache`` (the splits served to training)."""
        trainer, backbone = self.trainer, self.backbone
        dataset = dataset if dataset is not None else self.datasets[split]
        extract = DataLoader(
            dataset, batch_size=self.eval_batch_size, num_workers=self.num_workers, pin_memory=self._pin_memory()
        )
        start = time.perf_counter()
        values, hit, path = features.split_features(
            self.feature_cache,
            split,
            dataset,
            backbone.model,
            backbone.num_features,
            extract,
            trainer.strategy.root_device,
            trainer.precision_plugin.forward_context,
            str(trainer.precision),
        )
        seconds = round(time.perf_counter() - start, 3)
        if path is not None and log:
            self.feature_cache_log.append(
                {"epoch": trainer.current_epoch, "split": split, "hit": hit, "seconds": seconds, "file": str(path)}
            )
        what = "reused" if hit else f"computed in {seconds:.1f}s"
        rank_zero_info(
            f"{split} features of the frozen backbone {what}: {len(values)} x {values.shape[1]}, {path or 'not cached'}"
        )
        return features.FeatureDataset(values, dataset.labels)

    def _make_splits(self, raw: dict[str, sources.Split]) -> dict[str, sources.Split]:
        """Stratified val/test splits where the source has none; the test split is cut first so that it stays
        the same when only data.val_fraction changes."""
        seed = self.split_seed
        if "all" in raw:  # digits, or a folder of class folders
            rest, splits = raw["all"], {}
            if self.test_fraction > 0:
                rest, splits["test"] = sources.split_off(rest, self.test_fraction, seed, "data.test_fraction")
            # val_fraction is of all images, so rescale it to what is left after the test split.
            val_share = self.val_fraction / (1 - self.test_fraction)
            splits["train"], splits["val"] = sources.split_off(rest, val_share, seed, "data.val_fraction")
            return splits
        splits = dict(raw)
        if "test" not in splits and self.test_fraction > 0:
            # A train/ + val/ tree without test/: data.test_fraction carves the test split out of train/.
            splits["train"], splits["test"] = sources.split_off(
                splits["train"], self.test_fraction, seed, "data.test_fraction"
            )
        return splits

    def _readable(
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
