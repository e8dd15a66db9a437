"""transferlab-report: a multirun folder as a table, a heatmap, validation curves and one self-contained HTML page.

Reads every job's summary.json and metrics.csv (see run_folder). A sweep still running is fine: a job without a
summary is pending (jobs that have no folder yet come from multirun.yaml), a running job shows its epochs so far.
Writes report.csv, report.md, heatmap.png, curves.png and report.html, prints the paths and the best trial, then
the markdown table last (one row per trial, overrides in the second column: scripts read rows from the end).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.run_folder import METRICS, SUMMARY, read_summary, write_atomic

DEFAULT_AXES = ("optimizer.lr", "schedule.freeze_depth")  # heatmap x, y when both are swept
ERROR_CHARS = 100


class ReportError(Exception):
    """A folder that cannot be reported on; the CLI prints it as one ``error:`` line."""


@dataclass
class Trial:
    """One job of the sweep: what its folder (or multirun.yaml, before it starts) says about it."""

    job: str
    status: str  # completed | failed | running | pending
    overrides: list[str] | None  # None: not known yet
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # metrics.csv, numbers only

    @property
    def params(self) -> dict[str, str]:
        """Override key (without +/++/~) -> value."""
        return dict(_split(o) for o in self.overrides or [])

    def curve(self, metric: str) -> list[tuple[float, float]]:
        return [(r["epoch"], r[metric]) for r in self.history if metric in r and "epoch" in r]

    def best(self, metric: str) -> tuple[float | None, int | None]:
        """Best value and its epoch: the summary's (the checkpointed epoch) when it monitors ``metric``, else the curve's."""
        best = self.summary.get("best") or {}
        if self.summary.get("monitor") == metric and best.get(metric) is not None:
            return best[metric], best.get("epoch")
        points = self.curve(metric)
        if not points:
            return None, None
        epoch, value = _pick(metric)(points, key=lambda p: p[1])
        return value, int(epoch)


def load_trials(multirun_dir: str | Path) -> list[Trial]:
    """One trial per job folder (``0``, ``1``, ... or any folder with a summary or .hydra/) and per planned job."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder")
    planned = dict(enumerate(_planned_jobs(root)))
    trials = {}
    for d in root.iterdir():
        if d.is_dir() and (d.name.isdigit() or (d / SUMMARY).is_file() or (d / ".hydra").is_dir()):
            trials[d.name] = _load_trial(d, planned.get(int(d.name)) if d.name.isdigit() else None)
    for num, overrides in planned.items():
        trials.setdefault(str(num), Trial(str(num), "pending", overrides))
    if not trials:
        hint = " (a single run folder: pass its multirun folder)" if (root / SUMMARY).is_file() else ""
        raise ReportError(f"{root}: no trials: no job folders and no multirun.yaml{hint}")
    return sorted(trials.values(), key=lambda t: _job_order(t.job))


def _load_trial(run_dir: Path, planned: list[str] | None) -> Trial:
    summary: dict[str, Any] = {}
    if (run_dir / SUMMARY).is_file():
        try:
            summary = read_summary(run_dir)
        except ValueError:  # not JSON (yet): report the job rather than fail the page
            summary = {"status": "unreadable"}
    overrides = summary.get("overrides")
    if overrides is None and (run_dir / ".hydra/overrides.yaml").is_file():
        import yaml

        overrides = yaml.safe_load((run_dir / ".hydra/overrides.yaml").read_text()) or []
    history = []
    if (run_dir / METRICS).is_file():
        with open(run_dir / METRICS, newline="") as f:
            history = [{k: float(v) for k, v in row.items() if k and _is_finite(v)} for row in csv.DictReader(f)]
    status = summary.get("status", "pending")
    return Trial(run_dir.name, status, overrides if overrides is not None else planned, summary, history)


