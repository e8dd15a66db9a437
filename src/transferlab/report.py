"""transferlab-report: a multirun folder as a table, a heatmap, validation curves and one self-contained HTML page.

Reads every job's summary.json and metrics.csv (see run_folder). A sweep still running is fine: a job without a
summary is pending (jobs that have no folder yet come from multirun.yaml), a running job shows its epochs so far.
Writes report.csv, report.md, heatmap.png, curves.png and report.html, prints the paths and the best trial, then
the markdown table last (one row per trial, overrides in the second column: scripts read rows from the end).
"""

from __future__ import annotations

import argparse
import csv
import errno
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferlab.plots import pyplot
from transferlab.report_page import html_page, markdown_page
from transferlab.run_folder import write_atomic
from transferlab.sweep_results import (
    ReportError,
    Trial,
    best_row,
    better,
    cell,
    default_metric,
    is_number,
    load_trials,
    markdown_table,
    split_override,
    swept_keys,
    table,
)

__all__ = ["ReportError", "Trial", "load_trials", "write_report", "main"]

DEFAULT_AXES = ("optimizer.lr", "schedule.freeze_depth")  # heatmap x, y when both are swept


def plot_heatmap(trials: list[Trial], metric: str, x: str, y: str, path: Path, others: bool = False) -> Path:
    """Best ``metric`` per (x, y) cell, annotated; cells without a value are grey and say why (failed, pending)."""
    import numpy as np

    plt = pyplot()
    xs = _ordered(t.params.get(x) for t in trials)
    ys = _ordered(t.params.get(y) for t in trials)
    grid = np.full((len(ys), len(xs)), np.nan)
    labels = [[""] * len(xs) for _ in ys]
    for t in trials:
        if t.params.get(x) is None or t.params.get(y) is None:
            continue
        i, j = ys.index(t.params[y]), xs.index(t.params[x])
        value, _ = t.best(metric) if t.status in ("completed", "running") else (None, None)
        if value is not None and (np.isnan(grid[i, j]) or better(metric)(value, grid[i, j]) == value):
            grid[i, j] = value
            labels[i][j] = f"{value:.3f}" + ("\nrunning" if t.status == "running" else "")
        elif np.isnan(grid[i, j]) and not labels[i][j]:
            labels[i][j] = t.status
    cmap = plt.get_cmap("viridis" if better(metric) is max else "viridis_r").with_extremes(bad="#dddddd")
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(xs) + 2.5), max(3.0, 0.7 * len(ys) + 1.8)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    if not np.isnan(grid).all():
        fig.colorbar(image, ax=ax, label=metric)
    ax.set(xticks=range(len(xs)), yticks=range(len(ys)), xlabel=x, ylabel=y)
    ax.set_xticklabels(xs)
    ax.set_yticklabels(ys)
    ax.set_title(f"best {metric}" + (" (best over the other swept keys)" if others else ""), fontsize=10)
    for i in range(len(ys)):
        for j in range(len(xs)):
            dark = not np.isnan(grid[i, j]) and image.norm(grid[i, j]) < 0.6
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=9, color="white" if dark else "#333333")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(trials: list[Trial], metric: str, keys: list[str], path: Path, best_job: str | None = None) -> Path:
    """``metric`` per epoch, one line per trial, labelled by its swept values; running dashed, failed dotted."""
    plt = pyplot()
    names = _short_names(keys)
    styles = {"running": "--", "failed": ":"}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for t in trials:
        points = t.curve(metric)
        if not points:
            continue
        label = " ".join(f"{names[k]}={t.params.get(k)}" for k in keys) or f"job {t.job}"
        label += "" if t.status == "completed" else f" ({t.status})"
        ax.plot(*zip(*points), marker="o", markersize=3, ls=styles.get(t.status, "-"), label=label,
                lw=2.5 if t.job == best_job else 1.2)  # fmt: skip
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


@dataclass
class Report:
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_line: str
    paths: list[Path]
    notes: dict[str, str]


