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

from transferlab.cli import cli_main, conf_dir, instantiate, job_summary, run_task
from transferlab.config import check_accelerator, chosen_by, validate
from transferlab.errors import ConfigError
from transferlab.run_folder import CHECKPOINTS, claim, locked, recorded, versions, write_summary

log = logging.getLogger("transferlab")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and test) one run into ``cfg.paths.output_dir``; return its summary. summary.json says how it ended."""
    run_dir = Path(cfg.paths.output_dir)
    from pytorch_lightning.utilities import rank_zero_only

    write = write_summary if rank_zero_only.rank == 0 else lambda *_: None  # DDP ranks share one run folder
    summary = job_summary("train", cfg, slurm_job_id=os.environ.get("SLURM_JOB_ID"))
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

    check_accelerator(str(cfg.trainer.get("accelerator")))
    pl.seed_everything(cfg.seed, workers=True)
    parts = _build(cfg)
    module = parts["module"]
    check_metrics(cfg, module)
    history = EpochHistory(run_dir)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    tty = sys.stderr.isatty()
    probe = parts["probe"]
    own = [parts["phases"], parts["serving"], *([probe] if probe else []), RngState()]
    callbacks = [*own, *(c for c in callbacks if _wanted(c, loggers, tty)), *_selections(cfg, run_dir), history]
    trainer = instantiate(trainer_config(cfg), callbacks=callbacks, logger=loggers or False, enable_progress_bar=tty)
    failed = True
    try:
        out = _fit_and_test(cfg, run_dir, trainer, parts, history, loggers)
        out["weights_report"] = parts["backbone"].weights_report
        if probe is not None:
            out["probe"] = probe.fits
        failed = False
        return out
    finally:
        finish_loggers(loggers, failed)


def check_metrics(cfg: DictConfig, module) -> None:
    """``monitor`` and ``test_best_by`` name metrics that ``module`` logs."""
    logged = module.metric_names()
    for option, metric in chosen_by(cfg):
        if metric not in logged:
            raise ConfigError(f"{option}={metric}: no step logs it; choose one of {', '.join(logged)}")


def _build(cfg: DictConfig) -> dict[str, Any]:
    """The run's parts: backbone, schedule and its PhaseControl, the FeatureServing, the data (a TargetData
    around the source where ``data.target`` names a target), head, module and exact probe. The one place that
    chooses domain adaptation (``adapt``)."""
    from transferlab.adapt_module import DomainAdaptationModule, build_adaptation, load_source_model
    from transferlab.data.target import TargetData, split_options
    from transferlab.feature_serving import FeatureServing
    from transferlab.module import (
        TransferModule,
        checkpoint_inputs,
        checkpoint_metadata,
        class_weights_for,
        read_checkpoint,
    )
    from transferlab.phase_control import PhaseControl
    from transferlab.probe import exact_probe

    source_ckpt = OmegaConf.select(cfg, "adapt.source_ckpt") if cfg.get("adapt") else None
    source_model = read_checkpoint(source_ckpt, mmap=True, option="adapt.source_ckpt") if source_ckpt else None
    # A source-free run loads every model tensor from the source checkpoint: no pretrained weights to read first.
    backbone = instantiate(cfg.backbone, **({"pretrained": False, "weights": None} if source_ckpt else {}))
    groups = len(backbone.layer_groups)
    schedule = instantiate(cfg.schedule, num_groups=groups, max_epochs=cfg.trainer.get("max_epochs"))
    phases = PhaseControl(schedule, backbone.model, backbone.layer_groups)
    options, target_options, feature_cache = split_options(cfg.data)
    serving = FeatureServing(backbone, feature_cache, phases.backbone_frozen)
    if options.get("source") == "none":  # no source data: the source checkpoint's classes and input preparation
        meta = checkpoint_metadata(source_model, source_ckpt, "adapt.source_ckpt")
        inputs, class_names = checkpoint_inputs(meta), meta["class_names"]
        source = instantiate(options, inputs=inputs, features=serving, class_names=class_names)
        weights = None  # validate refused class_weights: no labelled source loss to weigh
    else:
        source = instantiate(options, inputs=backbone.inputs, features=serving)
        weights = class_weights_for(cfg.get("class_weights"), source.datasets["train"].labels, source.class_names)
    head = instantiate(cfg.head)(in_features=backbone.num_features, num_classes=source.num_classes)
    module_options = dict(
        class_names=source.class_names,
        optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        lr_scales=phases.lr_scales(),
        label_smoothing=cfg.label_smoothing,
        class_weights=weights,
        filter_bias_and_bn=cfg.filter_bias_and_bn,
        inputs=source.inputs,
        metadata={k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("backbone", "head", "data")},
    )
    target = None
    if target_options is None:
        module = TransferModule(backbone, head, **module_options)
    else:
        factory = instantiate(cfg.adapt) if cfg.get("adapt") else None
        adaptation = build_adaptation(
            factory, schedule, phases, backbone.model, head, source.num_classes, cfg.trainer.max_epochs
        )
        # Training batches carry target images for every method but AdaBN (target statistics at scoring only);
        # a source-free one's carry nothing else.
        batches = "source"
        if adaptation is not None and adaptation.target_in_batchnorm:
            batches = "target" if adaptation.source_free else "source+target"
        target = TargetData(source, target_options, training_batches=batches)
        adabn = adaptation is not None and adaptation.target_statistics
        module = DomainAdaptationModule(
            backbone,
            head,
            adaptation=adaptation,
            score_target=target.labelled,
            target_batches=target.statistics_batches if adabn else None,
            source_data=target.source_data,
            **module_options,
        )
        if source_model is not None:
            load_source_model(module, source_model, source_ckpt)
            backbone.weights_report = f"adapt.source_ckpt={source_ckpt}: every model tensor"
    probe = exact_probe(schedule, phases, head, source, serving, cfg.seed, weights)
    parts = {"backbone": backbone, "phases": phases, "serving": serving, "source": source, "target": target}
    return {**parts, "data": target or source, "module": module, "probe": probe}


def trainer_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` as the Trainer takes it: without transferlab's own option ``compile``."""
    return {k: v for k, v in cfg.trainer.items() if k != "compile"}


