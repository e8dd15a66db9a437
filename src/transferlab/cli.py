"""What the three entry points share: the config folder, one-line user errors, and failure handling."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from transferlab.errors import ConfigError, Interrupted, RunFailed, check_bool

log = logging.getLogger("transferlab")


def conf_dir() -> str:
    """conf/ inside the installed package (wheel), else the repository's top-level conf/ (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def cli_main(hydra_main: Callable[[], None], config_name: str) -> Callable[[], None]:
    """Wrap a ``@hydra.main`` function as a console script with one-line errors and a non-zero exit."""

    @functools.wraps(hydra_main)
    def main() -> None:
        from transferlab.overrides import COMMAND_FLAGS, check_overrides, named_folder
        from transferlab.run_folder import hydra_files_kept

        argv = sys.argv[1:]
        try:
            check_overrides(argv, conf_dir(), config_name)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        folder = None if any(a in COMMAND_FLAGS for a in argv) else named_folder(argv)
        with hydra_files_kept(Path(folder).expanduser()) if folder else contextlib.nullcontext():
            hydra_main()

    return main


def run_task(task: Callable, cfg) -> float | None:
    """Run one job. A user error ends a single run with one line and exit 2; in a sweep the job is recorded as
    failed (by the task's summary.json), returns None (Optuna marks such a trial failed; NaN would stop it) and the
    sweep goes on. A run that fails by itself (RunFailed: a diverged loss) is one line and exit 1. SIGTERM and
    SIGINT end the job (and a sweep) as interrupted, with exit status 143 and 130; a disk that cannot be written
    is one line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with signals_interrupt():
            return task(cfg)
    except Interrupted as e:
        print(f"interrupted by {e.signal_name}; summary.json says so; resume with ckpt_path=last", file=sys.stderr)
        sys.exit(e.exit_code)
    except ConfigError as e:
        if not multirun:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        log.error("job failed: %s", e)
    except RunFailed as e:
        if not multirun:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        log.error("job failed: %s", e)
    except Exception as e:
        disk = unwritable(e)
        if disk and not multirun:
            print(f"error: {disk}", file=sys.stderr)
            sys.exit(2)
        if not multirun:
            raise
        log.exception("job failed: %s", e)
    return None


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM (timeout, scancel, container stops) and SIGINT raise :class:`Interrupted` in the main thread.

    Lightning adds its own SIGTERM handler in fit (it stops DDP workers) and calls the one it finds, this one."""
    import signal

    def handler(signum, frame):
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def unwritable(error: BaseException) -> str | None:
    """One line for a disk that is full, read-only or not ours, from the error or the errors it was raised from."""
    import errno

    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            where = seen.filename or "the run folder"
            return f"paths.output_dir: cannot write {where} ({seen.strerror}); free space or choose another folder"
        if isinstance(seen, RuntimeError) and "file write failed" in str(seen):  # torch.save on a full disk
            return (
                f"paths.output_dir: cannot write a checkpoint ({first_line(seen)}); free space or choose another folder"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def instantiate(config, *args, **kwargs):
    """``hydra.utils.instantiate`` that lets our one-line ConfigError through instead of Hydra's wrapper, and makes
    a target that refuses its arguments (an unknown or mistyped option) one line that names the config node.
    ``args`` and ``kwargs`` reach the target as they are (Hydra would turn a dataclass into a config node)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        if not args and not kwargs:
            return hydra_instantiate(config)
        factory = hydra_instantiate(config, _partial_=True)
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException):  # nested targets, e.g. a custom backbone's model
            cause = cause.__cause__
        _refused(config, cause, e)
        raise
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as e:
        _refused(config, e, e)
        raise


def _refused(config, cause: BaseException | None, error: BaseException) -> None:
    """Raise the one-line error for a target that failed on its options; return for anything else."""
    if isinstance(cause, ConfigError):
        raise cause from None
    if isinstance(cause, ImportError) and "Error locating target" in str(error):
        import re

        found = re.search(r"full_key: (\S+)", str(error))
        node = found.group(1) if found else _node_name(config)
        target = re.search(r"Error locating target '([^']+)'", str(error)).group(1)
        raise ConfigError(f"{node}._target_={target}: {_not_importable(target)}") from None
    if isinstance(cause, (TypeError, ValueError)) or cause is None:
        target = config.get("_target_") if hasattr(config, "get") else None
        node = _node_name(config)
        reason = first_line(cause or error)
        raise ConfigError(f"{node}: {target} refused its options ({reason}); check the {node}. options") from None


def _not_importable(target: str) -> str:
    """Why ``target`` cannot be imported, and the name it was probably meant to be."""
    import difflib
    import importlib

    module, _, name = target.rpartition(".")
    while module:
        try:
            names = dir(importlib.import_module(module))
        except ImportError:
            module, _, name = module.rpartition(".")
            continue
        close = difflib.get_close_matches(name, [n for n in names if not n.startswith("_")], n=1)
        hint = f"did you mean {module}.{close[0]}?" if close else "check its spelling"
        return f"{module} has no {name}; {hint}"
    return f"no module {name} can be imported; check its spelling and that it is installed or on PYTHONPATH"


def _node_name(config) -> str:
    """The config node's key in the composed config (``data``, ``callbacks.early_stopping``), or its target."""
    from omegaconf import OmegaConf

    try:
        key = config._get_full_key(None) if OmegaConf.is_config(config) else ""
    except Exception:
        key = ""
    return key or str(config.get("_target_", "config") if hasattr(config, "get") else "config")


def first_line(error: object) -> str:
    """The first non-empty line of an error's message (its type's name when it has none), at most 200 characters."""
    line = next((s.strip() for s in str(error).splitlines() if s.strip()), type(error).__name__)
    return line if len(line) <= 200 else line[:197] + "..."


def run_job(task: str, cfg, work: Callable, *given: str) -> dict:
    """A job other than training (eval, predict, export) in a run folder of its own, claimed and locked: its
    summary.json says how ``work(cfg, run_dir)`` ended and holds the config values named in ``given`` and what
    ``work`` returns. Returns that summary."""
    from transferlab.run_folder import claim, locked, recorded

    check_bool("overwrite", cfg.get("overwrite", False))
    run_dir = Path(cfg.paths.output_dir)
    summary = job_summary(task, cfg, *given)
    claim(run_dir, task, resuming=False, overwrite=bool(cfg.get("overwrite")))
    with locked(run_dir), recorded(run_dir, summary):
        summary.update(work(cfg, run_dir))
    return summary


def job_summary(task: str, cfg, *given: str, **fields) -> dict:
    """A job's first summary.json: ``running``, its task, run folder, the config values named in ``given`` (null
    where still missing), ``fields``, its command-line overrides and when it started."""
    import time

    from omegaconf import OmegaConf

    options = {key: None if OmegaConf.is_missing(cfg, key) else cfg[key] for key in given}
    return {"status": "running", "task": task, "run_dir": str(Path(cfg.paths.output_dir)), **options, **fields,
            "overrides": job_overrides(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip


def job_overrides() -> list[str]:
    """This Hydra job's command-line overrides (empty outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
