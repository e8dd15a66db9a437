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


class LengthGroupedShuffle(EpochShuffle):
    """EpochShuffle's order with examples of similar length batched together, as Hugging Face's
    ``group_by_length``: a batch of texts is padded to its longest, so on a CPU mixed lengths cost what the
    longest costs. Each run of ``MEGABATCH`` batches of the shuffle is sorted by length and cut into batches,
    and the full batches come in a shuffled order (the one short batch last, where DataLoader cuts it)."""

    MEGABATCH = 50

    def __init__(self, data_source, lengths, batch_size: int):
        super().__init__(data_source)
        self.lengths, self.batch_size = list(lengths), int(batch_size)

    def __iter__(self):
        order = list(super().__iter__())
        size, span = self.batch_size, self.batch_size * self.MEGABATCH
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            batches += [chunk[k : k + size] for k in range(0, len(chunk), size)]
        full = [b for b in batches if len(b) == size]
        for index in torch.randperm(len(full), generator=self.generator).tolist():
            yield from full[index]
        for batch in batches:
            if len(batch) < size:
                yield from batch


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
