"""transferlab-eval: score a checkpoint on a split; write summary.json and confusion.png into the run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab.cli import cli_main, conf_dir, run_job, run_task
from transferlab.errors import ConfigError

log = logging.getLogger("transferlab")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` into ``cfg.paths.output_dir``; return the summary written there.

    summary.json says how it ended (``status``); its ``metrics`` are named ``<split>/acc``, ``<split>/f1`` (macro),
    ``<split>/loss`` and, with more than five classes, ``<split>/top5``.
    """
    summary = run_job("eval", cfg, _evaluate, "ckpt_path", "split")
    metrics = summary["metrics"]
    print(
        f"eval {cfg.split}: acc {metrics[f'{cfg.split}/acc']:.4f} f1 {metrics[f'{cfg.split}/f1']:.4f} "
        f"(n={summary['n']}) -> {summary['run_dir']}"
    )
    return summary


def _evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from transferlab.data.sources import SPLITS
    from transferlab.inference import checkpoint_data, checkpoint_path, inference_trainer

    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split}: choose one of {', '.join(SPLITS)}")
    ckpt_path = checkpoint_path(cfg, "transferlab-eval")
    from transferlab.module import load_module
    from transferlab.plots import plot_confusion

    module = load_module(ckpt_path)
    overrides = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    changes = {k: v for k, v in overrides.items() if v is not None}
    datamodule = checkpoint_data(module, changes, run_dir)
    datasets = datamodule.datasets
    if cfg.split not in datasets:
        raise ConfigError(
            f"split={cfg.split}: the checkpoint's data has no {cfg.split} split (it has {', '.join(datasets)}); "
            f"choose one of those"
        )
    loader = datamodule.eval_loader(datasets[cfg.split])

    trainer = inference_trainer(cfg.trainer, run_dir)
    # test_step is the same for any split: it updates the metrics and the confusion matrix.
    results = trainer.test(module, dataloaders=loader, verbose=False)[0]
    if trainer.is_global_zero:
        plot_confusion(run_dir / "confusion.png", module.confusion.compute().cpu(), module.class_names)
    return {
        "n": len(loader.dataset),
        "metrics": {k.replace("test/", f"{cfg.split}/", 1): round(float(v), 6) for k, v in results.items()},
        "class_names": module.class_names,
        "data_changes": changes,
    }


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="eval")
def _hydra_main(cfg: DictConfig) -> float | None:
    summary = run_task(evaluate, cfg)
    if isinstance(summary, dict):
        return summary["metrics"][f"{cfg.split}/acc"]  # what a sweep over checkpoints would compare
    return summary


main = cli_main(_hydra_main, "eval")

if __name__ == "__main__":
    main()
