"""What the three entry points share: the config folder, one-line user errors, and failure handling."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from transferlab.errors import ConfigError

log = logging.getLogger("transferlab")


def conf_dir() -> str:
    """conf/ inside the installed package (wheel), else the repository's top-level conf/ (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def check_group_choices(overrides: list[str], root: str | Path) -> None:
    """Name an unknown config group option in one line, before Hydra prints its multi-line report."""
    root = Path(root)
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~").removeprefix("override ").strip()
        if not group or not (root / group).is_dir() or value.startswith("$") or not value:
            continue
        choices = sorted(p.stem for p in (root / group).glob("*.yaml"))
        for option in value.strip("[]").split(","):
            option = option.strip()
            if option and option != "null" and option not in choices:
                raise ConfigError(f"{group}={option}: unknown option; choose one of {', '.join(choices)}")


def cli_main(hydra_main: Callable[[], None]) -> Callable[[], None]:
    """Wrap a ``@hydra.main`` function as a console script with one-line errors and a non-zero exit."""

    @functools.wraps(hydra_main)
    def main() -> None:
        argv = sys.argv[1:]
        if not any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in argv):
            try:
                check_group_choices(argv, conf_dir())
            except ConfigError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
        hydra_main()

    return main


def run_task(task: Callable, cfg) -> float | None:
    """Run one job. A user error ends a single run with one line and exit 2; in a sweep the job is recorded as
    failed (by the task's summary.json), returns None (Optuna marks such a trial failed; NaN would stop it) and the
    sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return task(cfg)
    except ConfigError as e:
        if not multirun:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        log.error("job failed: %s", e)
    except Exception as e:
        if not multirun:
            raise
        log.exception("job failed: %s", e)
    return None


def instantiate(config, *args, **kwargs):
    """``hydra.utils.instantiate`` that lets our one-line ConfigError through instead of Hydra's wrapper."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException):  # nested targets, e.g. a custom backbone's model
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise


def job_overrides() -> list[str]:
    """This Hydra job's command-line overrides (empty outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
