"""Text backbones: a Hugging Face ``transformers`` encoder (a hub name or a local folder) with its tokenizer,
pooled over its tokens. Its layer groups are the embeddings, then each encoder layer in order."""

from __future__ import annotations

import logging

import torch
from torch import nn

from transferlab.backbones import Backbone, dry_forward_features
from transferlab.errors import ConfigError, is_number
from transferlab.layer_groups import LayerGroup
from transferlab.layer_groups import layer_groups as layer_groups_of
from transferlab.text_inputs import TextInputs

log = logging.getLogger(__name__)
POOLINGS = ("mean", "cls")


class PooledEncoder(nn.Module):
    """``transformer``'s last hidden states pooled to one vector per text: the mean over the real (unpadded)
    tokens, as sentence-transformers pools MiniLM, or the first token's (``cls``)."""

    def __init__(self, transformer: nn.Module, pooling: str = "mean"):
        super().__init__()
        self.transformer, self.pooling = transformer, pooling

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.transformer(**inputs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def create_hf_backbone(
    name: str | None = None,
    *,
    path: str | None = None,
    pooling: str = "mean",
    max_length: int = 128,
    pretrained: bool = True,
    weights: str | None = None,
    layer_groups: list[str] | None = None,
) -> Backbone:
    """A ``transformers`` encoder by hub ``name`` or from a local folder ``path`` (its config, weights and
    tokenizer files). ``pretrained=false`` builds it from its config alone (what a checkpoint then fills)."""
    if (name is None) == (path is None):
        raise ConfigError("backbone: give exactly one of backbone.name (a hub name) or backbone.path (a local folder)")
    if pooling not in POOLINGS:
        raise ConfigError(f"backbone.pooling={pooling}: choose one of {', '.join(POOLINGS)}")
    if not is_number(max_length, whole=True) or max_length < 2:
        raise ConfigError(f"backbone.max_length={max_length}: use a whole number >= 2, e.g. 128")
    if weights:
        raise ConfigError("backbone.weights: a text backbone loads its weights from backbone.path; remove it")
    source, option = (str(path), f"backbone.path={path}") if path is not None else (name, f"backbone.name={name}")
    transformer, tokenizer = _load(source, option, pretrained)
    if tokenizer.backend_tokenizer is None:
        raise ConfigError(f"{option}: its tokenizer has no fast (tokenizers) version; use a model that has one")
    inputs = TextInputs(tokenizer.backend_tokenizer.to_str(), max_length, int(tokenizer.pad_token_id or 0))
    model = PooledEncoder(transformer, pooling)
    num_features = getattr(transformer.config, "hidden_size", None) or dry_forward_features(model, inputs)
    if layer_groups:
        groups = layer_groups_of(model, layer_groups)
    else:  # the transformer's own: embeddings, encoder.layer.0, ... (named as in its checkpoints)
        own = layer_groups_of(transformer)
        groups = [LayerGroup(g.name, tuple(f"transformer.{n}" for n in g.param_names)) for g in own]
    return Backbone(model, int(num_features), inputs, groups)


def _load(source: str, option: str, pretrained: bool):
    from pathlib import Path

    import transformers

    # Its per-tensor load report and progress bars: the weights report and epoch lines say what matters.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if source.startswith((".", "/", "~")) and not Path(source).expanduser().is_dir():
        raise ConfigError(f"{option}: folder not found; give a folder with the model's config, weights and tokenizer")
    location = str(Path(source).expanduser()) if Path(source).expanduser().is_dir() else source
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(location)
        if not pretrained:
            config = transformers.AutoConfig.from_pretrained(location)
            return _without_pooler(transformers.AutoModel.from_config, config), tokenizer
        return _without_pooler(transformers.AutoModel.from_pretrained, location), tokenizer
    except OSError as e:  # huggingface_hub's errors when offline or not found are OSErrors
        where = "the hub (offline?)" if location == source and not Path(source).exists() else location
        raise ConfigError(
            f"{option}: cannot load a model and tokenizer from {where} ({type(e).__name__}); set backbone.path to a "
            "local folder with the model's files"
        ) from None


def _without_pooler(build, source):
    """The encoder without its pooling layer, which mean or first-token pooling never uses (and DDP would
    find without gradients), where the model has that option."""
    try:
        return build(source, add_pooling_layer=False)
    except TypeError:
        return build(source)
