"""Classification heads put on top of a backbone's pooled features."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from transferlab.errors import ConfigError, check_bool, is_number


def check_options(options: dict) -> None:
    """The ``head.`` options (dropout, hidden_sizes, activation, norm) that cannot work, as one-line errors."""
    dropout = options.get("dropout", 0.0)
    if not is_number(dropout) or not 0 <= dropout < 1:
        raise ConfigError(f"head.dropout={dropout}: use a number in [0, 1), e.g. head.dropout=0.1")
    sizes = options.get("hidden_sizes", [])
    if (
        isinstance(sizes, str)
        or not isinstance(sizes, Sequence)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)
    ):
        raise ConfigError(f"head.hidden_sizes={sizes}: give a list of layer widths > 0, e.g. head.hidden_sizes=[256]")
    check_bool("head.binary", options.get("binary", False))
    for option, choices in (("activation", _ACTIVATIONS), ("norm", _NORMS)):
        value = options.get(option)
        if value is not None and value not in choices:
            raise ConfigError(f"head.{option}={value}: unknown; choose one of {', '.join(choices)}")


def out_features(num_classes: int, binary: bool) -> int:
    """Binary tasks use one logit with a sigmoid; anything else one logit per class."""
    return 1 if binary and num_classes == 2 else num_classes


class LinearHead(nn.Module):
    """Dropout (optional) and one linear layer: the linear probe. Every head has ``hidden`` (here the dropout) and
    ``fc``, the classifier: domain adaptation adapts what ``fc`` reads."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0, binary: bool = False):
        super().__init__()
        check_options({"dropout": dropout})
        self.binary = binary and num_classes == 2
        self.hidden = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, out_features(num_classes, binary))

    def forward(self, x):
        return self.fc(self.hidden(x))


class MLPHead(nn.Module):
    """Hidden layers (linear, optional norm, activation, dropout) then a linear classifier."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_sizes: tuple[int, ...] | list[int] = (256,),
        dropout: float = 0.0,
        activation: str = "gelu",
        norm: str | None = None,
        binary: bool = False,
    ):
        super().__init__()
        check_options({"dropout": dropout, "hidden_sizes": hidden_sizes, "activation": activation, "norm": norm})
        self.binary = binary and num_classes == 2
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers.append(nn.Linear(width, hidden))
            if norm:
                layers.append(_NORMS[norm](hidden))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, out_features(num_classes, binary))

    def forward(self, x):
        return self.fc(self.hidden(x))


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
_NORMS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}
