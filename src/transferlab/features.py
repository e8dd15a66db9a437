"""Cached backbone features: a frozen backbone's output for every image of a split, computed once.

An entry is one fp16 ``.npy`` file named by a hash of everything the features depend on: the backbone's
architecture and weights (every tensor of its state dict), the split's examples and their preparation (the
dataset's ``fingerprint()``: for images, paths, sizes and modification times or the pixels, labels and the
transform) and the precision they were computed in. Any change makes a new
entry; an unchanged backbone reuses the entry across epochs, runs and sweep trials. Writers take a lock, fill a
temporary file and rename it into place, so concurrent trials compute an entry once and nobody reads a
half-written file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import Dataset

from transferlab.batches import FeatureBatch

if TYPE_CHECKING:
    from transferlab.backbones import Backbone


def backbone_fingerprint(model: nn.Module) -> str:
    """Hash of the architecture (its repr) and every parameter and buffer, bit for bit."""
    h = hashlib.blake2b(repr(model).encode(), digest_size=16)
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1).contiguous()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(flat.view(torch.uint8).cpu().numpy().data if flat.numel() else b"")
    return h.hexdigest()


def entry_key(*parts: str) -> str:
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


def load_or_compute(
    path: Path, compute: Callable[[Path], None], shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, bool]:
    """The array at ``path`` (memory-mapped; of ``shape`` when given) and whether it was there already; ``compute(tmp)`` writes a
    missing one into ``tmp``, which then becomes ``path`` in one rename. An entry that is damaged (truncated, of
    another shape) is computed again; a cache folder that cannot be written is warned about and bypassed."""
    cached = _load_entry(path, shape)
    if cached is not None:
        return cached, True
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{path}.lock")
        lock.acquire()
    except OSError as e:
        warnings.warn(
            f"data.feature_cache={path.parent}: cannot be written ({e.strerror}); features not cached", stacklevel=2
        )
        return _compute_in(Path(tempfile.mkdtemp()) / path.name, compute), False
    try:
        cached = _load_entry(path, shape)  # another process may have written it while this one waited for the lock
        if cached is not None:
            return cached, True
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        try:
            compute(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        lock.release()
    return np.load(path, mmap_mode="r"), False


def _load_entry(path: Path, shape: tuple[int, int] | None) -> np.ndarray | None:
    """The entry at ``path`` when it is whole (and of ``shape``); a damaged one is removed."""
    if not path.is_file():
        return None
    try:
        values = np.load(path, mmap_mode="r")
        if (shape is None or values.shape == shape) and values.dtype == np.float16:
            return values
    except (OSError, ValueError, EOFError):
        pass
    warnings.warn(f"feature cache entry {path} is damaged; computing it again", stacklevel=3)
    path.unlink(missing_ok=True)
    return None


def _compute_in(tmp: Path, compute: Callable[[Path], None]) -> np.ndarray:
    """Features computed into a private temporary file and read into memory (no cache)."""
    try:
        compute(tmp)
        return np.array(np.load(tmp))
    finally:
        tmp.unlink(missing_ok=True)
        tmp.parent.rmdir()


def split_features(
    folder: Path | None, split: str, dataset, backbone: Backbone, loader, device, autocast, precision: str
) -> tuple[np.ndarray, bool, Path | None]:
    """The cached features of ``dataset`` (which has a ``fingerprint()``; ``loader`` iterates it in order),
    computed with ``backbone`` on ``device`` under ``autocast`` where missing: (features, whether cached, entry
    file). Without a ``folder`` they are computed into memory."""
    compute = lambda tmp: write_features(tmp, backbone, loader, device, autocast)  # noqa: E731
    if folder is None:
        return _compute_in(Path(tempfile.mkdtemp()) / "features.npy", compute), False, None
    key = entry_key(backbone_fingerprint(backbone.model), dataset.fingerprint(), split, precision)
    path = folder / f"{key}.npy"
    values, hit = load_or_compute(path, compute, (len(dataset), backbone.num_features))
    return values, hit, path


@torch.inference_mode()
def write_features(tmp: Path, backbone: Backbone, loader, device: torch.device, autocast: Callable) -> None:
    """Run ``backbone`` in eval mode over ``loader`` (in order) and write (examples, num_features) fp16 to ``tmp``."""
    from pytorch_lightning.utilities import move_data_to_device

    shape = (len(loader.dataset), backbone.num_features)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    model = backbone.model
    was_training = model.training
    model.eval()
    # Iterating a DataLoader draws from torch's RNG: fork it so a run draws the same numbers, cache hit or not.
    with torch.random.fork_rng(devices=[]):
        try:
            start = 0
            for batch in loader:
                with autocast():
                    features = backbone.features(move_data_to_device(batch.inputs, device))
                out[start : start + len(features)] = features.float().cpu().numpy()
                start += len(features)
        finally:
            model.train(was_training)
    out.flush()
    del out


class FeatureDataset(Dataset):
    """:class:`FeatureBatch` items of a cached entry."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> FeatureBatch:
        return FeatureBatch(torch.from_numpy(self.features[index].astype(np.float32)), int(self.labels[index]))
