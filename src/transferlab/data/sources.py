"""Where images come from: scikit-learn's digits or an ImageFolder-style tree, and seeded subsets of them."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from transferlab.batches import Batch
from transferlab.data.images import IMG_EXTENSIONS, image_files, load_rgb
from transferlab.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split: ``items`` are image paths, HxWx3 uint8 arrays or texts, ``labels`` their class indices, and
    ``groups`` (optional) what must stay together when the split is divided (data.group_column)."""

    items: list
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> Split:
        at = np.asarray(indices, dtype=int)
        return Split([self.items[i] for i in at], self.labels[at], None if self.groups is None else self.groups[at])


class LabeledImages(Dataset):
    """:class:`~transferlab.batches.Batch` items (image tensor, label) of a :class:`Split`: each image is loaded as
    RGB PIL, then transformed."""

    def __init__(self, split: Split, transform: Callable):
        self.items, self.labels, self.transform = split.items, split.labels, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Batch:
        return Batch(self.transform(load_rgb(self.items[index])), int(self.labels[index]))

    def fingerprint(self) -> str:
        """Hash of the images, labels and transform (the feature cache's key): file path, size and mtime for
        files, the pixels for arrays."""
        h = hashlib.blake2b(np.ascontiguousarray(self.labels).data, digest_size=16)
        for item in self.items:
            if isinstance(item, np.ndarray):
                h.update(np.ascontiguousarray(item).data)
            else:
                stat = os.stat(item)
                h.update(f"{item}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        h.update(repr(self.transform).encode())
        return h.hexdigest()


def decoded(split: Split) -> Split:
    """The split with every image file decoded once into memory (data.cache_images): no decoding per epoch."""
    return Split([np.asarray(load_rgb(item)) for item in split.items], split.labels)


# --- image folders ------------------------------------------------------------------------------------


def _class_folders(folder: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store dirs) are never classes.
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folder(root: str | Path, option: str = "data.root") -> tuple[dict[str, Split], list[str]]:
    """List an image tree without decoding anything; ``option`` names it in errors.

    ``root/train`` present: the splits are ``train/``, ``val/`` (required) and an optional ``test/``, all with
    the same class folders. Otherwise ``root`` holds the class folders and the one split is called ``all``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"{option}={root}: folder not found; set {option} to a folder of class folders (or train/ val/)"
        )
    if not (root / "train").is_dir():
        class_names = _check_classes(root, _class_folders(root), option)
        splits = {"all": _scan_classes(root, root, class_names, None, option)}
        _check_each_file_once(root, splits, class_names, option)
        return splits, class_names
    if not (root / "val").is_dir():
        raise ConfigError(
            f"{option}={root}: has train/ but no val/; add a val/ folder with the same class folders "
            f"(or put the class folders directly in {option} to split by data.val_fraction)"
        )
    class_names = _check_classes(root, _class_folders(root / "train"), option)
    splits = {}
    for name in SPLITS:
        folder = root / name
        if not folder.is_dir():
            continue
        found = _class_folders(folder)
        if found != class_names:
            raise ConfigError(
                f"{option}={root}: class folders in {name}/ {found} differ from train/ {class_names}; "
                "use the same class folders in every split"
            )
        splits[name] = _scan_classes(root, folder, class_names, name, option)
    _check_each_file_once(root, splits, class_names, option)
    return splits, class_names


def scan_target(root: str | Path) -> tuple[dict[str, Split], list[str] | None]:
    """``data.target.root``: a tree like data.root's (labelled: the labels only score), or images directly in it
    (unlabelled: one split ``all``, labels -1, and ``None`` for the class names)."""
    option, root = "data.target.root", Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"{option}={root}: folder not found; give a folder of target images (flat or in class folders)"
        )
    if _class_folders(root):
        return scan_folder(root, option)
    files = image_files(root)
    if not files:
        raise ConfigError(
            f"{option}={root}: has no images ({', '.join(IMG_EXTENSIONS)}); put the target images in it, "
            "flat (unlabelled) or in class folders"
        )
    return {"all": Split(files, np.full(len(files), -1, dtype=np.int64))}, None


def _check_classes(root: Path, class_names: list[str], option: str) -> list[str]:
    if len(class_names) < 2:
        raise ConfigError(
            f"{option}={root}: found {len(class_names)} class folder(s) {class_names}; "
            "a classifier needs at least 2: put each class's images in its own sub-folder"
        )
    return class_names


def _check_each_file_once(root: Path, splits: dict[str, Split], class_names: list[str], option: str) -> None:
    """A file reached twice (a class folder or split that links to its own split, to another class, or a hard
    link) would be a class of every image, or test images trained on: one line instead."""
    seen: dict[tuple[int, int], Path] = {}
    for split in splits.values():
        for path in split.items:
            info = path.stat()
            first = seen.setdefault((info.st_dev, info.st_ino), path)
            if first != path:
                raise ConfigError(
                    f"{option}={root}: {path.relative_to(root)} is the same file as {first.relative_to(root)} "
                    "(a linked folder?); keep each image in one class folder of one split"
                )


def _scan_classes(root: Path, folder: Path, class_names: list[str], where: str | None, option: str) -> Split:
    items, labels = [], []
    for label, name in enumerate(class_names):
        files = image_files(folder / name)
        if not files:
            in_split = f" in {where}" if where else ""
            raise ConfigError(
                f"{option}={root}: class folder '{name}'{in_split} has no images "
                f"({', '.join(IMG_EXTENSIONS)}); remove it or add images"
            )
        items += files
        labels += [label] * len(files)
    return Split(items, np.array(labels, dtype=np.int64))


# --- seeded subsets -----------------------------------------------------------------------------------


def split_off(split: Split, fraction: float, seed: int, option: str) -> tuple[Split, Split]:
    """Stratified (rest, taken) with ``fraction`` of ``split`` taken; ``option`` names it in errors."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(split))
    try:
        if split.groups is not None:
            rest, taken = _split_groups(split, fraction, seed)
        else:
            rest, taken = train_test_split(indices, test_size=fraction, stratify=split.labels, random_state=seed)
    except ValueError:
        counts = np.bincount(split.labels)
        raise ConfigError(
            f"{option}={fraction}: cannot split {len(split)} images in {len(counts)} classes (smallest has "
            f"{counts.min()}) with every class on both sides; change {option} or add images"
        ) from None
    return split.subset(np.sort(rest)), split.subset(np.sort(taken))


def _split_groups(split: Split, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, taken) with whole groups on each side, as close to stratified as groups allow: one fold of
    scikit-learn's StratifiedGroupKFold with 1/fraction folds (so about ``fraction`` is taken)."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = max(2, round(1 / fraction))
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    rest, taken = next(splitter.split(np.zeros(len(split)), split.labels, split.groups))
    return rest, taken


def make_splits(raw: dict[str, Split], val_fraction: float, test_fraction: float, seed: int) -> dict[str, Split]:
    """Stratified val/test splits where the source has none; the test split is cut first so that it stays
    the same when only data.val_fraction changes."""
    if "all" in raw:  # digits, or a folder of class folders
        rest, splits = raw["all"], {}
        if test_fraction > 0:
            rest, splits["test"] = split_off(rest, test_fraction, seed, "data.test_fraction")
        # val_fraction is of all images, so rescale it to what is left after the test split.
        val_share = val_fraction / (1 - test_fraction)
        splits["train"], splits["val"] = split_off(rest, val_share, seed, "data.val_fraction")
        return splits
    splits = dict(raw)
    if "val" not in splits:  # train/ and test/ only (aclImdb's layout): val is carved out of train
        splits["train"], splits["val"] = split_off(splits["train"], val_fraction, seed, "data.val_fraction")
    if "test" not in splits and test_fraction > 0:
        # A train/ + val/ tree without test/: data.test_fraction carves the test split out of train/.
        splits["train"], splits["test"] = split_off(splits["train"], test_fraction, seed, "data.test_fraction")
    return splits


def few_shot(
    split: Split,
    class_names: Sequence[str],
    seed: int,
    samples_per_class: int | None = None,
    train_fraction: float | None = None,
) -> Split:
    """Keep ``samples_per_class`` images (or ``train_fraction``, at least 1) of each class, seeded.

    Each class is shuffled with its own seed, and the first images are kept, so a smaller subset is always
    contained in a larger one and adding a class leaves the others' picks unchanged.
    """
    if samples_per_class is None and train_fraction is None:
        return split
    keep, short = [], []
    for label, name in enumerate(class_names):
        members = np.flatnonzero(split.labels == label)
        if samples_per_class is not None:
            count = samples_per_class
            if len(members) < count:
                short.append(f"{name} ({len(members)})")
        else:
            count = max(1, round(train_fraction * len(members)))
        keep += list(np.random.default_rng([seed, label]).permutation(members)[:count])
    if short:
        warnings.warn(
            f"data.samples_per_class={samples_per_class}: classes with fewer train images keep all of them: "
            f"{', '.join(short)}",
            stacklevel=3,
        )
    return split.subset(np.sort(keep))
