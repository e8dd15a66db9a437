"""How a text backbone's inputs are prepared: its tokenizer (a Hugging Face fast tokenizer, saved whole in
checkpoints) and a maximum length; batches are padded to their longest text, not to the maximum."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch

from transferlab.batches import Batch


@dataclass(frozen=True)
class Tokenize:
    """One text -> its token ids (special tokens added, truncated to ``max_length``). A picklable callable, for
    DataLoader workers; its repr (the feature cache's key) names the tokenizer by hash."""

    tokenizer_json: str = field(repr=False)
    max_length: int
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.blake2b(self.tokenizer_json.encode(), digest_size=8).hexdigest())

    @cached_property
    def _tokenizer(self):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.tokenizer_json)
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)
        return tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def many(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of ``texts``, encoded in one call (in parallel, by the tokenizers library)."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer_json": self.tokenizer_json, "max_length": self.max_length, "digest": self.digest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)


@dataclass(frozen=True)
class TextInputs:
    """A text backbone's preparation: ``tokenizer_json`` (a ``tokenizers`` fast tokenizer as JSON) and
    ``max_length`` tokens. ``state()`` is what checkpoints save, so eval and predict need no tokenizer files."""

    tokenizer_json: str = field(repr=False)
    max_length: int = 128
    pad_id: int = 0
    kind: ClassVar[str] = "text"

    def transform(self, augment: str, train: bool) -> Tokenize:
        """A text -> its token ids (there is no text augmentation: ``augment`` is ``none``)."""
        return Tokenize(self.tokenizer_json, self.max_length)

    def collate(self, items: Sequence[Batch]) -> Batch:
        """Token id lists padded to the batch's longest, with their attention mask."""
        longest = max(len(item.inputs) for item in items)
        ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            ids[row, : len(item.inputs)] = torch.tensor(item.inputs, dtype=torch.long)
            mask[row, : len(item.inputs)] = 1
        target = torch.tensor([int(item.target) for item in items], dtype=torch.long)
        return Batch({"input_ids": ids, "attention_mask": mask}, target)

    def prepare(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return inputs

    def concat(self, parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batches as one, padded to the longest (source and target texts through the encoder together)."""
        longest = max(part["input_ids"].shape[1] for part in parts)

        def padded(tensor: torch.Tensor, value: int) -> torch.Tensor:
            return torch.nn.functional.pad(tensor, (0, longest - tensor.shape[1]), value=value)

        return {
            "input_ids": torch.cat([padded(p["input_ids"], self.pad_id) for p in parts]),
            "attention_mask": torch.cat([padded(p["attention_mask"], 0) for p in parts]),
        }

    def example(self) -> dict[str, torch.Tensor]:
        """One empty text (its special tokens only): what a dry forward measures the feature width with."""
        return self.collate([Batch(self.transform("none", False)(""), 0)]).inputs

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "tokenizer_json": self.tokenizer_json, "max_length": self.max_length,
                "pad_id": self.pad_id}  # fmt: skip
