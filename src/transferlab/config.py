"""Checks on the composed config, run before any model, data or Trainer is built."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from transferlab.errors import ConfigError, check_bool, is_number

# Lightning's precision values (its short aliases 32, 64, 16, bf16 included).
PRECISIONS = (
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
    "32",
    "64",
    "16",
    "bf16",
)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError (one line, naming the option and the fix) for the first problem found."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise ConfigError(f"{missing[0]} is required; set {missing[0]}=... on the command line or in a config")

    _positive(cfg, "optimizer.lr", example="1e-3")
    _positive(cfg, "trainer.max_epochs", example="10", integer=True)
    _positive(cfg, "trainer.accumulate_grad_batches", example="1", integer=True)
    precision = str(OmegaConf.select(cfg, "trainer.precision"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision}: choose one of {', '.join(PRECISIONS)}")

    # The options of transferlab's own parts, checked by the code that owns them, before anything is built.
    from transferlab.adapt import check_options as check_adapt
    from transferlab.data.options import check_options as check_data
    from transferlab.heads import check_options as check_head
    from transferlab.run_folder import checkpoint_file
    from transferlab.schedules import check_options as check_schedule
    from transferlab.weights import weights_file

    if OmegaConf.select(cfg, "schedule._target_") == "transferlab.schedules.preset":
        check_schedule(OmegaConf.to_container(cfg.schedule, resolve=True))
    if OmegaConf.select(cfg, "data._target_") == "transferlab.data.ClassificationDataModule":
        adapt = {"target_batches": bool(cfg.get("adapt")), "source_ckpt": OmegaConf.select(cfg, "adapt.source_ckpt")}
        check_data({**OmegaConf.to_container(cfg.data, resolve=True), **adapt})
    if OmegaConf.select(cfg, "adapt._target_") == "transferlab.adapt.DomainAdaptation":
        check_adapt({k: v for k, v in OmegaConf.to_container(cfg.adapt, resolve=True).items() if k[0] != "_"})
    if str(OmegaConf.select(cfg, "head._target_")).startswith("transferlab.heads."):
        check_head(OmegaConf.to_container(cfg.head, resolve=True))
    if OmegaConf.select(cfg, "backbone.weights"):
        weights_file(cfg.backbone.weights)
    ckpt = cfg.get("ckpt_path")
    if ckpt and ckpt != "last":
        checkpoint_file(ckpt, "give a checkpoint file, last, or null")

    _check_optimizer(cfg)

    if cfg.get("monitor_mode") not in ("min", "max"):
        raise ConfigError(f"monitor_mode={cfg.get('monitor_mode')}: use min or max")
    from transferlab.validators import DIRECTIONS

    better = DIRECTIONS.get(cfg.get("monitor"))
    if better and cfg.monitor_mode != better:
        raise ConfigError(
            f"monitor_mode={cfg.monitor_mode}: {cfg.monitor} is better {'lower' if better == 'min' else 'higher'}; "
            f"set monitor_mode={better}"
        )

    selections = cfg.get("test_best_by")
    if selections is not None and (
        not OmegaConf.is_list(selections) or not all(isinstance(m, str) and m for m in selections)
    ):
        raise ConfigError(f"test_best_by={selections}: give a list of metric names, e.g. test_best_by=[target/snd]")

    from transferlab.module import check_class_weights

    check_class_weights(cfg.get("class_weights"))
    if OmegaConf.select(cfg, "data.source") == "none":  # the run's only data is the target's
        if cfg.get("class_weights") is not None:
            raise ConfigError(
                f"class_weights={cfg.class_weights}: weighs the labelled source loss, and data.source=none has none; "
                "remove it"
            )
        for option, metric in chosen_by(cfg):
            if not str(metric).startswith("target/"):
                raise ConfigError(
                    f"{option}={metric}: data.source=none has no source split to score; choose by a target "
                    "metric, e.g. monitor=target/im monitor_mode=max"
                )
    smoothing = cfg.get("label_smoothing", 0.0)
    if not is_number(smoothing) or not 0 <= smoothing < 1:
        raise ConfigError(f"label_smoothing={smoothing}: use a number in [0, 1)")

    seed = cfg.get("seed")
    if not is_number(seed, whole=True) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed}: use a whole number in [0, 2^32), e.g. seed=42")
    for key in ("test", "overwrite", "filter_bias_and_bn"):
        check_bool(key, cfg.get(key, False))
    check_bool("trainer.compile", cfg.trainer.get("compile", False))


def chosen_by(cfg: DictConfig) -> list[tuple[str, str]]:
    """(option, metric) for each metric that chooses checkpoints: ``monitor``, then each of ``test_best_by``."""
    return [("monitor", cfg.get("monitor")), *(("test_best_by", m) for m in cfg.get("test_best_by") or [])]


def _check_optimizer(cfg: DictConfig) -> None:
    """The optimizer and lr scheduler are called mid-run (``_partial_``): build them now on one parameter, so that
    torch's range checks (lr, betas, momentum, weight_decay) and the scheduler's own are one line up front."""
    import torch

    from transferlab.cli import instantiate

    optimizer = instantiate(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    if cfg.get("lr_scheduler"):
        instantiate(cfg.lr_scheduler, optimizer, 1)


def check_accelerator(accelerator: str) -> None:
    """``trainer.accelerator`` against this machine (the config alone is valid anywhere): a GPU accelerator
    without a GPU would fail in Lightning only after the data and model are built."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator}: no CUDA GPU on this machine; use trainer.accelerator=cpu or auto"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps: no Apple GPU on this machine; use trainer.accelerator=cpu or auto")


def _positive(cfg: DictConfig, key: str, example: str, integer: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if not is_number(value, whole=integer) or value <= 0:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{key}={value}: must be {kind} > 0, e.g. {key}={example}")
