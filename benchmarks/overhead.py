"""Framework overhead: per-epoch time of a transferlab run against a plain PyTorch loop doing the same work, and
start-up time (process start to first training step) against importing torch, timm and Lightning alone.

Epoch time: resnet18 (random init) fine-tuned on ../shared/data/hymenoptera at 224 px, light augmentation, batch
32, 2 loader workers, fp32, AdamW, on the CPU. Both sides use the same datasets (transferlab's data module builds
them) and DataLoader settings; each epoch trains, validates and saves a checkpoint (the plain loop: model and
optimizer state; transferlab: its last and, when val/acc improves, best checkpoints). An epoch is measured from
one epoch's start to the next (to the end of training for the last), so checkpointing and validation count, and
split into the train loop, validation and the rest (checkpoints, callbacks). The first epoch of each run (worker
start-up, allocator warm-up) is left out. Each round runs the plain loop and then transferlab, and its ratio is
the sum of transferlab's epochs over the plain loop's; the figure is the median of the rounds' ratios, so that a
shared machine's drift from round to round (seen here: +-15%) hits both sides of one ratio alike.

Start-up: `transferlab-train` on digits with a tiny timm model reports the seconds from its process start to the
first training step (summary.json timings.startup_s); the reference is a process that imports torch, timm and
pytorch_lightning (the `lightning` package is not installed here; pytorch_lightning is what transferlab uses),
timed from its start to the end of the imports on the same clock.
Usage:
  python benchmarks/overhead.py [--shared ../shared/data] [--rounds 4] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.utils.data import DataLoader

from transferlab.cli import conf_dir, instantiate
from transferlab.data.target import split_options
from transferlab.train import train

MARKS: list[tuple[str, float]] = []


class EpochClock(pl.Callback):
    """Wall clock at every epoch start, validation start and end, and at the end of training."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        MARKS.append(("start", time.perf_counter()))

    def on_validation_start(self, trainer, pl_module) -> None:
        MARKS.append(("val_start", time.perf_counter()))

    def on_validation_end(self, trainer, pl_module) -> None:
        MARKS.append(("val_end", time.perf_counter()))

    def on_train_end(self, trainer, pl_module) -> None:
        MARKS.append(("start", time.perf_counter()))


class Epoch(NamedTuple):
    total: float
    train: float  # the train loop: loading, forward, backward, optimizer steps
    val: float

    @property
    def rest(self) -> float:  # checkpoints, callbacks, hooks
        return self.total - self.train - self.val

    def __str__(self) -> str:
        return f"{self.total:.2f} ({self.train:.2f}+{self.val:.2f}+{self.rest:.2f})"


def config(shared: Path, epochs: int, out: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "backbone.name=resnet18",
                "data=folder",
                f"data.root={shared / 'hymenoptera'}",
                "data.input_size=224",
                "data.augment=light",
                "data.batch_size=32",
                "data.num_workers=2",
                "data.feature_cache=null",
                "lr_scheduler=constant",
                "trainer.accelerator=cpu",
                "trainer.devices=1",
                "trainer.precision=32-true",
                f"trainer.max_epochs={epochs}",
                "logger=none",
                "test=false",
                f"paths.output_dir={out}",
            ],
        )
    with open_dict(cfg):
        cfg.callbacks.clock = {"_target_": f"{__name__}.EpochClock"}
    return cfg


def transferlab_epochs(cfg) -> list[Epoch]:
    MARKS.clear()
    summary = train(cfg)
    assert summary["status"] == "completed", summary.get("error")
    times = dict.fromkeys(("start", "val_start", "val_end"))
    epochs = []
    for kind, t in MARKS:
        if kind == "start" and times["start"] is not None:
            train_end = times["val_start"]
            epochs.append(Epoch(t - times["start"], train_end - times["start"], times["val_end"] - train_end))
        times[kind] = t
    return epochs


