"""Where images come from: scikit-learn's digits or an ImageFolder-style tree, and seeded subsets of them."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from transferlab.data.images import IMG_EXTENSIONS, image_files, load_rgb
from transferlab.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split: ``items`` are image paths or HxWx3 uint8 arrays, ``labels`` their class indices."""

    items: list
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> Split:
        return Split([self.items[i] for i in indices], self.labels[np.asarray(indices, dtype=int)])


class LabeledImages(Dataset):
    """(image tensor, label) pairs of a :class:`Split`: each image is loaded as RGB PIL, then transformed."""

    def __init__(self, split: Split, transform: Callable):
        self.items, self.labels, self.transform = split.items, split.labels, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.transform(load_rgb(self.items[index])), int(self.labels[index])


def decoded(split: Split) -> Split:
    """The split with every image file decoded once into memory (data.cache_images): no decoding per epoch."""
    return Split([np.asarray(load_rgb(item)) for item in split.items], split.labels)


# --- digits -------------------------------------------------------------------------------------------


def load_digits(classes: Sequence[int] | None) -> tuple[Split, list[str]]:
    """scikit-learn's 1,797 8x8 handwritten digits as RGB uint8 arrays, keeping ``classes`` in their order."""
    images, target = _sklearn_digits()
    classes = list(range(10)) if classes is None else list(classes)
    keep = np.isin(target, classes)
    # 0..16 intensities -> 0..255, replicated to 3 channels so every backbone sees an RGB image.
    gray = np.round(images[keep] * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    remap = {digit: label for label, digit in enumerate(classes)}
    labels = np.array([remap[d] for d in target[keep]], dtype=np.int64)
    return Split(list(rgb), labels), [str(d) for d in classes]


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) images and their digits, read from the CSV file scikit-learn ships: importing
    sklearn.datasets takes about 2 s, most of a run's start-up beyond torch and Lightning."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets/data/digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        rows = np.loadtxt(csv, delimiter=",")
        return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(int)
    from sklearn.datasets import load_digits as sklearn_digits  # another layout: the public loader

    digits = sklearn_digits()
    return digits.images, digits.target


# --- image folders ------------------------------------------------------------------------------------


def _class_folders(folder: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store dirs) are never classes.
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folder(root: str | Path) -> tuple[dict[str, Split], list[str]]:
    """List an image tree without decoding anything.

    ``root/train`` present: the splits are ``train/``, ``val/`` (required) and an optional ``test/``, all with
    the same class folders. Otherwise ``root`` holds the class folders and the one split is called ``all``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"data.root={root}: folder not found; set data.root to a folder of class folders (or train/ val/)"
        )
    if not (root / "train").is_dir():
        class_names = _check_classes(root, _class_folders(root))
        return {"all": _scan_classes(root, root, class_names, where=None)}, class_names
    if not (root / "val").is_dir():
        raise ConfigError(
            f"data.root={root}: has train/ but no val/; add a val/ folder with the same class folders "
            "(or put the class folders directly in data.root to split by data.val_fraction)"
        )
    class_names = _check_classes(root, _class_folders(root / "train"))
    splits = {}
    for name in SPLITS:
        folder = root / name
        if not folder.is_dir():
            continue
        found = _class_folders(folder)
        if found != class_names:
            raise ConfigError(
                f"data.root={root}: class folders in {name}/ {found} differ from train/ {class_names}; "
                "use the same class folders in every split"
            )
        splits[name] = _scan_classes(root, folder, class_names, where=name)
    return splits, class_names


def _check_classes(root: Path, class_names: list[str]) -> list[str]:
    if len(class_names) < 2:
        raise ConfigError(
            f"data.root={root}: found {len(class_names)} class folder(s) {class_names}; "
            "a classifier needs at least 2: put each class's images in its own sub-folder"
        )
    return class_names


def _scan_classes(root: Path, folder: Path, class_names: list[str], where: str | None) -> Split:
    items, labels = [], []
    for label, name in enumerate(class_names):
        files = image_files(folder / name)
        if not files:
            in_split = f" in {where}" if where else ""
            raise ConfigError(
                f"data.root={root}: class folder '{name}'{in_split} has no images "
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
        rest, taken = train_test_split(indices, test_size=fraction, stratify=split.labels, random_state=seed)
    except ValueError:
        counts = np.bincount(split.labels)
        raise ConfigError(
            f"{option}={fraction}: cannot split {len(split)} images in {len(counts)} classes (smallest has "
            f"{counts.min()}) with every class on both sides; change {option} or add images"
        ) from None
    return split.subset(np.sort(rest)), split.subset(np.sort(taken))


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
