"""Load a backbone's weights from a local file: torch checkpoints, safetensors, Lightning checkpoints.

``read_state_dict`` turns a file into a flat ``{name: tensor}`` dict; ``load_weights`` fits those names to a
model (prefix surgery, the old classifier dropped, shape mismatches skipped) and returns a ``LoadReport``
whose ``line()`` the caller logs. Every user mistake is a one-line ``ConfigError`` that names the
``backbone.weights*`` option to change.

Which tensors count: a BatchNorm ``num_batches_tracked`` counter that the file lacks (old or third-party
checkpoints) is neither missing nor counted in the total: PyTorch keeps the module's own counter, and it
only matters for ``momentum=None``.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transferlab.errors import ConfigError

__all__ = ["LoadReport", "STATE_DICT_KEYS", "STRIP_PREFIXES", "weights_file", "read_state_dict", "load_weights"]

# Where checkpoints keep the weights, tried in this order when backbone.weights_key is not given:
# plain/Lightning/timm-train ("state_dict"), DeiT/MAE/many repos ("model"), common training loops
# ("model_state_dict"), some DataParallel saves ("module"), a timm EMA-only save ("state_dict_ema").
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "state_dict_ema")

# Leading key prefixes stripped automatically when that makes more keys fit the model:
# DataParallel/DDP ("module."), a transferlab Lightning checkpoint ("backbone."), self-supervised and
# wrapper checkpoints ("encoder.", "model.").
STRIP_PREFIXES = ("module.", "backbone.", "encoder.", "model.")

_COUNTER = "num_batches_tracked"
_FEW = 4  # list names in report lines only up to this many


def _names(keys: Sequence[str], few: int = _FEW) -> str:
    return f" ({', '.join(keys)})" if 0 < len(keys) <= few else ""


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


@dataclass(frozen=True)
class LoadReport:
    """What ``load_weights`` did; ``total`` = matched + missing + mismatched model tensors."""

    path: str
    matched: int  # tensors loaded into the model
    missing: list[str]  # model keys that got nothing from the file
    unexpected: list[str]  # file keys that fit no model key (after prefix handling), classifier keys excluded
    dropped: list[str]  # the old classifier's keys, dropped on purpose
    mismatched: list[str]  # same name, different shape (not loaded)

    @property
    def total(self) -> int:
        return self.matched + len(self.missing) + len(self.mismatched)

    def line(self) -> str:
        return (
            f"weights {self.path}: {self.matched}/{self.total} model tensors loaded; "
            f"{len(self.missing)} missing{_names(self.missing)}, "
            f"{len(self.unexpected)} unexpected{_names(self.unexpected)}, "
            f"{_plural(len(self.mismatched), 'shape mismatch', 'shape mismatches')}"
            f"{_names(self.mismatched)}, "
            f"{_plural(len(self.dropped), 'classifier tensor')} dropped{_names(self.dropped)}"
        )


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


def _strip(keys: Sequence[str], prefix: str) -> list[str]:
    return [k[len(prefix) :] if k.startswith(prefix) else k for k in keys]


def _auto_strip(keys: list[str], model_keys: set[str]) -> list[str]:
    """Strip leading STRIP_PREFIXES, greedily, while that makes more keys match the model's."""
    best = sum(k in model_keys for k in keys)
    while True:
        options = [_strip(keys, p) for p in STRIP_PREFIXES if any(k.startswith(p) for k in keys)]
        scored = [(sum(k in model_keys for k in opt), opt) for opt in options]
        if not scored:
            return keys
        score, opt = max(scored, key=lambda s: s[0])  # ties: the first prefix in STRIP_PREFIXES
        if score <= best:
            return keys
        best, keys = score, opt


def _is_classifier(key: str, classifier: Sequence[str]) -> bool:
    return any(key == c or key.startswith(c.rstrip(".") + ".") for c in classifier if c)


