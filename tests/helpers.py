"""Test-only Lightning callbacks, added to runs through config (+callbacks.NAME._target_=helpers.X)."""

import pytorch_lightning as pl


class StopAfterEpoch(pl.Callback):
    """Ends fit after ``epoch`` as a preemption would, once that epoch's checkpoints are written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True
