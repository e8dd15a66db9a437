"""Resuming a run: which checkpoint ``ckpt_path`` means, and whether it is of this model."""

from __future__ import annotations

import logging
from pathlib import Path

from transferlab.errors import ConfigError
from transferlab.run_folder import CHECKPOINTS

log = logging.getLogger("transferlab")


def resume_path(ckpt_path: str | None, run_dir: Path) -> str | None:
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


def check_resumable(ckpt_path: str, module) -> None:
    """A checkpoint to resume from must be readable and of this model (architecture and classes)."""
    from transferlab.module import read_checkpoint

    state = read_checkpoint(ckpt_path, mmap=True).get("state_dict") or {}  # mmap: shapes, without reading it all
    check_same_model(state, module.state_dict(), f"ckpt_path={ckpt_path}", "resume with the config it was trained with")


def check_same_model(state: dict, ours: dict, subject: str, fix: str) -> None:
    """``state`` (a checkpoint's) has the tensors of ``ours``, by name and shape, and no others; else one line."""
    differ = [k for k in ours if k not in state or tuple(state[k].shape) != tuple(ours[k].shape)]
    differ += [k for k in state if k not in ours]
    if differ:
        key = differ[0]
        theirs = tuple(state[key].shape) if key in state else "absent"
        mine = tuple(ours[key].shape) if key in ours else "absent"
        raise ConfigError(
            f"{subject}: a checkpoint of another model ({len(differ)} tensors differ, e.g. {key}: "
            f"{theirs} in the file, {mine} here); {fix}"
        )