def plain_epochs(cfg, out: Path) -> list[Epoch]:
    """The loop a user would write by hand for the same run."""
    torch.manual_seed(cfg.seed)
    backbone = instantiate(cfg.backbone)  # the same timm model: resnet18 without its classifier
    options, _, _ = split_options(OmegaConf.to_container(cfg.data, resolve=True))
    data = instantiate(options, inputs=backbone.inputs)
    model = nn.Sequential(backbone.model, nn.Linear(backbone.num_features, data.num_classes))
    # No weight decay on biases and norm weights, as transferlab's groups (timm's rule).
    groups = param_groups_weight_decay(model, cfg.optimizer.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    train_set, val_set = data.datasets["train"], data.datasets["val"]
    batch, workers = cfg.data.batch_size, cfg.data.num_workers
    loader_options = {"num_workers": workers, "persistent_workers": workers > 0}
    train_loader = DataLoader(train_set, batch, shuffle=True, drop_last=len(train_set) % batch == 1, **loader_options)
    val_loader = DataLoader(val_set, batch, **loader_options)
    out.mkdir(parents=True, exist_ok=True)
    times = []
    for _ in range(cfg.trainer.max_epochs):
        start = time.perf_counter()
        model.train()
        correct = seen = 0
        for images, labels in train_loader:
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        train_end = time.perf_counter()
        model.eval()
        val_correct = val_loss = 0.0
        with torch.no_grad():
            for images, labels in val_loader:
                logits = model(images)
                val_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
                val_correct += int((logits.argmax(1) == labels).sum())
        val_end = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out / "last.pt")
        times.append(Epoch(time.perf_counter() - start, train_end - start, val_end - train_end))
    return times


def startup(repeats: int, work: Path) -> tuple[float, float]:
    env = {**os.environ, "TRANSFERLAB_CACHE_DIR": str(work / "cache")}
    imports, starts = [], []
    # Both from process start, on the same clock (/proc), so neither pays for interpreter exit.
    reference = (
        "import torch, timm, pytorch_lightning; from transferlab.callbacks import process_age_s; print(process_age_s())"
    )
    for i in range(repeats):
        done = subprocess.run([sys.executable, "-c", reference], check=True, capture_output=True, text=True)
        imports.append(float(done.stdout.split()[-1]))
        run_dir = work / f"startup{i}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "transferlab.train",
                "backbone.name=test_resnet",
                "data.classes=[0,1,2]",
                "trainer.max_epochs=1",
                "trainer.accelerator=cpu",
                "logger=none",
                f"hydra.run.dir={run_dir}",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        starts.append(json.loads((run_dir / "summary.json").read_text())["timings"]["startup_s"])
        print(f"  import {imports[-1]:.2f} s, transferlab-train to first step {starts[-1]:.2f} s")
    return statistics.median(imports), statistics.median(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--startup-repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="transferlab-overhead-"))

    print("epoch seconds: total (train loop + validation + rest)")
    plain: list[Epoch] = []
    ours: list[Epoch] = []
    ratios = []
    for r in range(args.rounds):
        cfg = config(args.shared, args.epochs, work / f"transferlab{r}")
        p = plain_epochs(cfg, work / f"plain{r}")[1:]
        t = transferlab_epochs(cfg)[1:]
        ratios.append(sum(e.total for e in t) / sum(e.total for e in p))
        print(f"round {r + 1}: plain {' '.join(map(str, p))} | transferlab {' '.join(map(str, t))} | {ratios[-1]:.3f}")
        plain += p
        ours += t
    for name, epochs in (("plain", plain), ("transferlab", ours)):
        parts = [statistics.median(getattr(e, part) for e in epochs) for part in ("total", "train", "val", "rest")]
        print(
            f"median {name} epoch: {parts[0]:.2f} s (train loop {parts[1]:.2f}, val {parts[2]:.2f}, rest {parts[3]:.2f})"
        )
    epoch_ratio = statistics.median(ratios)
    print(f"round ratios: {' '.join(f'{x:.3f}' for x in ratios)}")

    print("start-up:")
    import_s, startup_s = startup(args.startup_repeats, work)
    print(f"median: import {import_s:.2f} s, transferlab-train to first step {startup_s:.2f} s")
    print(f"\nstart-up / import: {startup_s / import_s:.3f}")
    print(f"epoch time transferlab / plain loop: {epoch_ratio:.3f}")


if __name__ == "__main__":
    main()
