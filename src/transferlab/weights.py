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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from transferlab.errors import ConfigError
from transferlab.weight_files import STATE_DICT_KEYS, read_state_dict, weights_file

__all__ = [
    "LoadReport",
    "STATE_DICT_KEYS",
    "STRIP_PREFIXES",
    "weights_file",
    "read_state_dict",
    "load_weights",
    "pair_by_order",
]


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
    by_order: bool = False  # paired with the model's tensors by position (backbone.weights_match=order)

    @property
    def total(self) -> int:
        return self.matched + len(self.missing) + len(self.mismatched)

    def line(self) -> str:
        return (
            f"weights {self.path}{' (matched by order)' if self.by_order else ''}: "
            f"{self.matched}/{self.total} model tensors loaded; "
            f"{len(self.missing)} missing{_names(self.missing)}, "
            f"{len(self.unexpected)} unexpected{_names(self.unexpected)}, "
            f"{_plural(len(self.mismatched), 'shape mismatch', 'shape mismatches')}"
            f"{_names(self.mismatched)}, "
            f"{_plural(len(self.dropped), 'classifier tensor')} dropped{_names(self.dropped)}"
        )


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


WEIGHTS_MATCH = ("name", "order")


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    key: str | None = None,
    prefix: str | None = None,
    strict: bool = False,
    classifier: Sequence[str] = (),
    match: str = "name",
) -> LoadReport:
    """Load the tensors of ``path`` that fit ``model`` and report what happened.

    Key surgery: with ``prefix`` ("backbone" or "backbone.") exactly that prefix is stripped and keys without
    it are unexpected; otherwise ``STRIP_PREFIXES`` are stripped while that makes more keys fit the model.
    Keys named by ``classifier`` (names or module prefixes such as ``"fc"``, ``"head.fc"``; checked before
    and after stripping), and keys starting with ``head.`` that fit no model key, are the old classifier:
    dropped and reported. Tensors whose shape differs from the model's are not loaded. Raises ConfigError
    when nothing fits, or with ``strict`` when anything is missing, unexpected or mismatched; in both cases
    the model is left unchanged. ``match="order"`` pairs tensors by position instead (see :func:`pair_by_order`).
    """
    if match not in WEIGHTS_MATCH:
        raise ConfigError(f"backbone.weights_match={match}: choose one of {', '.join(WEIGHTS_MATCH)}")
    shown = str(path)
    state = read_state_dict(path, key)
    model_state = model.state_dict()
    if match == "order":
        filtered, dropped = pair_by_order(state, model_state, shown)
        model.load_state_dict(filtered, strict=False)
        missing = [k for k in model_state if k not in filtered and k.rsplit(".", 1)[-1] != _COUNTER]
        return LoadReport(shown, len(filtered), missing, [], dropped, [], by_order=True)
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
            f"file keys look like {file_like!r}, model keys like {model_like!r}); set backbone.weights_prefix / "
            "backbone.weights_key, backbone.weights_match=order for another implementation of the same "
            "architecture, or use weights for this architecture"
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


def pair_by_order(
    state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], shown: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The file's tensors under the model's names, paired by position (parameters and BatchNorm buffers, as both
    list them), for a checkpoint of another implementation of the same architecture (other names, same order).

    BatchNorm counters are paired only when both sides have them. Tensors the file has beyond the model's, at
    its end, are the old classifier when they look like one (a weight of shape (classes, features) and its bias
    of (classes,)): dropped and returned. Any pair of different shapes, a file with fewer tensors than the model,
    or a surplus that is not a classifier (a deeper model's blocks) is a ConfigError."""

    def tensors(names: Sequence[str], counters: bool) -> list[str]:
        return [k for k in names if counters or k.rsplit(".", 1)[-1] != _COUNTER]

    counters = any(k.rsplit(".", 1)[-1] == _COUNTER for k in state) and any(
        k.rsplit(".", 1)[-1] == _COUNTER for k in model_state
    )
    ours, theirs = tensors(list(model_state), counters), tensors(list(state), counters)
    if len(theirs) < len(ours):
        raise ConfigError(
            f"backbone.weights={shown}: backbone.weights_match=order needs a tensor for each of the model's "
            f"{len(ours)}, the file has {len(theirs)}; use a checkpoint of this architecture"
        )
    for i, (mine, other) in enumerate(zip(ours, theirs)):
        if tuple(model_state[mine].shape) != tuple(state[other].shape):
            raise ConfigError(
                f"backbone.weights={shown}: backbone.weights_match=order: tensor {i} of the file ({other}, "
                f"{tuple(state[other].shape)}) does not fit the model's ({mine}, {tuple(model_state[mine].shape)}); "
                "the file is of another architecture or lists its tensors in another order"
            )
    surplus = theirs[len(ours) :]
    if surplus and not _looks_like_classifier([tuple(state[k].shape) for k in surplus]):
        raise ConfigError(
            f"backbone.weights={shown}: backbone.weights_match=order: the file has {len(surplus)} tensors beyond the "
            f"model's {len(ours)}, from {surplus[0]} ({tuple(state[surplus[0]].shape)}) on, and they are not a "
            "classifier (a weight and its bias); the file is of a deeper or another architecture"
        )
    return {mine: state[other] for mine, other in zip(ours, theirs)}, surplus


def _looks_like_classifier(shapes: list[tuple[int, ...]]) -> bool:
    """A (classes, features) weight and its (classes,) bias: what a checkpoint's old classifier looks like."""
    return len(shapes) == 2 and len(shapes[0]) == 2 and shapes[1] == (shapes[0][0],)
