"""The training order: shuffles drawn from the run's seed and the epoch alone."""

from __future__ import annotations

import os

import torch
from torch.utils.data import RandomSampler, Sampler


def _run_seed() -> int:
    return int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by pl.seed_everything (cfg.seed)


class EpochShuffle(RandomSampler):
    """A shuffle drawn from the run's seed and the epoch alone, as DistributedSampler's: a run resumed at epoch k
    sees the order that the uninterrupted run saw, and draws nothing from the global RNG (dropout, augmentation).
    Lightning calls ``set_epoch`` at every epoch start; under DDP it swaps this for a DistributedSampler seeded
    alike."""

    def __init__(self, data_source):
        super().__init__(data_source, generator=torch.Generator())
        self.seed = _run_seed()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed + epoch)

    def __iter__(self):
        # Seeded again where the order is drawn: every iterator created draws a worker seed from this generator
        # first, and Lightning creates one more in an epoch where it reloads the loaders (a phase switch).
        self.generator.manual_seed(self.seed + self.epoch)
        yield from super().__iter__()


class CycleShuffle(Sampler[int]):
    """``num_samples`` indices an epoch, from shuffles of the whole data set one after another: the target images
    drawn beside each epoch's source images. Seeded by the run's seed, the epoch and a stream of its own, so its
    order is not the source's (a target made of the source's images, as digits-M is, must not come paired with
    them). Not a RandomSampler: under DDP Lightning wraps it in a DistributedSamplerWrapper, which keeps it."""

    STREAM = 1_000_003

    def __init__(self, data_source, num_samples: int):
        self.size, self.num_samples = len(data_source), int(num_samples)
        self.seed, self.epoch = _run_seed(), 0
        self.generator = torch.Generator()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        self.generator.manual_seed((self.seed + self.epoch) * self.STREAM + 1)
        rounds = -(-self.num_samples // self.size)
        order = torch.cat([torch.randperm(self.size, generator=self.generator) for _ in range(rounds)])
        yield from order[: self.num_samples].tolist()