def _planned_jobs(root: Path) -> list[list[str]]:
    """Every job's overrides as Hydra's basic sweeper expands multirun.yaml, in job order; [] when unknown."""
    if not (root / "multirun.yaml").is_file():
        return []
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        hydra_cfg = OmegaConf.load(root / "multirun.yaml").hydra
        if not str(hydra_cfg.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
            return []  # another sweeper (optuna, ...) picks its jobs as it goes
        params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides(params + list(hydra_cfg.overrides.task))
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:  # an unparsable multirun.yaml only loses the not-yet-started jobs
        return []


def swept_keys(trials: list[Trial]) -> list[str]:
    """Override keys whose value differs between the trials whose overrides are known, in first-seen order."""
    known = [t.params for t in trials if t.overrides is not None]
    keys = dict.fromkeys(k for p in known for k in p)
    return [k for k in keys if len({p.get(k) for p in known}) > 1]


def default_metric(trials: list[Trial]) -> str:
    return next((t.summary["monitor"] for t in trials if t.summary.get("monitor")), "val/acc")


def table(trials: list[Trial], metric: str, keys: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per trial: job, overrides, the swept values, status, best/final metric, test acc, epochs, time, error."""
    keys = swept_keys(trials) if keys is None else keys
    rows = []
    for t in trials:
        value, epoch = t.best(metric)
        curve = t.curve(metric)
        error = str(t.summary.get("error") or "").strip().splitlines()
        error = error[0] if error else ""
        rows.append(
            {
                "job": t.job,
                "overrides": " ".join(t.overrides or []),
                **{k: t.params.get(k) for k in keys},
                "status": t.status,
                f"best {metric}": value,
                "best epoch": epoch,
                f"final {metric}": curve[-1][1] if curve else (t.summary.get("final") or {}).get(metric),
                "test/acc": (t.summary.get("test") or {}).get("test/acc"),
                "epochs": t.summary.get("epochs", len(t.history) or None),
                "time_s": (t.summary.get("timings") or {}).get("total_s"),
                "error": error[: ERROR_CHARS - 1] + "…" if len(error) > ERROR_CHARS else error,
            }
        )
    for optional in ("test/acc", "error"):  # columns only when some trial has one
        if all(not r[optional] and r[optional] != 0 for r in rows):
            for r in rows:
                del r[optional]
    return rows


def collect(multirun_dir: str | Path, metric: str | None = None) -> list[dict[str, Any]]:
    """The table rows of a multirun folder."""
    trials = load_trials(multirun_dir)
    return table(trials, metric or default_metric(trials))


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The completed trial with the best ``best <metric>``."""
    done = [r for r in rows if r["status"] == "completed" and r[f"best {metric}"] is not None]
    return _pick(metric)(done, key=lambda r: r[f"best {metric}"]) if done else None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no runs)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), c).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def plot_heatmap(trials: list[Trial], metric: str, x: str, y: str, path: Path, others: bool = False) -> Path:
    """Best ``metric`` per (x, y) cell, annotated; cells without a value are grey and say why (failed, pending)."""
    import numpy as np

    plt = _pyplot()
    xs = _ordered(t.params.get(x) for t in trials)
    ys = _ordered(t.params.get(y) for t in trials)
    grid = np.full((len(ys), len(xs)), np.nan)
    labels = [[""] * len(xs) for _ in ys]
    for t in trials:
        if t.params.get(x) is None or t.params.get(y) is None:
            continue
        i, j = ys.index(t.params[y]), xs.index(t.params[x])
        value, _ = t.best(metric) if t.status in ("completed", "running") else (None, None)
        if value is not None and (np.isnan(grid[i, j]) or _pick(metric)(value, grid[i, j]) == value):
            grid[i, j] = value
            labels[i][j] = f"{value:.3f}" + ("\nrunning" if t.status == "running" else "")
        elif np.isnan(grid[i, j]) and not labels[i][j]:
            labels[i][j] = t.status
    cmap = plt.get_cmap("viridis" if _pick(metric) is max else "viridis_r").with_extremes(bad="#dddddd")
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
    plt = _pyplot()
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
    metric = metric or default_metric(trials)
    keys = swept_keys(trials)
    axes = _heatmap_axes(trials, keys, x, y)
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
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
    common = [o for o in _common_overrides(trials) if _split(o)[0] not in keys]
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
    write_atomic(out / "report.md", _markdown_page(context, rows, images, notes))
    write_atomic(out / "report.html", _html_page(context, rows, images, notes, best))
    paths = [out / "report.csv", out / "report.md", *images.values(), out / "report.html"]
    return Report(rows, best, context["best"], paths, notes)


