"""Cached backbone features: a frozen backbone's output for every image of a split, computed once.

An entry is one ``.npy`` file (fp16, or float32 where fp16 would overflow) named by a hash of everything the
features depend on: the backbone's code (its classes' source files, or the version of the package they come from),
architecture and weights (every tensor of its state dict), the split's examples and their preparation (the
dataset's ``fingerprint()``: for images, paths, sizes and modification times or the pixels, labels and the
transform) and the precision they were computed in. Any change makes a new
entry; an unchanged backbone reuses the entry across epochs, runs and sweep trials. Writers take a lock, fill a
temporary file and rename it into place, so concurrent trials compute an entry once and nobody reads a
half-written file.
"""

from __future__ import annotations

import errno
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
from transferlab.errors import ConfigError, RunFailed

if TYPE_CHECKING:
    from transferlab.backbones import Backbone


FP16_MAX = float(np.finfo(np.float16).max)


def backbone_fingerprint(model: nn.Module) -> str:
    """Hash of the code (:func:`code_fingerprint`), the architecture (its repr) and every parameter and buffer,
    bit for bit."""
    h = hashlib.blake2b(repr(model).encode(), digest_size=16)
    h.update(code_fingerprint(model).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1).contiguous()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(flat.view(torch.uint8).cpu().numpy().data if flat.numel() else b"")
    return h.hexdigest()


def code_fingerprint(model: nn.Module) -> str:
    """What runs the forward pass: for each class among the model's modules, ``package==version`` where the class
    comes from an installed package with a version (torch, timm), else the source of the file that defines it (a
    user's own network: an edited ``forward()`` or a helper it calls there changes the key)."""
    import importlib.metadata
    import inspect
    import sys

    parts = set()
    for cls in {type(m) for m in model.modules()}:
        package = cls.__module__.partition(".")[0]
        try:
            parts.add(f"{package}=={importlib.metadata.version(package)}")
            continue
        except (importlib.metadata.PackageNotFoundError, ValueError):
            pass
        try:
            parts.add(inspect.getsource(sys.modules[cls.__module__]))
        except (KeyError, TypeError, OSError):  # defined in a notebook cell or by exec: its qualified name only
            parts.add(f"{cls.__module__}.{cls.__qualname__}")
    return hashlib.blake2b("\n".join(sorted(parts)).encode(), digest_size=16).hexdigest()


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
        # Removed while held: the lock only saves duplicate work (each writer renames its own file into place),
        # so a newcomer that makes a fresh lock file is harmless, and nothing is left beside the entry.
        Path(lock.lock_file).unlink(missing_ok=True)
        lock.release()
    return np.load(path, mmap_mode="r"), False


def _load_entry(path: Path, shape: tuple[int, int] | None) -> np.ndarray | None:
    """The entry at ``path`` when it is whole (and of ``shape``); a damaged one is removed."""
    if not path.is_file():
        return None
    try:
        values = np.load(path, mmap_mode="r")
        if (shape is None or values.shape == shape) and values.dtype in (np.float16, np.float32):
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
    try:
        values, hit = load_or_compute(path, compute, (len(dataset), backbone.num_features))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise ConfigError(
            f"data.feature_cache={folder}: no space for the {split} features ({e.strerror}); "
            "free space, choose another folder or set data.feature_cache=null"
        ) from None
    return values, hit, path


@torch.inference_mode()
def write_features(tmp: Path, backbone: Backbone, loader, device: torch.device, autocast: Callable) -> None:
    """Run ``backbone`` in eval mode over ``loader`` (in order) and write (examples, num_features) to ``tmp``: fp16,
    or float32 from the first value fp16 cannot hold. Features that are not finite are a RunFailed."""
    from pytorch_lightning.utilities import move_data_to_device

    shape = (len(loader.dataset), backbone.num_features)
    out = _allocate(tmp, shape, np.float16)
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
                values = features.float().cpu().numpy()
                if not np.isfinite(values).all():
                    row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
                    value = values[row][~np.isfinite(values[row])][0]
                    raise RunFailed(
                        f"the backbone's features of example {start + row} are not finite ({value}); check the "
                        "backbone and its weights (or, under 16-bit precision, try trainer.precision=32-true)"
                    )
                if out.dtype == np.float16 and np.abs(values).max(initial=0) > FP16_MAX:
                    out = _widen(out, tmp, start)
                out[start : start + len(values)] = values
                start += len(values)
        finally:
            model.train(was_training)
    out.flush()
    del out


def _allocate(path: Path, shape: tuple[int, int], dtype) -> np.memmap:
    """A ``.npy`` memory map whose blocks are reserved now: a full disk is an OSError here, not a SIGBUS when a
    page of a sparse file is first written."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: written as is
                raise
    return out


def _widen(out: np.memmap, path: Path, written: int) -> np.memmap:
    """``out`` as float32 (its first ``written`` rows copied): a feature beyond fp16's range was met."""
    head, shape = np.array(out[:written], dtype=np.float32), out.shape
    del out
    wide = _allocate(path, shape, np.float32)
    wide[:written] = head
    return wide


class FeatureDataset(Dataset):
    """:class:`FeatureBatch` items of a cached entry."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> FeatureBatch:
        return FeatureBatch(torch.from_numpy(self.features[index].astype(np.float32)), int(self.labels[index]))