def _fit_and_test(cfg, run_dir: Path, trainer, parts: dict[str, Any], history, loggers) -> dict[str, Any]:
    from transferlab.loggers import report_to_loggers
    from transferlab.resume import check_resumable, resume_path

    module, data = parts["module"], parts["data"]
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the W&B run config, hparams.yaml
    if cfg.trainer.get("compile"):
        # In place, forward only (metrics and logging stay eager; checkpoint keys unchanged). Phases then drop
        # frozen gradients instead of flipping requires_grad: a graph compiled before a flip keeps it (PyTorch 139476).
        module.compile()

    ckpt_path = resume_path(cfg.get("ckpt_path"), run_dir)
    if ckpt_path is not None:
        check_resumable(ckpt_path, module)
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    fit_s = time.perf_counter() - fit_start
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    # Testing the best checkpoint below restores that epoch's callback state: read them first.
    rows, phase_history = list(history.history), list(parts["phases"].history)
    out = _summary(cfg, run_dir, trainer, parts, rows)
    out["phases"], out["resumed_from"] = phase_history, ckpt_path
    if cfg.get("test") and data.has_test():
        wanted = list(cfg.get("test_best_by") or [])
        # Read before testing: a test restores the callbacks' state as the tested checkpoint saved it.
        chosen = {
            c.monitor: ((_best_row(rows, c.monitor, c.mode) or {}).get("epoch"), c.best_model_path or None)
            for c in trainer.checkpoint_callbacks
            if c.monitor in wanted and c.monitor != cfg.monitor
        }
        out["test"] = _test_best(trainer, module, data, run_dir)
        if wanted:
            tested = {out.get("best_epoch"): out["test"]}  # an epoch that two metrics choose is tested once
            by = {cfg.monitor: {"epoch": out.get("best_epoch"), **out["test"]}} if cfg.monitor in wanted else {}
            for metric, (epoch, path) in chosen.items():
                if epoch not in tested:
                    tested[epoch] = _test(trainer, module, data, path)
                by[metric] = {"epoch": epoch, **tested[epoch]}
            out["test_best_by"] = {m: by[m] for m in wanted if m in by}
    rates = ("train_samples_per_s", "loader_samples_per_s", "model_samples_per_s")
    out["timings"] = {
        "startup_s": history.startup_s,
        "fit_s": round(fit_s, 2),
        "epoch_s": [r["epoch_time_s"] for r in rows],
        **{key: [r[key] for r in rows] for key in rates},
    }
    if trainer.is_global_zero:
        report_to_loggers(loggers, out, {"curves": run_dir / "curves.png", "confusion": run_dir / "confusion.png"})
    return out


