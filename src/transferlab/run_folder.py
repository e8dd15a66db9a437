"""The run folder is the contract everything downstream reads: summary.json, metrics.csv, curves.png, checkpoints/.

A run folder belongs to one run at a time (a lock), says how its run ended (``completed``, ``failed`` or
``interrupted``, with the reason; a run killed without a word is found dead by its pid, host and heartbeat), and a
folder that holds a finished run is not written into again unless the run resumes or the user asks.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transferlab.errors import ConfigError, Interrupted

SUMMARY = "summary.json"
METRICS = "metrics.csv"
CURVES = "curves.png"
CHECKPOINTS = "checkpoints"
HEARTBEAT = ".heartbeat"  # touched every HEARTBEAT_S seconds while the run lives
LOCK = ".lock"
HEARTBEAT_S = 30.0
DEAD_AFTER_S = 4 * HEARTBEAT_S


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file, and a failed write leaves the old
    file whole and nothing beside it. On a full disk, a text that fits the blocks the old file holds is written
    over it in place (how a run's last summary still says ``failed`` when the disk filled up)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text if isinstance(text, bytes) else text.encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a teammate's report must read it
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.is_file() or len(data) > path.stat().st_blocks * 512:
            raise
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def checkpoint_file(ckpt_path: str, fix: str, option: str = "ckpt_path") -> str:
    """The file ``ckpt_path`` (the value of ``option``) names (``~`` expanded), or a one-line ConfigError ending in
    ``fix``."""
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{option}={ckpt_path}: file not found; {fix}")
    return str(path)


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    path = Path(run_dir) / SUMMARY
    write_atomic(path, json.dumps(summary, indent=2, default=_jsonable) + "\n")
    return path


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    if not isinstance(summary, dict):
        raise ValueError(f"{SUMMARY} holds a {type(summary).__name__}, not an object")
    return summary


def run_status(run_dir: str | Path, summary: dict[str, Any]) -> str:
    """The summary's status, except that a ``running`` run whose process is gone is ``dead``: its pid no longer
    runs on this host, or (another host) its heartbeat stopped."""
    status = summary.get("status", "pending")
    if status != "running":
        return status
    if summary.get("host") == socket.gethostname() and summary.get("pid"):
        try:
            os.kill(int(summary["pid"]), 0)
        except ProcessLookupError:
            return "dead"
        except (PermissionError, ValueError):
            pass
        return "running"
    beat = Path(run_dir) / HEARTBEAT
    if beat.is_file() and time.time() - beat.stat().st_mtime > DEAD_AFTER_S:
        return "dead"
    return status


def claim(run_dir: Path, task: str, resuming: bool, overwrite: bool) -> None:
    """Refuse a folder that holds a run (finished, failed, interrupted or dead), unless this run resumes it or
    ``overwrite`` is set, which empties it first (Hydra's ``.hydra/`` aside: each run rewrites it). A live run's
    folder is never emptied."""
    if resuming or not (run_dir / SUMMARY).is_file():
        return
    try:
        previous = read_summary(run_dir)
    except (OSError, ValueError):
        previous = {"status": "unreadable"}
    status = run_status(run_dir, previous)
    if status == "running":
        raise _in_use(run_dir, f"pid {previous.get('pid')} on {previous.get('host')}")
    if overwrite:
        _empty(run_dir, keep=(".hydra", LOCK))
        return
    what = f"{'an' if status[0] in 'aeiou' else 'a'} {status} {previous.get('task', '')} run".replace("  ", " ")
    fix = "resume it with ckpt_path=last, choose another folder" if task == "train" else "choose another folder"
    raise ConfigError(f"paths.output_dir={run_dir}: holds {what} ({SUMMARY}); {fix}, or set overwrite=true")


def claim_sweep(sweep_dir: Path, resuming: bool, overwrite: bool) -> None:
    """The same rule for a sweep folder (``hydra.sweep.dir``): one that holds a sweep (its ``multirun.yaml`` or a
    trial's summary) is refused unless the sweep resumes its trials or ``overwrite`` empties it."""
    trials = sorted(p for p in sweep_dir.glob("*") if (p / SUMMARY).is_file()) if sweep_dir.is_dir() else []
    if resuming or not (trials or (sweep_dir / "multirun.yaml").is_file()):
        return
    statuses = []
    for trial in trials:
        try:
            statuses.append(run_status(trial, read_summary(trial)))
        except (OSError, ValueError):
            statuses.append("unreadable")
    if "running" in statuses:
        running = trials[statuses.index("running")]
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir}: trial {running.name} is still running; wait for it or choose another folder"
        )
    if overwrite:
        _empty(sweep_dir, keep=())
        return
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses))) or "no trial run"
    raise ConfigError(
        f"hydra.sweep.dir={sweep_dir}: holds a sweep ({counts}); resume it with ckpt_path=last, choose another "
        "folder, or set overwrite=true"
    )


