"""Image transforms: train augmentation presets and the eval transform, built with timm's helpers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transferlab.errors import ConfigError, is_number

AUGMENT_PRESETS = ("none", "light", "strong")

# What a backbone without its own data config gets: timm's ImageNet defaults.
DEFAULT_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "crop_pct": 0.875,
}

# Random crops keep at least half the image: timm's ImageNet default (0.08) loses the object on small data.
CROP_SCALE = (0.5, 1.0)
RAND_AUGMENT = "rand-m9-mstd0.5"


def resolve_data_config(
    data_config: Mapping[str, Any] | None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The backbone's data config (or the defaults) with ``data.input_size/mean/std`` overrides applied."""
    config = {**DEFAULT_DATA_CONFIG, **dict(data_config or {})}
    if input_size is not None:
        if not is_number(input_size, whole=True) or input_size < 1:
            raise ConfigError(f"data.input_size={input_size} must be a positive number of pixels, e.g. 224")
        config["input_size"] = (3, int(input_size), int(input_size))
    for name, value in (("mean", mean), ("std", std)):
        if value is not None:
            config[name] = value
        # Hydra hands over ListConfig and timm hands over tuples: normalise to tuples of floats.
        values = config[name] if isinstance(config[name], Sequence) and not isinstance(config[name], str) else [None]
        if not all(is_number(v) for v in values):
            raise ConfigError(f"data.{name}={config[name]} must be 3 numbers (R,G,B), e.g. [0.5,0.5,0.5]")
        config[name] = tuple(float(v) for v in values)
        if len(config[name]) != 3:
            raise ConfigError(f"data.{name}={list(config[name])} must have 3 values (R,G,B), e.g. [0.5,0.5,0.5]")
    if any(s <= 0 for s in config["std"]):
        raise ConfigError(f"data.std={list(config['std'])} must be positive")
    config["input_size"] = tuple(int(v) for v in config["input_size"])
    config["interpolation"] = str(config["interpolation"])
    config["crop_pct"] = float(config["crop_pct"])
    return config


def build_transform(data_config: Mapping[str, Any], augment: str, train: bool) -> Callable:
    """PIL image -> normalised tensor (C,H,W); ``augment`` applies to the train split only.

    ``none`` is the eval transform (resize, centre crop by ``crop_pct``); ``light`` is a random resized crop
    plus horizontal flip; ``strong`` is ``light`` plus timm's RandAugment.
    """
    if augment not in AUGMENT_PRESETS:
        raise ConfigError(f"data.augment={augment}: unknown preset; choose one of {', '.join(AUGMENT_PRESETS)}")
    from timm.data import create_transform  # timm is heavy: import it only when a transform is built

    common = {
        "input_size": tuple(data_config["input_size"]),
        "mean": tuple(data_config["mean"]),
        "std": tuple(data_config["std"]),
        "interpolation": data_config["interpolation"],
    }
    if not train or augment == "none":
        crop_mode = data_config.get("crop_mode")
        extra = {"crop_mode": crop_mode} if crop_mode else {}
        return create_transform(is_training=False, crop_pct=data_config["crop_pct"], **common, **extra)
    return create_transform(
        is_training=True,
        scale=CROP_SCALE,
        hflip=0.5,
        color_jitter=None,  # colour changes come only from RandAugment in the strong preset
        auto_augment=RAND_AUGMENT if augment == "strong" else None,
        **common,
    )