def _summary(cfg, run_dir: Path, trainer, parts: dict[str, Any], rows: list[dict]) -> dict[str, Any]:
    """What summary.json says of a fitted run, before testing: data, model selection, epochs, checkpoints."""
    from transferlab.plots import plot_curves

    module, source, target = parts["module"], parts["source"], parts["target"]
    out: dict[str, Any] = {
        "monitor": cfg.monitor,
        "class_names": module.class_names,
        "class_weights": module.metadata.get("class_weights"),
        "inputs": module.inputs.state(),
        "split_sizes": source.split_sizes(),
        "model_selection": {"monitor": cfg.monitor, "on_target_labels": _on_target_labels(cfg.monitor)},
        "layer_groups": [g.name for g in module.layer_groups],
        "epochs": len(rows),
        "final": rows[-1] if rows else {},
        "versions": versions(),
    }
    best = _best_row(rows, cfg.monitor, cfg.monitor_mode)
    if best:
        out["best"], out["best_epoch"] = best, best["epoch"]
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None:
        last = run_dir / CHECKPOINTS / "last.ckpt"
        out["checkpoints"] = {"best": checkpoint.best_model_path or None, "last": str(last) if last.is_file() else None}
    if rows and trainer.is_global_zero:
        plot_curves(run_dir, rows)
    if parts["serving"].served:
        out["feature_cache"] = parts["serving"].served
    if target is not None:
        out["target"] = target.summary()
    adaptation = getattr(module, "adaptation", None)
    if adaptation is not None:
        out["adaptation"] = {
            "methods": adaptation.methods,
            "steps_per_epoch": trainer.num_training_batches,
            "batch_size": {"target": source.batch_size}
            if adaptation.source_free
            else {"source": source.batch_size, "target": source.batch_size},
        }
    return out


def _test_best(trainer, module, datamodule, run_dir: Path) -> dict[str, float]:
    """Score the best checkpoint (or the model as it ended, without one) on the test split; plot its confusion."""
    from transferlab.plots import plot_confusion

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None else None
    scores = _test(trainer, module, datamodule, best_path or None)
    matrix = module.confusion.compute().cpu()  # a collective under DDP: every rank computes it
    if trainer.is_global_zero:
        plot_confusion(run_dir / "confusion.png", matrix, module.class_names)
    return scores


def _test(trainer, module, datamodule, ckpt_path: str | None) -> dict[str, float]:
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    # One dict per test loader (the source's, then a labelled target's as target/...).
    return {k: round(float(v), 6) for result in results for k, v in result.items()}


def _selections(cfg: DictConfig, run_dir: Path) -> list:
    """A checkpoint callback for each metric of ``test_best_by`` (but the monitor's, kept as best.ckpt):
    checkpoints/best-by-<metric>.ckpt, the best epoch by it in its own direction."""
    from transferlab.callbacks import RunCheckpoint
    from transferlab.validators import direction

    return [
        RunCheckpoint(
            dirpath=run_dir / CHECKPOINTS,
            filename="best-by-" + metric.replace("/", "-"),
            monitor=metric,
            mode=direction(metric),
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        for metric in dict.fromkeys(cfg.get("test_best_by") or [])
        if metric != cfg.monitor
    ]


def _wanted(callback, loggers: list, tty: bool) -> bool:
    """Drop the progress bar without a terminal (batch logs get one line per epoch) and lr logging without a logger."""
    from pytorch_lightning.callbacks import LearningRateMonitor, ProgressBar

    if isinstance(callback, ProgressBar):
        return tty
    return not (isinstance(callback, LearningRateMonitor) and not loggers)


def _on_target_labels(monitor: str) -> bool:
    """Whether choosing by ``monitor`` reads the target's labels (target/acc does; the validators do not)."""
    from transferlab.validators import DIRECTIONS

    return monitor.startswith("target/") and monitor not in DIRECTIONS


def _best_row(history: list[dict], monitor: str, mode: str) -> dict | None:
    rows = [r for r in history if r.get(monitor) is not None]
    if not rows:
        return None
    pick = max if mode == "max" else min
    return pick(rows, key=lambda r: r[monitor])


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    summary = run_task(train, cfg)
    # A sweeper optimises what this returns; None for a failed run or one without the metric.
    return (summary.get("best") or {}).get(cfg.monitor) if summary else None


main = cli_main(_hydra_main, "train")

if __name__ == "__main__":
    main()
