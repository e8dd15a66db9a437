"""Backbones and their layer groups: timm families, custom modules, regex overrides, errors."""

import pytest
import torch
from torch import nn

from transferlab.backbones import create_backbone
from transferlab.errors import ConfigError
from transferlab.layer_groups import layer_groups

FAMILIES = [
    "resnet18",
    "convnext_atto",
    "vit_tiny_patch16_224",
    "efficientnet_b0",
    "mobilenetv3_small_050",
    "regnetx_002",
]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_parameter_in_exactly_one_group(name):
    backbone = create_backbone(name)
    names = [n for n, _ in backbone.model.named_parameters()]
    grouped = [n for g in backbone.layer_groups for n in g.param_names]
    assert sorted(grouped) == sorted(names) and len(grouped) == len(set(grouped))
    assert len(backbone.layer_groups) >= 4
    # input to output: the first group holds the stem, and group order follows parameter order
    first_index = [names.index(g.param_names[0]) for g in backbone.layer_groups]
    assert first_index == sorted(first_index) and first_index[0] == 0
    assert backbone.model(torch.zeros(2, *backbone.inputs.data_config["input_size"])).shape == (
        2,
        backbone.num_features,
    )


def test_group_names_follow_the_architecture():
    assert [g.name for g in create_backbone("resnet18").layer_groups] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    vit = [g.name for g in create_backbone("vit_tiny_patch16_224").layer_groups]
    assert vit[0] == "stem" and vit[1] == "blocks.0" and vit[-1] == "blocks.11+norm"


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.body(self.stem(x))


def test_custom_module_fallback_groups_and_dry_forward():
    backbone = create_backbone(model=TinyNet(), data_config={"input_size": [3, 16, 16]})
    assert backbone.num_features == 16
    assert [g.name for g in backbone.layer_groups] == ["stem", "body"]
    assert backbone.inputs.data_config["input_size"] == (3, 16, 16)


def test_regex_override():
    groups = layer_groups(TinyNet(), [r"^stem\.0", r"^stem\.1", r"^body"])
    assert [len(g.param_names) for g in groups] == [2, 2, 2]
    with pytest.raises(ConfigError, match=r"^backbone.layer_groups: 1 parameters match no regex"):
        layer_groups(TinyNet(), [r"^stem", r"^body\.0\.weight"])
    with pytest.raises(ConfigError, match=r"^backbone.layer_groups: regex '\^head' matches no parameter"):
        layer_groups(TinyNet(), [r"^stem", r"^body", r"^head"])


def test_unknown_timm_model_suggests_names():
    with pytest.raises(ConfigError, match=r"^backbone.name=resnet181: unknown timm model; did you mean resnet18"):
        create_backbone("resnet181")


def test_model_that_does_not_pool_is_refused():
    with pytest.raises(ConfigError, match=r"make it pool its output"):
        create_backbone(model=nn.Conv2d(3, 4, 3), data_config={"input_size": [3, 8, 8]})


def test_weights_from_a_timm_checkpoint_with_classifier(tmp_path):
    import timm

    source = timm.create_model("resnet18", num_classes=7)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    backbone = create_backbone("resnet18", weights=str(tmp_path / "r18.pth"), strict=True)
    assert "2 classifier tensors dropped" in backbone.weights_report
    assert torch.equal(backbone.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


class _EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention, self.output = nn.Linear(8, 8), nn.LayerNorm(8)


class _Encoder(nn.Module):
    def __init__(self, layers: int):
        super().__init__()
        self.layer = nn.ModuleList([_EncoderLayer() for _ in range(layers)])


class _BertShaped(nn.Module):
    """The module tree of a Hugging Face BERT encoder: embeddings, encoder.layer.N, pooler."""

    def __init__(self, layers: int = 4):
        super().__init__()
        self.embeddings, self.encoder, self.pooler = nn.Embedding(30, 8), _Encoder(layers), nn.Linear(8, 8)


def test_fallback_groups_a_transformer_encoder_by_layer():
    groups = layer_groups(_BertShaped(4))
    assert [g.name for g in groups] == ["embeddings", *(f"encoder.layer.{i}" for i in range(4)), "pooler"]
    assert groups[2].param_names == tuple(
        f"encoder.layer.1.{n}" for n in ("attention.weight", "attention.bias", "output.weight", "output.bias")
    )


def test_regex_groups_with_one_name_get_unique_names():
    # Both of the first two are named after their unit, stem.0: optimizer groups and lr logs go by name.
    groups = layer_groups(TinyNet(), [r"^stem\.0\.weight", r"^stem\.0\.bias", r"^stem\.1", r"^body"])
    assert [g.name for g in groups] == ["stem.0_0", "stem.0_1", "stem.1", "body.0"]
