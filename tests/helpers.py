"""Test-only Lightning callbacks, added to runs through config (+callbacks.NAME._target_=helpers.X)."""

import pytorch_lightning as pl


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
