"""transferlab-train: one Hydra main that builds backbone, head, data, schedule and Trainer, fits and tests."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab.cli import cli_main, conf_dir, instantiate, job_overrides, run_task
from transferlab.config import check_accelerator, validate
from transferlab.errors import ConfigError
from transferlab.run_folder import CHECKPOINTS, claim, locked, recorded, write_summary

log = logging.getLogger("transferlab")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) one run into ``cfg.paths.output_dir``; return its summary. summary.json says how it ended."""
    run_dir = Path(cfg.paths.output_dir)
    from pytorch_lightning.utilities import rank_zero_only

    write = write_summary if rank_zero_only.rank == 0 else lambda *_: None  # DDP ranks share one run folder
    summary: dict[str, Any] = {
        "status": "running",
        "task": "train",
        "run_dir": str(run_dir),
        "overrides": job_overrides(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    lock = contextlib.nullcontext()  # DDP ranks share rank 0's run folder, and rank 0 holds its lock
    if rank_zero_only.rank == 0:
        claim(run_dir, "train", resuming=bool(cfg.get("ckpt_path")), overwrite=bool(cfg.get("overwrite")))
        lock = locked(run_dir)
    with lock, recorded(run_dir, summary, write):
        validate(cfg)
        summary.update(_fit(cfg, run_dir))
    return summary


def _fit(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import pytorch_lightning as pl

    from transferlab.callbacks import EpochHistory, RngState
    from transferlab.loggers import finish_loggers
    from transferlab.module import TransferModule
    from transferlab.phase_control import PhaseControl

    check_accelerator(str(cfg.trainer.get("accelerator")))
    pl.seed_everything(cfg.seed, workers=True)
    backbone = instantiate(cfg.backbone)
    groups = len(backbone.layer_groups)
    schedule = instantiate(cfg.schedule, num_groups=groups, max_epochs=cfg.trainer.get("max_epochs"))
    phases = PhaseControl(schedule, backbone.model, backbone.layer_groups)
    datamodule = instantiate(
        cfg.data,
        data_config=backbone.data_config,
        backbone=backbone,
        backbone_frozen=phases.backbone_frozen,
        target_batches=bool(cfg.get("adapt")),
    )
    head = instantiate(cfg.head)(in_features=backbone.num_features, num_classes=datamodule.num_classes)
    adaptation = _adaptation(cfg, schedule, phases, head, datamodule.num_classes)
    module = TransferModule(
        backbone,
        head,
        class_names=datamodule.class_names,
        optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        lr_scales=phases.lr_scales(),
        label_smoothing=cfg.label_smoothing,
        channels_last=bool(cfg.trainer.get("channels_last")),
        metadata={
            **{k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("backbone", "head", "data")},
            "data_config": datamodule.data_config,
        },
        adaptation=adaptation,
        score_target=datamodule.target_labelled,
    )

    if cfg.monitor not in module.metric_names():
        names = ", ".join(module.metric_names())
        raise ConfigError(f"monitor={cfg.monitor}: no step logs it; choose one of {names}")
    history = EpochHistory(run_dir)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    tty = sys.stderr.isatty()
    probe = _exact_probe(schedule, phases, head, datamodule, cfg.seed)
    own = [phases, *([probe] if probe else []), RngState()]
    callbacks = [*own, *(c for c in callbacks if _wanted(c, loggers, tty)), history]
    trainer = instantiate(trainer_config(cfg), callbacks=callbacks, logger=loggers or False, enable_progress_bar=tty)
    failed = True
    try:
        out = _fit_and_test(cfg, run_dir, trainer, module, datamodule, phases, history, loggers)
        out["weights_report"] = backbone.weights_report
        if probe is not None:
            out["probe"] = probe.fits
        failed = False
        return out
    finally:
        finish_loggers(loggers, failed)


def _adaptation(cfg: DictConfig, schedule, phases, head, num_classes: int):
    """The DomainAdaptation of ``cfg.adapt`` on what the head's classifier reads; None without one. An adapter
    with nothing it can move is a ConfigError: adversarial methods adapt the features (a trained backbone or the
    head's hidden layer), MCC the classifier too."""
    if not cfg.get("adapt"):
        return None
    adaptation = instantiate(cfg.adapt)(in_features=head.fc.in_features, num_classes=num_classes)
    epochs = range(int(cfg.trainer.max_epochs))
    features_train = any(not phases.backbone_frozen(e) for e in epochs) or any(
        p.requires_grad for p in head.hidden.parameters()
    )
    classifier_trains = features_train or any(p.probe != "exact" for p in schedule.phases)
    if adaptation.discriminator is not None and not features_train:
        option, why = f"adapt.adversarial={adaptation.adversarial}", ""
    elif not classifier_trains:
        option, why = f"adapt.mcc_weight={adaptation.mcc_weight}", " and the exact probe fits the classifier"
    else:
        return adaptation
    raise ConfigError(
        f"{option}: nothing to adapt: the schedule freezes the whole backbone and the head has no hidden layer{why}; "
        "use head=mlp (its hidden layer is then the adapted feature) or a schedule that trains the backbone "
        "(e.g. schedule=full)"
    )


def trainer_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` as the Trainer takes it: without transferlab's own options (compile, channels_last)."""
    return {k: v for k, v in cfg.trainer.items() if k not in ("compile", "channels_last")}


def _exact_probe(schedule, phases, head, datamodule, seed: int):
    """The ExactProbe callback where a phase asks for it (schedule.probe=exact), on a linear head."""
    from transferlab.heads import LinearHead
    from transferlab.probe import ExactProbe

    if not any(p.probe == "exact" for p in schedule.phases):
        return None
    if not isinstance(head, LinearHead):
        raise ConfigError(
            f"schedule.probe=exact: fits a linear head, not {type(head).__name__}; use head=linear or schedule.probe=sgd"
        )
    num_classes = datamodule.num_classes
    return ExactProbe(head.fc, num_classes, phases.probe_at, phases.phase_start, datamodule.probe_features, seed)


def check_resumable(ckpt_path: str, module) -> None:
    """A checkpoint to resume from must be readable and of this model (architecture and classes)."""
    from transferlab.module import read_checkpoint

    state = read_checkpoint(ckpt_path, mmap=True).get("state_dict") or {}  # mmap: shapes, without reading it all
    ours = module.state_dict()
    differ = [k for k in ours if k not in state or tuple(state[k].shape) != tuple(ours[k].shape)]
    differ += [k for k in state if k not in ours]
    if differ:
        key = differ[0]
        theirs = tuple(state[key].shape) if key in state else "absent"
        mine = tuple(ours[key].shape) if key in ours else "absent"
        raise ConfigError(
            f"ckpt_path={ckpt_path}: a checkpoint of another model ({len(differ)} tensors differ, e.g. {key}: "
            f"{theirs} in the file, {mine} here); resume with the config it was trained with"
        )


def _fit_and_test(cfg, run_dir: Path, trainer, module, datamodule, phases, history, loggers) -> dict[str, Any]:
    from transferlab.loggers import report_to_loggers
    from transferlab.plots import plot_curves

    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the W&B run config, hparams.yaml
    if cfg.trainer.get("compile"):
        # In place, forward only (metrics and logging stay eager; checkpoint keys unchanged). Phases then drop
        # frozen gradients instead of flipping requires_grad: a graph compiled before a flip keeps it (PyTorch 139476).
        module.compile()

    ckpt_path = _resume_path(cfg.get("ckpt_path"), run_dir)
    if ckpt_path is not None:
        check_resumable(ckpt_path, module)
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_s = time.perf_counter() - fit_start
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    # Testing the best checkpoint below restores that epoch's callback state: read them first.
    rows, phase_history = list(history.history), list(phases.history)

    out: dict[str, Any] = {
        "monitor": cfg.monitor,
        "class_names": module.class_names,
        "data_config": module.metadata["data_config"],
        "split_sizes": datamodule.split_sizes(),
        "model_selection": {"monitor": cfg.monitor, "on_target_labels": cfg.monitor.startswith("target/")},
        "layer_groups": [g.name for g in module.layer_groups],
        "phases": phase_history,
        "resumed_from": ckpt_path,
        "epochs": len(rows),
        "final": rows[-1] if rows else {},
        "versions": _versions(),
    }
    best = _best_row(rows, cfg.monitor, cfg.monitor_mode)
    if best:
        out["best"], out["best_epoch"] = best, best["epoch"]
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None:
        last = run_dir / CHECKPOINTS / "last.ckpt"
        out["checkpoints"] = {
            "best": checkpoint.best_model_path or None,
            "last": str(last) if last.is_file() else None,
        }
    if rows and trainer.is_global_zero:
        plot_curves(run_dir, rows)
    if cfg.get("test") and datamodule.split_sizes().get("test"):
        out["test"] = _test_best(trainer, module, datamodule, run_dir)
    out["timings"] = {
        "startup_s": history.startup_s,
        "fit_s": round(fit_s, 2),
        "epoch_s": [r["epoch_time_s"] for r in rows],
        **{key: [r[key] for r in rows] for key in ("train_images_per_s", "loader_images_per_s", "model_images_per_s")},
    }
    if datamodule.feature_cache_log:
        out["feature_cache"] = datamodule.feature_cache_log
    target = datamodule.target_summary()
    if target is not None:
        out["target"] = target
    if module.adaptation is not None:
        out["adaptation"] = {
            "methods": module.adaptation.methods,
            "steps_per_epoch": trainer.num_training_batches,
            "batch_size": {"source": datamodule.batch_size, "target": datamodule.batch_size},
        }
    if trainer.is_global_zero:
        report_to_loggers(loggers, out, {"curves": run_dir / "curves.png", "confusion": run_dir / "confusion.png"})
    return out


def _test_best(trainer, module, datamodule, run_dir: Path) -> dict[str, float]:
    """Score the best checkpoint (or the model as it ended, without one) on the test split; plot its confusion."""
    from transferlab.plots import plot_confusion

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None else None
    results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
    matrix = module.confusion.compute().cpu()  # a collective under DDP: every rank computes it
    if trainer.is_global_zero:
        plot_confusion(run_dir / "confusion.png", matrix, module.class_names)
    # One dict per test loader (the source's, then a labelled target's as target/...).
    return {k: round(float(v), 6) for result in results for k, v in result.items()}


def _wanted(callback, loggers: list, tty: bool) -> bool:
    """Drop the progress bar without a terminal (batch logs get one line per epoch) and lr logging without a logger."""
    from pytorch_lightning.callbacks import LearningRateMonitor, ProgressBar

    if isinstance(callback, ProgressBar):
        return tty
    return not (isinstance(callback, LearningRateMonitor) and not loggers)


def _resume_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``last``: the run folder's newest checkpoint, the end of its last epoch or the one Lightning's SLURM support
    saved when the job was signalled before its time limit (``hpc_ckpt_N.ckpt``); none yet: a fresh start."""
    if ckpt_path != "last":
        return None if ckpt_path is None else str(Path(ckpt_path).expanduser())
    found = [p for p in (run_dir / CHECKPOINTS / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    if found:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        log.info("resuming from %s", newest)
        return str(newest)
    log.info("ckpt_path=last: no checkpoint in %s yet, starting from the beginning", run_dir)
    return None


def _best_row(history: list[dict], monitor: str, mode: str) -> dict | None:
    rows = [r for r in history if r.get(monitor) is not None]
    if not rows:
        return None
    pick = max if mode == "max" else min
    return pick(rows, key=lambda r: r[monitor])


def _versions() -> dict[str, str]:
    import platform

    import pytorch_lightning
    import timm
    import torch

    import transferlab

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pytorch_lightning.__version__,
        "timm": timm.__version__,
        "transferlab": transferlab.__version__,
    }


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    summary = run_task(train, cfg)
    # A sweeper optimises what this returns; None for a failed run or one without the metric.
    return (summary.get("best") or {}).get(cfg.monitor) if summary else None


main = cli_main(_hydra_main, "train")

if __name__ == "__main__":
    main()
