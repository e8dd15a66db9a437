"""An exported model (``transferlab-export``): its file, the JSON beside it and the runtime that runs it.

The JSON (``<file>.json``) holds what a caller needs besides the weights: the input preparation (an image model's
timm data config; a text model's maximum length and padding id, its tokenizer in ``<file>.tokenizer.json``), the
class names and the parity check's figures. The model maps inputs to logits (batch, classes), softmax giving each
class's probability (a binary head's single logit is exported as two columns, 0 and the logit).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transferlab.backbones import Inputs, inputs_from_state
from transferlab.cli import first_line
from transferlab.errors import ConfigError

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}  # format -> the file's suffix
IMAGE_INPUTS = ("images",)
TEXT_INPUTS = ("input_ids", "attention_mask")


def info_path(model: Path) -> Path:
    return model.with_name(model.name + ".json")


def tokenizer_path(model: Path) -> Path:
    return model.with_name(model.name + ".tokenizer.json")


def input_names(kind: str) -> tuple[str, ...]:
    return TEXT_INPUTS if kind == "text" else IMAGE_INPUTS


@dataclass
class ExportedModel:
    """An exported file run by its runtime (onnxruntime for ONNX, ``torch.export.load`` for a .pt2), with the
    ``inputs`` preparation and ``class_names`` it was exported with."""

    path: Path
    info: dict[str, Any]
    inputs: Inputs
    class_names: list[str]
    run: Callable[[dict[str, Any]], torch.Tensor]

    def logits(self, inputs: Any) -> torch.Tensor:
        """Logits (batch, classes) of a collated batch's inputs (an image tensor; a text batch's dict)."""
        named = dict(inputs) if isinstance(inputs, dict) else {IMAGE_INPUTS[0]: inputs}
        return self.run(named)

    def probabilities(self, inputs: Any) -> torch.Tensor:
        return self.logits(inputs).float().softmax(dim=1)


def load_exported(model: str | Path, option: str = "model") -> ExportedModel:
    """The export at ``model`` (a .onnx or .pt2 file with its JSON beside it), or a one-line ConfigError."""
    path = Path(str(model)).expanduser()
    fix = "give a file written by transferlab-export (with its .json beside it)"
    if not path.is_file():
        raise ConfigError(f"{option}={model}: file not found; {fix}")
    try:
        info = json.loads(info_path(path).read_text())
        state = dict(info["inputs"])
        class_names = list(info["class_names"])
        fmt = info["format"]
        if state["kind"] == "text":
            state["tokenizer_json"] = tokenizer_path(path).read_text()
        inputs = inputs_from_state(state)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{option}={model}: its {info_path(path).name} is missing or damaged ({e}); {fix}") from None
    if fmt not in FORMATS:
        raise ConfigError(f"{option}={model}: its JSON names an unknown format {fmt!r}; {fix}")
    run = _onnx_runner(path, option) if fmt == "onnx" else _torch_export_runner(path, option)
    return ExportedModel(path, info, inputs, class_names, run)


def _onnx_runner(path: Path, option: str) -> Callable[[dict[str, Any]], torch.Tensor]:
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise ConfigError(f"{option}={path}: onnxruntime cannot load it ({first_line(e)})") from None

    def run(named: dict[str, Any]) -> torch.Tensor:
        feeds = {name: value.cpu().numpy() for name, value in named.items()}
        return torch.from_numpy(session.run(None, feeds)[0])

    return run


def _torch_export_runner(path: Path, option: str) -> Callable[[dict[str, Any]], torch.Tensor]:
    try:
        program = torch.export.load(str(path)).module()
    except Exception as e:
        raise ConfigError(f"{option}={path}: torch.export.load cannot read it ({first_line(e)})") from None

    def run(named: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return program(*named.values())

    return run