def _common_overrides(trials: list[Trial]) -> list[str]:
    """Overrides every known trial shares, in order."""
    known = [t.overrides for t in trials if t.overrides is not None]
    return [o for o in dict.fromkeys(o for k in known for o in k) if all(o in k for k in known)]


def _markdown_page(context: dict[str, str], rows: list[dict], images: dict[str, Path], notes: dict[str, str]) -> str:
    parts = [f"# {context['title']}", f"`{context['folder']}`", context["overview"], f"**{context['best']}**"]
    if context["common"]:
        parts.append(f"Common overrides: `{context['common']}`")
    parts.append(markdown_table(rows))
    parts += [f"![{name}]({path.name})" for name, path in images.items()] + list(notes.values())
    return "\n\n".join(parts) + "\n"


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
code, .folder { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.folder { color: #666; } .best { background: #eef7ee; border-left: 4px solid #2e7d32; padding: .5rem .8rem; }
.note { color: #8a6d00; background: #fff8e1; padding: .4rem .8rem; }
table { border-collapse: collapse; margin-top: 1rem; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } th:last-child { text-align: left; } td.text { text-align: left; white-space: normal; max-width: 28rem; }
tr.best-row td { background: #eef7ee; font-weight: 600; }
.completed { color: #2e7d32; } .failed { color: #c62828; } .running { color: #1565c0; } .pending { color: #888; }
img { max-width: 100%; border: 1px solid #eee; margin-top: .5rem; }
"""


def _html_page(context: dict[str, str], rows: list[dict], images: dict[str, Path], notes: dict[str, str], best) -> str:
    esc = html.escape
    columns = [c for c in rows[0] if c != "overrides"]  # the swept values have their own columns
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        css = {"status": f' class="{esc(row["status"])}"', "error": ' class="text"'}
        cells = "".join(f"<td{css.get(c, '')}>{esc(_cell(row[c], c))}</td>" for c in columns)
        best_row = best is not None and row["job"] == best["job"]
        body.append(f'<tr class="best-row">{cells}</tr>' if best_row else f"<tr>{cells}</tr>")
    sections = []
    for name, title in (("heatmap", "Best metric over two swept keys"), ("curves", "Validation curves")):
        shown = _img(images[name], title) if name in images else f'<p class="note">{esc(notes.get(name, ""))}</p>'
        sections.append(f"<h2>{title}</h2>\n{shown}")
    common = f"<p>Common overrides: <code>{esc(context['common'])}</code></p>" if context["common"] else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{esc(context["title"])}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{esc(context["title"])}</h1>
<p class="folder">{esc(context["folder"])}</p>
<p>{esc(context["overview"])}</p>
<p class="best">{esc(context["best"])}</p>
{common}
<table>
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
{chr(10).join(sections)}
</body>
</html>
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _best_line(best: dict[str, Any] | None, metric: str, keys: list[str]) -> str:
    if best is None:
        return "Best trial: none completed yet"
    what = " ".join(f"{k}={best[k]}" for k in keys) or best["overrides"] or "no overrides"
    return f"Best trial: job {best['job']} ({what}): {metric} {_cell(best[f'best {metric}'])} at epoch {best['best epoch']}"


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


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _short_names(keys: list[str]) -> dict[str, str]:
    """optimizer.lr -> lr, unless two swept keys end alike."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def _ordered(values) -> list[str]:
    """Distinct values, numerically sorted when they are all numbers, else in first-seen order."""
    distinct = [v for v in dict.fromkeys(values) if v is not None]
    return sorted(distinct, key=float) if all(_is_number(v) for v in distinct) else distinct


def _pick(metric: str):
    """min for losses and errors, max for everything else."""
    return min if any(w in metric.lower() for w in ("loss", "err")) else max


def _is_finite(text: Any) -> bool:
    return _is_number(text) and math.isfinite(float(text))


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cell(value: Any, column: str = "") -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if column == "time_s" or abs(value) >= 100 else f"{value:.4f}"
    return "" if value is None else str(value)


def _job_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (sys.maxsize, name)


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
        return 1
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