def write_report(
    multirun_dir: str | Path,
    out: str | Path | None = None,
    metric: str | None = None,
    x: str | None = None,
    y: str | None = None,
) -> Report:
    """Write report.csv, report.md, heatmap.png, curves.png and report.html into ``out`` (default: the folder)."""
    root = Path(multirun_dir)
    trials = load_trials(root)
    if metric is not None:
        _check_metric(trials, metric)
    metric = metric or default_metric(trials)
    keys = swept_keys(trials)
    axes = _heatmap_axes(trials, keys, x, y)
    where = f"--out {out}" if out is not None else str(root)
    out = Path(out) if out is not None else root
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "read-only or not yours")
    except OSError as e:
        raise ReportError(f"{where}: cannot be written ({e.strerror}); pass --out to a writable folder") from None
    rows = table(trials, metric, keys)
    best = best_row(rows, metric)
    notes: dict[str, str] = {}  # figure -> why it was skipped
    images: dict[str, Path] = {}

    if axes:
        others = any(k not in axes for k in keys)
        images["heatmap"] = plot_heatmap(trials, metric, *axes, out / "heatmap.png", others)
    else:
        notes["heatmap"] = (
            f"No heatmap: it needs two swept keys; this sweep varies {len(keys)} ({', '.join(keys) or '-'})."
        )
    if any(t.curve(metric) for t in trials):
        images["curves"] = plot_curves(trials, metric, keys, out / "curves.png", best and best["job"])
    else:
        notes["curves"] = f"No curves: no trial has logged {metric} yet."
    for name in notes:
        (out / f"{name}.png").unlink(missing_ok=True)  # a stale image from an earlier report

    counts = {s: sum(t.status == s for t in trials) for s in dict.fromkeys(t.status for t in trials)}
    common = [o for o in _common_overrides(trials) if split_override(o)[0] not in keys]
    context = {
        "title": f"Sweep report: {root.name}",
        "folder": str(root.resolve()),
        "overview": f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; metric {metric}",
        "best": _best_line(best, metric, keys),
        "common": " ".join(common),
    }
    csv_text = io.StringIO()
    writer = csv.DictWriter(csv_text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "report.csv", csv_text.getvalue())
    write_atomic(out / "report.md", markdown_page(context, rows, images, notes))
    write_atomic(out / "report.html", html_page(context, rows, images, notes, best))
    paths = [out / "report.csv", out / "report.md", *images.values(), out / "report.html"]
    return Report(rows, best, context["best"], paths, notes)


def _check_metric(trials: list[Trial], metric: str) -> None:
    """``--metric`` must be one some trial logged (once any trial has logged anything)."""
    logged = sorted({k for t in trials for row in t.history for k in row if k != "epoch"})
    if logged and metric not in logged:
        raise ReportError(f"--metric {metric}: no trial logged it; choose one of {', '.join(logged)}")


def _common_overrides(trials: list[Trial]) -> list[str]:
    """Overrides every known trial shares, in order."""
    known = [t.overrides for t in trials if t.overrides is not None]
    return [o for o in dict.fromkeys(o for k in known for o in k) if all(o in k for k in known)]


def _best_line(best: dict[str, Any] | None, metric: str, keys: list[str]) -> str:
    if best is None:
        return "Best trial: none completed yet"
    what = " ".join(f"{k}={best[k]}" for k in keys) or best["overrides"] or "no overrides"
    return (
        f"Best trial: job {best['job']} ({what}): {metric} {cell(best[f'best {metric}'])} at epoch {best['best epoch']}"
    )


def _heatmap_axes(trials: list[Trial], keys: list[str], x: str | None, y: str | None) -> tuple[str, str] | None:
    """--x/--y, else optimizer.lr x schedule.freeze_depth when both are swept, else the first two swept keys."""
    known = {k for t in trials for k in t.params}
    for flag, key in (("--x", x), ("--y", y)):
        if key is not None and key not in known:
            raise ReportError(f"{flag} {key}: no trial overrides it (swept keys: {', '.join(keys) or 'none'})")
    if x is not None and x == y:
        raise ReportError(f"--x and --y are both {x}")
    if x is None and y is None and all(k in keys for k in DEFAULT_AXES):
        return DEFAULT_AXES
    rest = iter(k for k in keys if k not in (x, y))
    x, y = x or next(rest, None), y or next(rest, None)
    return (x, y) if x and y else None


def _short_names(keys: list[str]) -> dict[str, str]:
    """optimizer.lr -> lr, unless two swept keys end alike."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def _ordered(values) -> list[str]:
    """Distinct values, numerically sorted when they are all numbers, else in first-seen order."""
    distinct = [v for v in dict.fromkeys(values) if v is not None]
    return sorted(distinct, key=float) if all(is_number(v) for v in distinct) else distinct


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transferlab-report",
        description="Report on a Hydra multirun folder: report.csv, report.md, heatmap.png, curves.png, report.html.",
    )
    parser.add_argument("folder", type=Path, help="the multirun folder (hydra.sweep.dir)")
    parser.add_argument("--metric", help="the metric to rank and plot (default: the runs' monitor, else val/acc)")
    parser.add_argument("--x", help="heatmap columns: a swept key (default: optimizer.lr, else the first swept key)")
    parser.add_argument("--y", help="heatmap rows: a swept key (default: schedule.freeze_depth, else the next one)")
    parser.add_argument("--out", type=Path, help="where to write the report (default: the multirun folder)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.folder, args.out, args.metric, args.x, args.y)
    except ReportError as e:
        print(f"transferlab-report: error: {e}", file=sys.stderr)
        return 2
    for path in report.paths:
        print(f"wrote {path}")
    for note in report.notes.values():
        print(note)
    print(report.best_line)
    print()
    print(markdown_table(report.rows))  # last: the quickstart reads the rows from the end of stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
