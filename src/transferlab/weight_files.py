"""Weights files as flat ``{name: tensor}`` dicts: torch checkpoints (``weights_only=True``), safetensors, Lightning
checkpoints and checkpoints from the wild, with one-line errors naming the ``backbone.weights*`` option to change."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from transferlab.errors import ConfigError

# Where checkpoints keep the weights, tried in this order when backbone.weights_key is not given:
# plain/Lightning/timm-train ("state_dict"), DeiT/MAE/many repos ("model"), common training loops
# ("model_state_dict"), some DataParallel saves ("module"), a timm EMA-only save ("state_dict_ema").
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "state_dict_ema")


def _one_line(text: object, limit: int = 160) -> str:
    """The first sentence of an exception's message, on one line."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "").split(". ")[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _tensors(obj: object) -> dict[str, torch.Tensor] | None:
    """The tensor entries of a dict (non-tensor entries ignored), or None when it has none."""
    if not isinstance(obj, Mapping):
        return None
    found = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return found or None


def _top_keys(obj: Mapping) -> str:
    keys = [str(k) for k in obj]
    shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
    return shown or "none"


def _load_file(path: Path, shown: str) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise ConfigError(
                f"backbone.weights={shown}: not a readable safetensors file ({_one_line(err)}); "
                "give a valid .safetensors file"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it pickles {found.group(1)}" if found else _one_line(err)
        raise ConfigError(
            f"backbone.weights={shown}: cannot be loaded safely with torch.load(weights_only=True) ({what}); "
            "give a file of tensors only, e.g. re-save it with torch.save(model.state_dict(), ...)"
        ) from None
    except Exception as err:  # corrupt zip, truncated file, not a torch file at all
        raise ConfigError(
            f"backbone.weights={shown}: not a readable torch checkpoint ({type(err).__name__}: "
            f"{_one_line(err)}); give a .pth/.pt/.ckpt/.bin/.safetensors file of weights"
        ) from None


def _pick(obj: object, key: str | None, shown: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ConfigError(
            f"backbone.weights={shown}: holds a {type(obj).__name__}, not a dict of tensors; "
            "give a state dict or a checkpoint that contains one"
        )
    if key is not None:
        node: object = obj
        if key in obj:
            node = obj[key]
        else:
            for part in key.split("."):
                if not (isinstance(node, Mapping) and part in node):
                    raise ConfigError(
                        f"backbone.weights_key={key!r}: no such entry in {shown} (top-level keys: "
                        f"{_top_keys(obj)}); set backbone.weights_key to one of them, or to null to "
                        "auto-detect"
                    )
                node = node[part]
        found = _tensors(node)
        if found is None:
            raise ConfigError(
                f"backbone.weights_key={key!r}: the entry in {shown} holds no tensors; "
                "point backbone.weights_key at the dict of weights or set it to null to auto-detect"
            )
        return found
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    for name in STATE_DICT_KEYS:
        found = _tensors(obj.get(name))
        if found is not None:
            return found
    found = _tensors(obj)
    if found is not None:
        return found
    raise ConfigError(
        f"backbone.weights={shown}: no dict of tensors found (top-level keys: {_top_keys(obj)}); "
        "set backbone.weights_key to the entry that holds the weights (dotted paths allowed)"
    )


def weights_file(path: str | os.PathLike) -> Path:
    """The file ``backbone.weights`` names (``~`` expanded), or a one-line ConfigError."""
    file = Path(path).expanduser()
    if not file.exists():
        raise ConfigError(
            f"backbone.weights={path}: file not found; give an existing file or set backbone.weights=null"
        )
    if not file.is_file():
        raise ConfigError(f"backbone.weights={path}: is not a file; give the path of a weights file")
    return file


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` dict in a weights file, on the CPU.

    ``.safetensors`` files are read with safetensors, anything else with ``torch.load(weights_only=True)``.
    ``key`` selects a nested entry (dotted paths such as ``"model.ema"`` walk nested dicts); without it the
    file's dict is used when all its values are tensors, else the first entry of ``STATE_DICT_KEYS`` that
    holds tensors (a Lightning checkpoint's ``state_dict`` is found this way). Non-tensor entries are ignored.
    """
    return _pick(_load_file(weights_file(path), str(path)), key, str(path))
