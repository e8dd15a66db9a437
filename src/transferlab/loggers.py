"""Loggers: W&B set up the way sweeps need it, and the end-of-run reporting every logger gets."""

from __future__ import annotations

import hashlib
import netrc
import os
from pathlib import Path
from typing import Any

from transferlab.errors import check_bool


def wandb_offline() -> bool:
    """Offline when WANDB_MODE says so, or when no API key is configured (env or ~/.netrc)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


def wandb_logger(save_dir: str, project: str = "transferlab", offline: bool | None = None, **kwargs: Any):
    """A WandbLogger whose run is named by its overrides, grouped by its sweep, and keeps its id across requeues.

    The id is derived from the run folder, so a requeued or resumed run continues the same W&B run.
    """
    from pytorch_lightning.loggers import WandbLogger

    check_bool("logger.wandb.offline", offline, allow_none=True)
    group, name = _sweep_group_and_name()
    run_id = hashlib.sha1(str(Path(save_dir).resolve()).encode()).hexdigest()[:12]
    kwargs = {"group": group, "name": name, "id": run_id, "resume": "allow", **kwargs}
    return WandbLogger(
        save_dir=save_dir, project=project, offline=wandb_offline() if offline is None else offline, **kwargs
    )


def _sweep_group_and_name() -> tuple[str | None, str | None]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hydra = HydraConfig.get()
    name = " ".join(hydra.overrides.task) or hydra.job.name
    if hydra.mode == RunMode.MULTIRUN:
        return Path(hydra.sweep.dir).name, name
    return None, name


def report_to_loggers(loggers: list, summary: dict[str, Any], images: dict[str, Path]) -> None:
    """Best metrics into each logger's run summary, and the curves and confusion matrix as images."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            best = {f"best/{k}": v for k, v in (summary.get("best") or {}).items()}
            test = summary.get("test") or {}
            logger.experiment.summary.update({**best, **test, "best_epoch": summary.get("best_epoch")})
            for key, path in images.items():
                if path.is_file():
                    logger.log_image(key=key, images=[str(path)])


def finish_loggers(loggers: list, failed: bool) -> None:
    """Close every logger, W&B's run too, so that the next job of a sweep starts its own (LHT 289)."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        logger.finalize("failed" if failed else "success")
        if isinstance(logger, WandbLogger):
            import wandb

            wandb.finish(exit_code=1 if failed else 0)