def _model_names(raw: list[str], prefix: str | None, model_keys: set[str], shown: str) -> list[str | None]:
    """The model key each file key maps to after prefix surgery (None: it lacks ``prefix``)."""
    if not prefix:
        return list(_auto_strip(raw, model_keys))
    pre = prefix if prefix.endswith(".") else prefix + "."
    if not any(k.startswith(pre) for k in raw):
        raise ConfigError(
            f"backbone.weights_prefix={prefix!r}: no key in {shown} starts with {pre!r} (file keys look "
            f"like {raw[0]!r}); set backbone.weights_prefix to a prefix they have, or to null to "
            "auto-detect"
        )
    return [k[len(pre) :] if k.startswith(pre) else None for k in raw]


def _sort_tensors(
    state: Mapping[str, torch.Tensor],
    names: list[str | None],
    model_state: Mapping[str, torch.Tensor],
    classifier: Sequence[str],
) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[str]]:
    """The file's tensors as (fitting ones by model key, unexpected, dropped classifier, shape-mismatched keys)."""
    filtered: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    dropped: list[str] = []
    mismatched: list[str] = []
    for raw_key, name in zip(state, names, strict=True):
        if _is_classifier(raw_key, classifier) or (
            name is not None
            and (_is_classifier(name, classifier) or (name.startswith("head.") and name not in model_state))
        ):
            dropped.append(name if name is not None else raw_key)
        elif name is None or name not in model_state:
            unexpected.append(raw_key if name is None else name)
        elif state[raw_key].shape != model_state[name].shape:
            mismatched.append(name)
        else:
            filtered[name] = state[raw_key]
    return filtered, unexpected, dropped, mismatched


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    key: str | None = None,
    prefix: str | None = None,
    strict: bool = False,
    classifier: Sequence[str] = (),
) -> LoadReport:
    """Load the tensors of ``path`` that fit ``model`` and report what happened.

    Key surgery: with ``prefix`` ("backbone" or "backbone.") exactly that prefix is stripped and keys without
    it are unexpected; otherwise ``STRIP_PREFIXES`` are stripped while that makes more keys fit the model.
    Keys named by ``classifier`` (names or module prefixes such as ``"fc"``, ``"head.fc"``; checked before
    and after stripping), and keys starting with ``head.`` that fit no model key, are the old classifier:
    dropped and reported. Tensors whose shape differs from the model's are not loaded. Raises ConfigError
    when nothing fits, or with ``strict`` when anything is missing, unexpected or mismatched; in both cases
    the model is left unchanged.
    """
    shown = str(path)
    state = read_state_dict(path, key)
    model_state = model.state_dict()
    raw = list(state)
    names = _model_names(raw, prefix, set(model_state), shown)
    filtered, unexpected, dropped, mismatched = _sort_tensors(state, names, model_state, classifier)
    missing = [k for k in model_state if k not in filtered and k not in mismatched and k.rsplit(".", 1)[-1] != _COUNTER]
    report = LoadReport(shown, len(filtered), missing, unexpected, dropped, mismatched)

    if not any(k.rsplit(".", 1)[-1] != _COUNTER for k in filtered):  # BatchNorm counters alone are no weights
        file_like = raw[0] if raw else "none"
        model_like = next(iter(model_state), "none")
        raise ConfigError(
            f"backbone.weights={shown}: 0 of {len(raw)} tensors fit the model ({len(mismatched)} of another shape; "
            f"file keys look like "
            f"{file_like!r}, model keys like {model_like!r}); set backbone.weights_prefix / "
            "backbone.weights_key or use weights for this architecture"
        )
    if strict and (missing or unexpected or mismatched):
        raise ConfigError(
            f"backbone.weights={shown}: strict load failed: {len(missing)} missing{_names(missing, 3)}, "
            f"{len(unexpected)} unexpected{_names(unexpected, 3)}, "
            f"{_plural(len(mismatched), 'shape mismatch', 'shape mismatches')}{_names(mismatched, 3)}; "
            "set backbone.strict=false to load what fits"
        )
    model.load_state_dict(filtered, strict=False)
    return report
