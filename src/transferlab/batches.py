"""What a batch is: raw inputs that the backbone prepares, or a frozen backbone's cached features; labels beside.

Both are NamedTuples, which DataLoader's collation and Lightning's device transfer keep. The module, phase
control, probe, cache and adaptation look at nothing in a batch but ``target`` and hand ``inputs`` to the backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch


class Batch(NamedTuple):
    """Inputs of the backbone's kind (an image tensor, a mapping of token tensors) and their class indices."""

    inputs: Any
    target: torch.Tensor | int


class FeatureBatch(NamedTuple):
    """A frozen backbone's features (cached) and their class indices: the module sends them to the head only."""

    features: torch.Tensor
    target: torch.Tensor | int


def batch_size(batch: Batch | FeatureBatch | Mapping[str, Batch | FeatureBatch]) -> int:
    """Examples in a batch; a mapping of batches (source and target domains) counts all of them."""
    if isinstance(batch, Mapping):
        return sum(len(part.target) for part in batch.values())
    return len(batch.target)
