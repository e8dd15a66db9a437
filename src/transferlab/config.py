"""Checks on the composed config, run before any model, data or Trainer is built."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab.errors import ConfigError

PRECISIONS = {
    "32",
    "32-true",
    "64",
    "64-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "transformer-engine",
}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError (one line, naming the option and the fix) for the first problem found."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise ConfigError(f"{missing[0]} is required; set {missing[0]}=... on the command line or in a config")

    _positive(cfg, "optimizer.lr", example="1e-3")
    _positive(cfg, "schedule.backbone_lr_mult", example="0.1")
    _positive(cfg, "data.batch_size", example="32", integer=True)
    _positive(cfg, "trainer.max_epochs", example="10", integer=True)
    _positive(cfg, "trainer.accumulate_grad_batches", example="1", integer=True)

    depth = OmegaConf.select(cfg, "schedule.freeze_depth")
    if depth != "all" and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ConfigError(f"schedule.freeze_depth={depth}: use a whole number of layer groups >= 0, or all")

    precision = str(OmegaConf.select(cfg, "trainer.precision"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision}: choose one of 32-true, bf16-mixed, 16-mixed")

    if cfg.get("monitor_mode") not in ("min", "max"):
        raise ConfigError(f"monitor_mode={cfg.get('monitor_mode')}: use min or max")

    smoothing = cfg.get("label_smoothing", 0.0)
    if not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise ConfigError(f"label_smoothing={smoothing}: use a number in [0, 1)")

    weights = OmegaConf.select(cfg, "backbone.weights")
    if weights and not Path(weights).is_file():
        raise ConfigError(f"backbone.weights={weights}: file not found; give an existing file or backbone.weights=null")

    ckpt = cfg.get("ckpt_path")
    if ckpt and ckpt != "last" and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt}: file not found; give a checkpoint file, last, or null")


def _positive(cfg: DictConfig, key: str, example: str, integer: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{key}={value}: must be {kind} > 0, e.g. {key}={example}")
