"""The run folder's figures: curves.png (loss and accuracy per epoch) and confusion.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferlab.run_folder import CURVES


def pyplot():
    """matplotlib's pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: str | Path, history: list[dict[str, Any]]) -> Path:
    """Loss and accuracy per epoch, train, val and a labelled target's val (those logged), side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc")):
        for stage in ("train", "val", "target"):
            points = [(r["epoch"], r[f"{stage}/{metric}"]) for r in history if r.get(f"{stage}/{metric}") is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=stage)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        if ax.lines:  # a source-free run on an unlabelled target logs none of these
            ax.legend()
    fig.tight_layout()
    path = Path(run_dir) / CURVES
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
