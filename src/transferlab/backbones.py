"""Backbones: what turns a batch of inputs into pooled features, and knows how its inputs are prepared.

:class:`Backbone` is the interface every kind shares; :func:`create_backbone` makes an image backbone (any timm
model by name, or any ``nn.Module`` a user builds, without its classifier); :mod:`transferlab.text_backbones` makes
a text one. A new kind of backbone is a factory
returning a :class:`Backbone` with its own inputs object, registered in ``INPUT_KINDS``.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from transferlab.errors import ConfigError, check_bool
from transferlab.image_inputs import ImageInputs
from transferlab.layer_groups import LayerGroup
from transferlab.layer_groups import layer_groups as layer_groups_of
from transferlab.text_inputs import TextInputs

log = logging.getLogger(__name__)

# The old classifier's names in timm models and checkpoints from the wild; dropped when loading weights.
CLASSIFIER_NAMES = ("fc", "head", "classifier", "linear", "last_linear", "head.fc")


class Inputs(Protocol):
    """How a kind of backbone's inputs are prepared (images: :class:`~transferlab.image_inputs.ImageInputs`)."""

    kind: str
    collate: Any  # a DataLoader collate_fn, or None for the default

    def transform(self, augment: str, train: bool) -> Any: ...  # one raw example -> what collate takes
    def prepare(self, inputs: Any) -> Any: ...  # a collated batch's inputs -> what the model takes
    def concat(self, parts: list[Any]) -> Any: ...
    def example(self) -> Any: ...  # a batch of one blank input, for a dry forward
    def state(self) -> dict[str, Any]: ...  # saved in checkpoints; inputs_from_state reads it back


INPUT_KINDS: dict[str, Any] = {"image": ImageInputs, "text": TextInputs}


def inputs_from_state(state: dict[str, Any]) -> Inputs:
    """The inputs object a checkpoint saved (``Inputs.state()``)."""
    options = {k: v for k, v in state.items() if k != "kind"}
    return INPUT_KINDS[state["kind"]](**options)


@dataclass
class Backbone:
    """``model`` maps ``inputs.prepare(batch.inputs)`` to (batch, ``num_features``) pooled features; ``inputs`` says
    how raw examples become such batches; ``layer_groups`` order its parameters input to output."""

    model: nn.Module
    num_features: int
    inputs: Inputs
    layer_groups: list[LayerGroup]
    weights_report: str | None = None

    def features(self, inputs: Any) -> Any:
        return self.model(self.inputs.prepare(inputs))


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
    channels_last: bool = False,
) -> Backbone:
    """Build a timm model by ``name`` (classifier removed), or wrap a user's ``model`` that returns features.

    ``weights`` loads a local file after creation (see :mod:`transferlab.weights`); ``layer_groups`` is an
    optional list of regexes, one per group, input to output; ``channels_last`` converts the model to NHWC (faster
    convolutions on tensor cores) and has its inputs prepared alike.
    """
    for option, value in (("pretrained", pretrained), ("strict", strict), ("channels_last", channels_last)):
        check_bool(f"backbone.{option}", value)
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
        resolved = {}
        features = None
    if data_config:
        resolved.update({k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()})
    inputs = ImageInputs(resolved, channels_last=bool(channels_last))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if num_features is None:
        num_features = features or dry_forward_features(model, inputs)

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
    return Backbone(model, int(num_features), inputs, layer_groups_of(model, layer_groups), report)


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


def dry_forward_features(model: nn.Module, inputs: Inputs) -> int:
    """The feature width of ``model``, from one blank input (``inputs.example()``)."""
    was_training = model.training
    model.eval()  # keep BatchNorm statistics untouched
    try:
        with torch.no_grad():
            out = model(inputs.prepare(inputs.example()))
    except Exception as e:
        raise ConfigError(
            f"backbone: a dry forward on {inputs.kind} inputs failed ({type(e).__name__}: {e}); "
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
