"""Classification heads put on top of a backbone's pooled features."""

from __future__ import annotations

from torch import nn

from transferlab.errors import ConfigError


def out_features(num_classes: int, binary: bool) -> int:
    """Binary tasks use one logit with a sigmoid; anything else one logit per class."""
    return 1 if binary and num_classes == 2 else num_classes


class LinearHead(nn.Module):
    """Dropout (optional) and one linear layer: the linear probe."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0, binary: bool = False):
        super().__init__()
        self.binary = binary and num_classes == 2
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, out_features(num_classes, binary))

    def forward(self, x):
        return self.fc(self.dropout(x))


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
        for option, value, choices in (("activation", activation, _ACTIVATIONS), ("norm", norm, _NORMS)):
            if value is not None and value not in choices:
                raise ConfigError(f"head.{option}={value}: unknown; choose one of {', '.join(choices)}")
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
