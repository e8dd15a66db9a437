"""Lightning callbacks of transferlab."""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from transferlab.batches import batch_size
from transferlab.errors import RunFailed
from transferlab.phase_control import group_lrs
from transferlab.run_folder import write_metrics

_first_step_seen = False  # later runs in the same process (in-process sweep trials) did not pay the start-up


class EpochHistory(pl.Callback):
    """Keeps one row of epoch-level metrics per epoch, writes metrics.csv, and prints a plain line per epoch.
    Throughput counts examples (images, texts) of every domain in a batch.

    The history lives in the checkpoint, so a resumed run's metrics.csv and curves cover every epoch.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.history: list[dict[str, Any]] = []
        self._epoch_start = self._batch_end = 0.0
        self._wait_s = self._step_s = 0.0
        self._samples = 0
        self.startup_s: float | None = None  # process start to first training step; the first run of a process only

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._batch_end = time.perf_counter()
        self._wait_s = self._step_s = 0.0
        self._samples = 0

    # Time between one step's end and the next step's start is spent waiting for the loader (Lightning
    # fetches the next batch there); the step itself is the model's forward, backward and optimizer step.
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()
        self._wait_s += self._batch_start - self._batch_end
        global _first_step_seen
        if not _first_step_seen:
            _first_step_seen = True
            self.startup_s = process_age_s()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_end = time.perf_counter()
        self._step_s += self._batch_end - self._batch_start
        self._samples += batch_size(batch)
        elapsed = self._batch_end - self._epoch_start
        pl_module.log("samples/s", self._samples / elapsed, prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Validation has run by now: callback_metrics holds this epoch's train and val values.
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        for key, value in sorted(trainer.callback_metrics.items()):
            if key.endswith("_step") or key.startswith("lr-") or key == "samples/s":  # lr: from the optimizer below
                continue
            row[key.removesuffix("_epoch")] = round(float(value), 6)
        for name, lr in (group_lrs(trainer.optimizers[0]) if trainer.optimizers else {}).items():
            row[f"lr/{name}"] = lr
        row["epoch_time_s"] = round(time.perf_counter() - self._epoch_start, 3)
        # Train loop only (validation excluded): which of loader and model bounds the run.
        row["train_samples_per_s"] = _rate(self._samples, self._batch_end - self._epoch_start)
        row["loader_samples_per_s"] = _rate(self._samples, self._wait_s)
        row["model_samples_per_s"] = _rate(self._samples, self._step_s)
        if not math.isfinite(row.get("train/loss", 0.0)):
            # A diverged run fails here, recorded as such, and a sweep goes on to its next trial.
            raise RunFailed(
                f"train/loss is {row['train/loss']} in epoch {row['epoch']}; lower optimizer.lr "
                "or set trainer.gradient_clip_val"
            )
        self.history.append(row)
        self._report(row, trainer.max_epochs)

    @rank_zero_only
    def _report(self, row: dict[str, Any], max_epochs: int) -> None:
        write_metrics(self.run_dir, self.history)
        shown = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train/", "val/", "target/")))
        rank_zero_info(
            f"epoch {row['epoch'] + 1}/{max_epochs} {shown} ({row['epoch_time_s']:.1f}s, "
            f"{row['train_samples_per_s'] or 0:.0f} samples/s; loader {row['loader_samples_per_s'] or 0:.0f}, "
            f"model {row['model_samples_per_s'] or 0:.0f})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose saved state follows its run folder: a checkpoint written before the folder
    was moved or copied names files of the old folder; on resume those names are mapped into this run's dirpath
    (and dropped where the file is not there), so a resumed run tests and keeps its own checkpoints."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:

            def moved(path: str) -> str:
                if not path or not str(path).startswith(str(old).rstrip("/") + "/"):
                    return path
                here = os.path.join(self.dirpath, os.path.relpath(path, old))
                return here if os.path.isfile(here) else ""

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": moved(state_dict.get("best_model_path", "")),
                "kth_best_model_path": moved(state_dict.get("kth_best_model_path", "")),
                "last_model_path": moved(state_dict.get("last_model_path", "")),
                "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items() if moved(k)},
            }
        super().load_state_dict(state_dict)


class RngState(pl.Callback):
    """Saves the global RNG states (torch, NumPy, Python) in every checkpoint and restores them on resume, so that
    a resumed run draws what the uninterrupted run draws (dropout, augmentation)."""

    def state_dict(self) -> dict[str, Any]:
        # Tensors, tuples and ints only: checkpoints must load with torch.load(weights_only=True).
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": (torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        key, *rest = state_dict["numpy"]
        np.random.set_state(("MT19937", key.numpy().astype(np.uint32), *rest))
        random.setstate(state_dict["python"])


def _rate(images: int, seconds: float) -> float | None:
    return round(images / seconds, 1) if seconds > 0 else None


def process_age_s() -> float | None:
    """Seconds since this process started, from Linux's /proc (None elsewhere)."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in clock ticks after boot
        return round(float(Path("/proc/uptime").read_text().split()[0]) - started, 2)
    except (OSError, ValueError, IndexError):
        return None
