"""The training order: a shuffle drawn from the run's seed and the epoch alone."""

from __future__ import annotations

import os

import torch
from torch.utils.data import RandomSampler


class EpochShuffle(RandomSampler):
    """A shuffle drawn from the run's seed and the epoch alone, as DistributedSampler's: a run resumed at epoch k
    sees the order that the uninterrupted run saw, and draws nothing from the global RNG (dropout, augmentation).
    Lightning calls ``set_epoch`` at every epoch start; under DDP it swaps this for a DistributedSampler seeded
    alike."""

    def __init__(self, data_source):
        super().__init__(data_source, generator=torch.Generator())
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by pl.seed_everything (cfg.seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed + epoch)

    def __iter__(self):
        # Seeded again where the order is drawn: every iterator created draws a worker seed from this generator
        # first, and Lightning creates one more in an epoch where it reloads the loaders (a phase switch).
        self.generator.manual_seed(self.seed + self.epoch)
        yield from super().__iter__()
