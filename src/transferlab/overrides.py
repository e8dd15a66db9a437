"""Checks of the command line's overrides, before Hydra composes the job: one line for each mistake, not Hydra's
multi-line report. The values themselves are checked later, by the code that owns each option."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from transferlab.cli import first_line as _first_line
from transferlab.errors import ConfigError

# Where ``+key=value`` may add keys that no config file has: collections of targets (callbacks, loggers), the data
# changes of eval, Hydra's own. Under any other node with a ``_target_`` (the Trainer, the optimizer) an added key
# is an extra keyword argument of that target, checked here against its signature: a ``_partial_`` target is
# called only mid-run.
OPEN_ROOTS = ("callbacks", "logger", "data", "hydra")
COMMAND_FLAGS = ("-m", "--multirun")  # anything else (--help, --cfg, -cd, ...) is left to Hydra


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


def check_overrides(argv: list[str], root: str | Path, config_name: str) -> None:
    """Parse every override and compose the config once with them (a sweep's first value of each swept key), so
    that a syntax error, an unknown key or a ``+`` on an existing key is one line before the job starts."""
    if any(a.startswith("-") and a not in COMMAND_FLAGS for a in argv):
        return
    check_group_choices(argv, root)
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for arg in argv:
        if arg in COMMAND_FLAGS:
            continue
        try:
            parsed.append((arg, parser.parse_override(arg)))
        except HydraException as e:
            reason = _first_line(e).removeprefix("Error parsing override ").strip()
            raise ConfigError(
                f"{arg}: not a valid override ({reason}); write KEY=VALUE, e.g. optimizer.lr=1e-3"
            ) from None
    job = []
    for arg, override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            job.append(f"{key}={next(override.sweep_string_iterator())}")
        else:
            job.append(arg)
    cfg = _compose(root, config_name, job)
    for arg, override in parsed:
        if override.is_add() and not override.is_force_add():
            _check_added(cfg, override.key_or_group, arg, Path(root))
    _check_writable(argv)
    _check_unclaimed(argv, cfg, config_name)


def _check_unclaimed(argv: list[str], cfg, task: str) -> None:
    """A run folder (``hydra.run.dir``) or sweep folder (``hydra.sweep.dir``, with ``-m``) that holds another run
    or sweep is refused here, by the claim the task makes itself, before Hydra writes its files into it."""
    from transferlab.run_folder import claim, claim_sweep, hold

    multirun = any(a in COMMAND_FLAGS for a in argv)
    folder = named_folder(argv)
    if folder is None:
        return  # the default folders are new: named to the microsecond
    # A DDP worker re-runs the command line (rank 0 has claimed the folder). The variables Lightning reads its
    # rank from, read here: importing Lightning before Hydra sets up logging would give it a second log handler.
    if any(os.environ.get(v, "0") != "0" for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")):
        return
    resuming = task == "train" and bool(cfg.get("ckpt_path"))
    if multirun:
        claim_sweep(Path(folder).expanduser(), resuming=resuming, overwrite=bool(cfg.get("overwrite")))
    else:
        hold(Path(folder).expanduser())
        claim(Path(folder).expanduser(), task, resuming=resuming, overwrite=bool(cfg.get("overwrite")))


def named_folder(argv: list[str]) -> str | None:
    """The run folder (``hydra.run.dir``; with ``-m``, the sweep folder ``hydra.sweep.dir``) the command line names."""
    option = "hydra.sweep.dir" if any(a in COMMAND_FLAGS for a in argv) else "hydra.run.dir"
    return next((v for k, _, v in (a.partition("=") for a in argv) if k == option and v), None)


def _check_writable(argv: list[str]) -> None:
    """The run (or sweep) folder must be writable: Hydra writes into it before any job code runs."""
    option, folder = "hydra.run.dir", "outputs"  # the default run and sweep folders are under ./outputs
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value:
            option, folder = key, value
    existing = Path(folder).expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{option}={folder}: {existing} cannot be written (read-only or not yours); choose another folder"
        )


def _compose(root: str | Path, config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(root), version_base="1.3"):
            # Hydra's own node too: its settings (the sweeper's, say) are checked against their schema here.
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    except HydraException as e:
        raise ConfigError(_composition_error(e)) from None
    finally:
        GlobalHydra.instance().clear()


def _composition_error(error: Exception) -> str:
    """Hydra's report of a failed composition, as one line that names the override and the fix."""
    import re

    message = str(error)
    if (found := re.search(r"Error merging override (\S+)", message)) and error.__cause__ is not None:
        return f"{found.group(1)}: {_first_line(error.__cause__)}; check its value"

    if found := re.search(r"Could not override '([^']+)'", message):
        key = found.group(1)
        listing = "hydra" if key.startswith("hydra.") else "job"
        return f"{key}: no such option in the config; check its spelling (transferlab-train --cfg {listing} lists them)"
    if found := re.search(r"An item is already at '([^']+)'", message):
        key = found.group(1)
        return f"+{key}: {key} is already an option; set it without the +: {key}=..."
    if found := re.search(r"Could not delete from config. (?:The value of )?'?([^' ]+)", message):
        return f"~{found.group(1)}: no such option to remove"
    return f"overrides: {_first_line(message)}; check the command line"


def _check_added(cfg, key: str, arg: str, root: Path) -> None:
    """A ``+key=value`` that nothing would read is refused (see OPEN_ROOTS)."""
    from omegaconf import OmegaConf

    parts = key.split(".")
    if parts[0] in OPEN_ROOTS or (root / key).is_dir():
        return
    node = cfg
    for depth, part in enumerate(parts[:-1], start=1):
        node = node.get(part) if OmegaConf.is_dict(node) else None
        if OmegaConf.is_dict(node) and "_target_" in node:
            _check_argument(node._target_, parts[depth], arg)
            return
    if len(parts) == 1 and "${" + key in OmegaConf.to_yaml(cfg):
        return  # a value the configs interpolate (e.g. the quickstart's source_run)
    raise ConfigError(f"{arg}: transferlab has no option {key}, so nothing would read it; check its spelling")


def _check_argument(target: str, name: str, arg: str) -> None:
    """``name`` must be a keyword argument of ``target`` (anything goes where it takes ``**kwargs``)."""
    import inspect

    from hydra.utils import get_object

    try:
        signature = inspect.signature(get_object(target))
    except Exception:
        return  # an unknown target is reported where it is instantiated, with its node's name
    parameters = signature.parameters.values()
    if name.startswith("_") or any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]}?" if close else f"it takes {', '.join(names)}"
        raise ConfigError(f"{arg}: {target} takes no option {name}; {hint}")
