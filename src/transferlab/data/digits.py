"""scikit-learn's handwritten digits, and digits-M (the digits blended over colour photos): offline sources."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.data.images import find_unreadable, image_files, load_rgb
from transferlab.data.sources import Split
from transferlab.errors import ConfigError


def load_digits(classes: Sequence[int] | None) -> tuple[Split, list[str]]:
    """scikit-learn's 1,797 8x8 handwritten digits as RGB uint8 arrays, keeping ``classes`` in their order."""
    images, target = _sklearn_digits()
    # 0..16 intensities -> 0..255, replicated to 3 channels so every backbone sees an RGB image.
    gray = np.round(images * (255.0 / 16.0)).astype(np.uint8)
    return _select(list(np.repeat(gray[..., None], 3, axis=-1)), target, classes)


DIGITS_M_SIZE = 32


def load_digits_m(classes: Sequence[int] | None, photos: str | None = None) -> tuple[Split, list[str]]:
    """ "digits-M", made as Ganin et al. made MNIST-M from MNIST: each digit (upsampled to 32 px) blended by absolute
    difference over a random 32 px crop of a colour photo (``photos``: a folder; None: scikit-learn's two sample
    photos). The digits of :func:`load_digits` in its order, so a split seed splits both alike; each digit's photo
    and crop are seeded by its index: the same set every time."""
    images, target = _sklearn_digits()
    backgrounds = _photos(photos)
    size, blended = DIGITS_M_SIZE, []
    for index, image in enumerate(images):
        digit = Image.fromarray(np.round(image * (255.0 / 16.0)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        rng = np.random.default_rng([0, index])
        photo = backgrounds[rng.integers(len(backgrounds))]
        top, left = rng.integers(photo.shape[0] - size + 1), rng.integers(photo.shape[1] - size + 1)
        patch = photo[top : top + size, left : left + size].astype(np.int16)
        blended.append(np.abs(patch - np.asarray(digit, dtype=np.int16)[..., None]).astype(np.uint8))
    return _select(blended, target, classes)


def _select(rgb: list[np.ndarray], target: np.ndarray, classes: Sequence[int] | None) -> tuple[Split, list[str]]:
    classes = list(range(10)) if classes is None else list(classes)
    keep = np.flatnonzero(np.isin(target, classes))
    remap = {digit: label for label, digit in enumerate(classes)}
    labels = np.array([remap[d] for d in target[keep]], dtype=np.int64)
    return Split([rgb[i] for i in keep], labels), [str(d) for d in classes]


def _photos(folder: str | None) -> list[np.ndarray]:
    """The colour photos digits-M is blended over, as HxWx3 uint8 arrays of at least 32 px a side."""
    if folder is None:
        spec = importlib.util.find_spec("sklearn")
        folder = str(Path(spec.origin).parent / "datasets/images") if spec and spec.origin else ""
        option = "scikit-learn's sample images"
    else:
        option = f"data.photos={folder}"
    root = Path(folder).expanduser()
    files = image_files(root) if root.is_dir() else []
    if not files:
        raise ConfigError(f"{option}: no photos found in {root}; set data.photos to a folder of colour photos")
    unreadable = find_unreadable(files)
    if unreadable:
        first, reason = next(iter(unreadable.items()))
        warnings.warn(
            f"{option}: skipped {len(unreadable)} unreadable photo(s), the first {first} ({reason})", stacklevel=2
        )
    photos = [np.asarray(load_rgb(f)) for f in files if f not in unreadable]
    photos = [p for p in photos if min(p.shape[:2]) >= DIGITS_M_SIZE]
    if not photos:
        raise ConfigError(f"{option}: no photo of at least {DIGITS_M_SIZE} px a side; add larger photos")
    return photos


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
