"""The run folder is the contract everything downstream reads: summary.json, metrics.csv, curves.png, checkpoints/."""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
METRICS = "metrics.csv"
CURVES = "curves.png"
CHECKPOINTS = "checkpoints"


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def checkpoint_file(ckpt_path: str, fix: str) -> str:
    """The file ``ckpt_path`` names (``~`` expanded), or a one-line ConfigError ending in ``fix``."""
    from transferlab.errors import ConfigError

    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: file not found; {fix}")
    return str(path)


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    path = Path(run_dir) / SUMMARY
    write_atomic(path, json.dumps(summary, indent=2, default=_jsonable) + "\n")
    return path


@contextmanager
def recorded(
    run_dir: str | Path, summary: dict[str, Any], write: Callable[..., Any] = write_summary
) -> Iterator[dict[str, Any]]:
    """summary.json says ``running`` while the block runs, then ``completed``, or ``failed`` with the error."""
    start = time.perf_counter()
    write(run_dir, {**summary, "status": "running"})
    try:
        yield summary
        summary["status"] = "completed"
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        summary["timings"] = {**summary.get("timings", {}), "total_s": round(time.perf_counter() - start, 2)}
        write(run_dir, summary)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / SUMMARY).read_text())


def write_metrics(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    """One row per epoch; columns are the union of keys, epoch first."""
    columns = list(dict.fromkeys(k for row in history for k in row))
    columns.sort(key=lambda c: (c != "epoch", c))
    with tempfile.NamedTemporaryFile("w", dir=run_dir, delete=False, newline="", suffix=".tmp") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    os.replace(f.name, Path(run_dir) / METRICS)


def plot_curves(run_dir: str | Path, history: list[dict[str, Any]]) -> Path:
    """Loss and accuracy per epoch, train and val, side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc")):
        for stage in ("train", "val"):
            points = [(r["epoch"], r[f"{stage}/{metric}"]) for r in history if r.get(f"{stage}/{metric}") is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=stage)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / CURVES
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (tuple, set, Path)):
        return list(value) if not isinstance(value, Path) else str(value)
    return str(value)


def plot_confusion(path: str | Path, matrix, class_names: list[str]) -> Path:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    plt = pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(4, 0.5 * n + 2)))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i][j]), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
