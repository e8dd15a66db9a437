"""How an image backbone's inputs are prepared: timm's data config for the transforms, and the memory format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from transferlab.data.transforms import DEFAULT_DATA_CONFIG, build_transform, resolve_data_config


@dataclass(frozen=True)
class ImageInputs:
    """An image backbone's preparation: ``data_config`` (timm's: input size, interpolation, mean, std, crop_pct)
    builds the transforms; ``channels_last`` hands the backbone NHWC tensors (its weights were converted too).
    ``state()`` is what checkpoints save and :func:`transferlab.backbones.inputs_from_state` reads back."""

    data_config: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_DATA_CONFIG))
    channels_last: bool = False
    kind: ClassVar[str] = "image"
    collate: ClassVar[Callable | None] = None  # DataLoader's default collation stacks the image tensors

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_config", resolve_data_config(self.data_config))

    def transform(self, augment: str, train: bool) -> Callable:
        """RGB PIL image -> normalised (C, H, W) tensor; ``augment`` applies to training only."""
        return build_transform(self.data_config, augment, train)

    def override(
        self, input_size: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> ImageInputs:
        """These inputs with the ``data.input_size``, ``data.mean`` and ``data.std`` a run sets."""
        return replace(self, data_config=resolve_data_config(self.data_config, input_size, mean, std))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """A collated batch as the backbone takes it."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def concat(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Batches of inputs as one (source and target images through the backbone together)."""
        return torch.cat(list(parts))

    def example(self) -> torch.Tensor:
        """One blank input: what a dry forward measures the feature width with."""
        return torch.zeros(1, *self.data_config["input_size"])

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "data_config": dict(self.data_config), "channels_last": self.channels_last}
