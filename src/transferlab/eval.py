"""transferlab-eval: score a checkpoint on a split; write summary.json and confusion.png into the run folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from transferlab.cli import cli_main, conf_dir, instantiate, run_task
from transferlab.errors import ConfigError
from transferlab.run_folder import write_summary

log = logging.getLogger("transferlab")
SPLITS = ("val", "test")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` on ``cfg.split``; return the summary written to the run folder."""
    run_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {
        "status": "running",
        "task": "eval",
        "ckpt_path": cfg.ckpt_path,
        "split": cfg.split,
    }
    start = time.perf_counter()
    try:
        summary.update(_evaluate(cfg, run_dir))
        summary["status"] = "completed"
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        summary["timings"] = {"total_s": round(time.perf_counter() - start, 2)}
        write_summary(run_dir, summary)
    metrics = summary["metrics"]
    print(
        f"eval {cfg.split}: acc {metrics[f'{cfg.split}/acc']:.4f} f1 {metrics[f'{cfg.split}/f1']:.4f} "
        f"(n={summary['n']}) -> {run_dir}"
    )
    return summary


def _evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split}: choose one of {', '.join(SPLITS)}")
    import pytorch_lightning as pl

    from transferlab.module import load_module
    from transferlab.run_folder import plot_confusion

    module = load_module(cfg.ckpt_path)
    changes = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if v is not None}
    data = {**module.metadata["data"], **changes, "output_dir": str(run_dir)}
    # The saved data config already holds the input size, mean and std the model was trained with.
    data.update(input_size=None, mean=None, std=None)
    datamodule = instantiate(data, data_config=module.metadata["data_config"])
    loader = datamodule.val_dataloader() if cfg.split == "val" else datamodule.test_dataloader()

    trainer = pl.Trainer(**cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    results = trainer.test(module, dataloaders=loader, verbose=False)[0]
    plot_confusion(run_dir / "confusion.png", module.confusion.compute().cpu(), module.class_names)
    return {
        "n": len(loader.dataset),
        "metrics": {k.replace("test/", f"{cfg.split}/", 1): round(float(v), 6) for k, v in results.items()},
        "class_names": module.class_names,
    }


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


main = cli_main(_hydra_main)

if __name__ == "__main__":
    main()
