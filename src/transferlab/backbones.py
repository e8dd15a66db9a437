"""Backbones: any timm model by name, or any ``nn.Module`` a user builds, without its classifier."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from transferlab.data.transforms import DEFAULT_DATA_CONFIG
from transferlab.errors import ConfigError
from transferlab.layer_groups import LayerGroup
from transferlab.layer_groups import layer_groups as layer_groups_of

log = logging.getLogger(__name__)

# The old classifier's names in timm models and checkpoints from the wild; dropped when loading weights.
CLASSIFIER_NAMES = ("fc", "head", "classifier", "linear", "last_linear", "head.fc")


@dataclass
class Backbone:
    """A feature extractor (images -> pooled features) with what transfer decisions need to know about it."""

    model: nn.Module
    num_features: int
    data_config: dict[str, Any]
    layer_groups: list[LayerGroup]
    weights_report: str | None = None


def create_backbone(
    name: str | None = None,
    *,
    model: nn.Module | None = None,
    pretrained: bool = False,
    weights: str | None = None,
    weights_key: str | None = None,
    weights_prefix: str | None = None,
    weights_match: str = "name",
    strict: bool = False,
    layer_groups: list[str] | None = None,
    num_features: int | None = None,
    data_config: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Backbone:
    """Build a timm model by ``name`` (classifier removed), or wrap a user's ``model`` that returns features.

    ``weights`` loads a local file after creation (see :mod:`transferlab.weights`); ``layer_groups`` is an
    optional list of regexes, one per group, input to output.
    """
    if (name is None) == (model is None):
        raise ConfigError("backbone: give exactly one of backbone.name (a timm model) or backbone.model._target_")
    from transferlab.weights import load_weights, weights_file

    if weights:
        weights_file(weights)  # a missing file fails before a model is built
    if model is None:
        model = _create_timm_model(name, pretrained, model_kwargs or {})
        resolved = _timm_data_config(model)
        features = getattr(model, "head_hidden_size", None) or model.num_features
    else:
        if pretrained:
            raise ConfigError("backbone.pretrained=true needs a timm backbone.name; use backbone.weights=PATH")
        resolved = dict(DEFAULT_DATA_CONFIG)
        features = None
    if data_config:
        resolved.update({k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()})
    if num_features is None:
        num_features = features or _dry_forward_features(model, resolved["input_size"])

    report = None
    if weights:
        classifier = [name for name in CLASSIFIER_NAMES if not _has_submodule(model, name)]
        result = load_weights(
            model,
            weights,
            key=weights_key,
            prefix=weights_prefix,
            strict=strict,
            classifier=classifier,
            match=weights_match,
        )
        report = result.line()
        log.info(report)
    return Backbone(model, int(num_features), resolved, layer_groups_of(model, layer_groups), report)


def _create_timm_model(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm
    from timm.models import split_model_name_tag

    arch, _ = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for names"
        raise ConfigError(f"backbone.name={name}: unknown timm model; {hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except (OSError, ConnectionError) as e:
        if not pretrained:
            raise
        # huggingface_hub raises OSError subclasses (LocalEntryNotFoundError) when offline or unreachable.
        raise ConfigError(
            f"backbone.pretrained=true: could not download weights for {name} ({type(e).__name__}); offline? "
            "set backbone.weights=PATH to a local file or backbone.pretrained=false"
        ) from e


def _timm_data_config(model: nn.Module) -> dict[str, Any]:
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct")
    return {k: tuple(cfg[k]) if isinstance(cfg[k], (list, tuple)) else cfg[k] for k in keys}


def _dry_forward_features(model: nn.Module, input_size: tuple[int, ...]) -> int:
    was_training = model.training
    model.eval()  # keep BatchNorm statistics untouched
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_size))
    except Exception as e:
        raise ConfigError(
            f"backbone: a dry forward at input size {tuple(input_size)} failed ({type(e).__name__}: {e}); "
            "set backbone.data_config.input_size or backbone.num_features"
        ) from e
    finally:
        model.train(was_training)
    if out.ndim != 2:
        raise ConfigError(
            f"backbone: the model returns shape {tuple(out.shape)}, not (batch, features); make it pool its output"
        )
    return out.shape[1]


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        sub = model.get_submodule(name)
    except AttributeError:
        return False
    return any(True for _ in sub.parameters())
