"""Checks of the ``data.`` options that need no files: run by the data module, and by the config check before
anything is built. Each message names the option, the value and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transferlab.data.images import BAD_FILE_POLICIES
from transferlab.data.transforms import AUGMENT_PRESETS
from transferlab.errors import ConfigError, check_bool, is_number

SOURCES = ("digits", "digits_m", "folder", "text", "none")
# What data.source=none (no source data) cannot use: options of the source's images, and the input preparation,
# which is the source checkpoint's.
SOURCE_ONLY = ("root", "samples_per_class", "train_fraction", "input_size", "mean", "std", "group_column")
TARGET_SOURCES = ("folder", "digits_m")


def check_options(options: Mapping[str, Any]) -> None:
    """Raise ConfigError for the first ``data.`` option (given by name, unset ones absent or None) that cannot work."""
    get = options.get
    _choice("source", get("source") or "digits", SOURCES)
    _choice("augment", get("augment") or "none", AUGMENT_PRESETS)
    _choice("bad_files", get("bad_files") or "skip", BAD_FILE_POLICIES)
    _choice("bad_rows", get("bad_rows") or "skip", BAD_FILE_POLICIES)
    check_bool("data.cache_images", get("cache_images") or False)
    check_bool("data.pin_memory", get("pin_memory"), allow_none=True)
    if get("source") == "text":
        set_for_images = [k for k in ("input_size", "mean", "std", "classes", "photos") if get(k) is not None]
        set_for_images += [k for k in ("augment",) if get(k) not in (None, "none")]
        set_for_images += [k for k in ("cache_images",) if get(k)]
        if set_for_images:
            key = set_for_images[0]
            raise ConfigError(f"data.{key}={get(key)}: applies to images, not data.source=text; remove it")
    elif get("group_column") is not None:
        raise ConfigError(f"data.group_column={get('group_column')}: applies to data.source=text; remove it")
    val_fraction = _fraction("val_fraction", get("val_fraction", 0.2), low_open=True, high_open=True, example=0.2)
    test_fraction = _fraction("test_fraction", get("test_fraction", 0.0), low_open=False, high_open=True, example=0.1)
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction={val_fraction} + data.test_fraction={test_fraction} leave no training "
            "images; make their sum < 1"
        )
    if get("samples_per_class") is not None and get("train_fraction") is not None:
        raise ConfigError("data.samples_per_class and data.train_fraction are both set; set only one of them")
    _whole("samples_per_class", get("samples_per_class"), 1, "5")
    if get("train_fraction") is not None:
        _fraction("train_fraction", get("train_fraction"), low_open=True, high_open=False, example=0.1)
    _whole("split_seed", get("split_seed"), 0, "0")
    _whole("batch_size", get("batch_size"), 1, "32")
    _whole("eval_batch_size", get("eval_batch_size"), 1, "32")
    _whole("num_workers", get("num_workers"), 0, "0 (0 loads in the main process)")
    _whole("input_size", get("input_size"), 1, "224")
    check_target(get("target"))
    if get("source") == "none":
        _check_no_source(options)
    target = get("target") or {}
    if get("target_batches") and target.get("root") is None and target.get("source") != "digits_m":
        raise ConfigError(
            "data.target.root=null: domain adaptation (adapt=...) needs target images; set data.target.root=PATH "
            "(a folder of target images, flat or in class folders) or use data=digits_m"
        )


def _check_no_source(options: Mapping[str, Any]) -> None:
    """data.source=none: a source-free run's (adapt.source_ckpt, given beside the options by the config check)."""
    set_here = [k for k in SOURCE_ONLY if options.get(k) is not None]
    if set_here:
        key = set_here[0]
        raise ConfigError(
            f"data.{key}={options[key]}: applies to source data, and data.source=none has none (the target is "
            "prepared as the source checkpoint's run prepared its inputs); remove it, or use data=source_free"
        )
    if "source_ckpt" in options and not options["source_ckpt"]:
        raise ConfigError(
            "data.source=none: only a source-free run trains without source data; add adapt=shot "
            "adapt.source_ckpt=<source run>/checkpoints/best.ckpt, or name the source data"
        )


def check_target(target: Any) -> None:
    if target is None:
        return
    if not isinstance(target, Mapping):
        raise ConfigError(f"data.target={target}: give the target's options, e.g. data.target.root=PATH")
    unknown = sorted(set(target) - {"source", "root"})
    if unknown:
        raise ConfigError(f"data.target.{unknown[0]}: unknown option; data.target takes root and source")
    _choice("target.source", target.get("source") or "folder", TARGET_SOURCES)
    root = target.get("root")
    if root is not None and not isinstance(root, str):
        raise ConfigError(f"data.target.root={root}: give a folder path")
    if root is not None and target.get("source") == "digits_m":
        raise ConfigError(
            f"data.target.root={root} is set but data.target.source=digits_m; set data.target.source=folder"
        )


def check_digit_classes(classes: list[int] | None) -> list[int] | None:
    if classes is None:
        return None
    shown = f"data.classes={list(classes)}"
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for c in classes):
        raise ConfigError(f"{shown}: digit classes are integers in 0..9, e.g. data.classes=[5,6,7,8,9]")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"{shown}: a digit is listed twice; list each digit once")
    if len(classes) < 2:
        raise ConfigError(f"{shown}: a classifier needs at least 2 digits, e.g. data.classes=[0,1]")
    return list(classes)


def _choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"data.{option}={value}: unknown value; choose one of {', '.join(choices)}")


def _whole(option: str, value: Any, minimum: int, example: str) -> None:
    """None (unset) passes; anything else must be a whole number >= minimum."""
    if value is None:
        return
    if not is_number(value, whole=True) or value < minimum:
        raise ConfigError(f"data.{option}={value} must be >= {minimum} (a whole number), e.g. data.{option}={example}")


def _fraction(option: str, value: Any, low_open: bool, high_open: bool, example: float) -> float:
    number = is_number(value)
    above = number and (value > 0 if low_open else value >= 0)
    below = number and (value < 1 if high_open else value <= 1)
    if not (above and below):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ConfigError(f"data.{option}={value} must be in {interval}, e.g. data.{option}={example}")
    return float(value)
