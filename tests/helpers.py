"""What the tests share: the tiny run's overrides, config composition, CLI runs, reading run folders and W&B
logs, test-only Lightning callbacks (added to runs through config: +callbacks.NAME._target_=helpers.X), and
scikit-learn's linear probe for parity checks."""

import contextlib
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from transferlab.cli import conf_dir

BIN = Path(sys.executable).parent  # the console scripts of this environment
# A run small enough for a unit test: a 0.4M-parameter timm test model, 3 digit classes at 32 px, one epoch.
TINY = [
    "backbone.name=test_resnet",
    "data.classes=[0,1,2]",
    "data.input_size=32",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "logger=none",
]


def compose_config(*overrides: str, config_name: str = "train"):
    """Compose a config as the CLI would (real Hydra); pass paths.output_dir, which the CLI takes from Hydra."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def run_cli(command: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """Run a console script of this environment (transferlab-train, -eval, -predict, -report) with ``args``;
    the result has its exit code and its stdout and stderr as text."""
    return subprocess.run([BIN / command, *map(str, args)], capture_output=True, text=True, **kwargs)


def read_summary(run: Path) -> dict:
    """A run folder's summary.json."""
    return json.loads((run / "summary.json").read_text())


def completed(summary: dict) -> bool:
    """Whether the run folder of ``summary`` (what an in-process train() returned) says on disk that it completed."""
    return read_summary(Path(summary["run_dir"]))["status"] == "completed"


def checkpoint_state(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def initial_backbone(cfg) -> dict[str, torch.Tensor]:
    """The backbone's tensors as a run of ``cfg`` starts (its seed), keyed as in the model's state dict."""
    from hydra.utils import instantiate

    torch.manual_seed(cfg.seed)
    return {k: v.clone() for k, v in instantiate(cfg.backbone).model.state_dict().items()}


# --- W&B's offline log ---------------------------------------------------------------------------------


def read_records(path: Path):
    """Decode a .wandb file: wandb's LevelDB-style log (7-byte file header, 32 KiB blocks, 7-byte chunk
    headers: crc32, length, type) of ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: one whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def run_records(job_dir: Path) -> dict:
    (log,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = {"config": {}, "summary": {}, "history_keys": set(), "files": []}
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["name"], out["id"] = record.run.run_group, record.run.display_name, record.run.run_id
        elif kind == "config":
            out["config"].update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            out["summary"].update({_key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "history":
            out["history_keys"].update(_key(item) for item in record.history.item)
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


# --- callbacks ------------------------------------------------------------------------------------------


class StopAfterEpoch(pl.Callback):
    """Ends fit after ``epoch`` as a preemption would, once that epoch's checkpoints are written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class RecordLr(pl.Callback):
    """Writes [global step, epoch, {group name: [layer group, lr, weight decay]}] at each optimizer step to a JSON
    file."""

    def __init__(self, path: str):
        self.path, self.rows = path, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        groups = {g["name"]: [g["layer_group"], g["lr"], g["weight_decay"]] for g in optimizer.param_groups}
        self.rows.append([trainer.global_step, trainer.current_epoch, groups])

    def on_train_end(self, trainer, pl_module):
        import json

        with open(self.path, "w") as f:
            json.dump(self.rows, f)


class SaveEpochWeights(pl.Callback):
    """Saves every rank's weights at each epoch end to <dirpath>/rank<r>_epoch<e>.pt (to compare ranks)."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_epoch_end(self, trainer, pl_module):
        import os

        import torch

        os.makedirs(self.dirpath, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, f"{self.dirpath}/rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt")


class CheckGradsAtPhaseStart(pl.Callback):
    """Fails the run if any gradient is pending when an epoch (and so possibly a phase) starts."""

    def on_train_epoch_start(self, trainer, pl_module):
        pending = [n for n, p in pl_module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert not pending, f"gradients carried into epoch {trainer.current_epoch}: {pending[:3]}"


class SlowEpochs(pl.Callback):
    """Sleeps ``seconds`` after every training epoch: a tiny run lasts long enough for a test to interrupt it."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module):
        import time

        time.sleep(self.seconds)


def sklearn_probe(train_x, train_y, val_x):
    """scikit-learn's LogisticRegression, C chosen by the same 5 stratified folds of the train split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from transferlab.probe import C_GRID

    search = GridSearchCV(
        LogisticRegression(max_iter=10000, tol=1e-6),
        {"C": list(C_GRID)},
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        scoring="accuracy",
    )
    return search.fit(train_x, train_y).predict(val_x)


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``folder`` (``options``: ``size=64k``, ``size=1m,ro``): a full or read-only disk.
    Where none can be mounted (not root), the test is skipped."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False, capture_output=True)


# A user's own network in a file of its own (netfile.py): edited between runs, it must change the feature cache's key.
NETWORK = """
from torch import nn

SCALE = {scale}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, {width}, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3)) * SCALE
"""


def custom_network_run(
    code: Path, cache: Path, run: Path, scale: str, width: int = 8, timeout: float = 600
) -> subprocess.CompletedProcess:
    """A frozen TINY run of ``code``/netfile.py (written here: features x ``scale``, ``width`` of them), its
    features cached in ``cache``; 5 examples a class, as the exact probe on features of 1e6 converges slowly."""
    (code / "netfile.py").write_text(NETWORK.format(scale=scale, width=width))
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    overrides = ["backbone=custom", "backbone.name=null", "backbone.model._target_=netfile.Net",
                 "backbone.data_config.input_size=[3,32,32]", "schedule=frozen", "test=false",
                 "data.samples_per_class=5", f"data.feature_cache={cache}", f"hydra.run.dir={run}"]  # fmt: skip
    return run_cli("transferlab-train", *TINY, *overrides, env=env, timeout=timeout)