def _empty(folder: Path, keep: tuple[str, ...]) -> None:
    import shutil

    for entry in folder.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


@contextmanager
def hydra_files_kept(run_dir: Path) -> Iterator[None]:
    """A command that leaves the folder's summary.json as it was (a resume refused once the model is built) leaves
    the files Hydra wrote for it (``.hydra/``, ``<task>.log``) as they were too: they describe the run that is
    there, not the command that was refused."""
    summary = run_dir / SUMMARY
    if not summary.is_file():  # a new folder: nothing there to keep
        yield
        return
    before = summary.read_bytes()
    kept = {p: p.read_bytes() for p in [*run_dir.glob(".hydra/*"), *run_dir.glob("*.log")] if p.is_file()}
    try:
        yield
    finally:
        if summary.is_file() and summary.read_bytes() == before:
            for path, data in kept.items():
                if not path.is_file() or path.read_bytes() != data:
                    write_atomic(path, data)


_LOCKS: dict[Path, Any] = {}  # one FileLock per folder in this process, so that holding it again nests


def hold(run_dir: Path) -> None:
    """Take the run folder's lock for the rest of this process: the command line takes it before Hydra writes
    ``.hydra/`` into the folder, so that of two commands started together the refused one writes nothing there."""
    _acquire(run_dir)


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock; another run holding it is a one-line error."""
    lock = _acquire(run_dir)
    try:
        yield
    finally:
        lock.release()


def _acquire(run_dir: Path):
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _LOCKS.setdefault(run_dir.resolve(), FileLock(str(run_dir / LOCK), timeout=0))
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = read_summary(run_dir)
            who = f"pid {holder.get('pid')} on {holder.get('host')}"
        except (OSError, ValueError):
            who = "another process"
        raise _in_use(run_dir, who) from None
    return lock


def _in_use(run_dir: Path, who: str) -> ConfigError:
    return ConfigError(
        f"paths.output_dir={run_dir}: another run ({who}) is using this folder; wait for it or choose another"
    )


@contextmanager
def recorded(
    run_dir: str | Path, summary: dict[str, Any], write: Callable[..., Any] = write_summary
) -> Iterator[dict[str, Any]]:
    """summary.json says ``running`` (with pid, host and a heartbeat) while the block runs, then ``completed``,
    ``interrupted`` (a signal) or ``failed``, with the reason. A failed run that resumed a completed one leaves
    that one's summary as it was."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    run_dir = Path(run_dir)
    previous = _completed_summary(run_dir)
    start = time.perf_counter()
    summary.update(pid=os.getpid(), host=socket.gethostname())
    write(run_dir, {**summary, "status": "running"})
    beat = _Heartbeat(run_dir) if write is write_summary else None
    try:
        yield summary
        summary["status"] = "completed"
    except (Interrupted, SIGTERMException, KeyboardInterrupt) as e:
        reason = (
            e.signal_name if isinstance(e, Interrupted) else "SIGTERM" if isinstance(e, SIGTERMException) else "SIGINT"
        )
        summary.update(status="interrupted", reason=reason)
        raise
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        if beat is not None:
            beat.stop()
        summary["timings"] = {**summary.get("timings", {}), "total_s": round(time.perf_counter() - start, 2)}
        if previous is not None and summary["status"] != "completed":
            summary = previous
        try:
            write(run_dir, summary)
        except OSError:
            pass  # a full or read-only disk: the error on its way out says so


def _completed_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = read_summary(run_dir)
    except (OSError, ValueError):
        return None
    return summary if summary.get("status") == "completed" else None


class _Heartbeat:
    """Touches the run folder's .heartbeat every HEARTBEAT_S seconds from a daemon thread."""

    def __init__(self, run_dir: Path):
        self.path, self._stop = run_dir / HEARTBEAT, threading.Event()
        self._beat()
        threading.Thread(target=self._run, daemon=True, name="transferlab-heartbeat").start()

    def _beat(self) -> None:
        try:
            self.path.touch()
        except OSError:
            pass  # a full disk fails the run elsewhere, with its own line

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._beat()

    def stop(self) -> None:
        self._stop.set()


def write_metrics(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """One row per epoch; columns are the union of keys, epoch first."""
    import io

    columns = list(dict.fromkeys(k for row in history for k in row))
    columns.sort(key=lambda c: (c != "epoch", c))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_atomic(Path(run_dir) / METRICS, text.getvalue())


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (tuple, set, Path)):
        return list(value) if not isinstance(value, Path) else str(value)
    return str(value)


def versions() -> dict[str, str]:
    """The versions summary.json records."""
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
