"""A sweep's trials, read from its multirun folder: each job's summary.json and metrics.csv, or multirun.yaml for jobs
not started yet, and the table of one row per trial that the report shows."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferlab.run_folder import METRICS, SUMMARY, read_summary, run_status

ERROR_CHARS = 100


class ReportError(Exception):
    """A folder that cannot be reported on; the CLI prints it as one ``error:`` line."""


@dataclass
class Trial:
    """One job of the sweep: what its folder (or multirun.yaml, before it starts) says about it."""

    job: str
    status: str  # completed | failed | interrupted | running | dead | pending | unreadable
    overrides: list[str] | None  # None: not known yet
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # metrics.csv, numbers only

    @property
    def params(self) -> dict[str, str]:
        """Override key (without +/++/~) -> value."""
        return dict(split_override(o) for o in self.overrides or [])

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
        epoch, value = better(metric)(points, key=lambda p: p[1])
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
    """A job folder as a trial; whatever in it cannot be read makes the trial ``unreadable``, not the report fail."""
    summary: dict[str, Any] = {}
    if (run_dir / SUMMARY).is_file():
        try:
            summary = read_summary(run_dir)
        except (OSError, ValueError):  # not JSON (yet), not an object, unreadable
            summary = {"status": "unreadable"}
        if not isinstance(summary.get("timings", {}), dict) or not all(
            _numbers(summary.get(k, {})) for k in ("best", "final", "test")
        ):
            summary = {"status": "unreadable", "overrides": summary.get("overrides")}
    overrides = summary.get("overrides")
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        overrides = _saved_overrides(run_dir)
    history: list[dict[str, float]] = []
    if (run_dir / METRICS).is_file():
        try:
            with open(run_dir / METRICS, newline="") as f:
                history = [
                    {k: float(v) for k, v in row.items() if isinstance(k, str) and k and _is_finite(v)}
                    for row in csv.DictReader(f)
                ]
        except (OSError, UnicodeDecodeError, csv.Error):
            summary = {**summary, "status": "unreadable"}
    status = run_status(run_dir, summary) if isinstance(summary.get("status", ""), str) else "unreadable"
    return Trial(run_dir.name, status, overrides if overrides is not None else planned, summary, history)


def _numbers(values: Any) -> bool:
    """A summary's metrics block: an object of numbers (or nulls)."""
    return isinstance(values, dict) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values.values()
    )


def _saved_overrides(run_dir: Path) -> list[str] | None:
    """The job's overrides as Hydra saved them, or None when they are not there or not readable."""
    path = run_dir / ".hydra/overrides.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        saved = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in saved] if isinstance(saved, list) else None


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
    """One row per trial: job, overrides, the swept values, status, best/final metric, test and target acc, epochs,
    time, error."""
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
                # A labelled target's test accuracy: what domain adaptation is for.
                "target/acc": (t.summary.get("test") or {}).get("target/acc"),
                "epochs": t.summary.get("epochs", len(t.history) or None),
                "time_s": (t.summary.get("timings") or {}).get("total_s"),
                "error": error[: ERROR_CHARS - 1] + "…" if len(error) > ERROR_CHARS else error,
            }
        )
    for optional in ("test/acc", "target/acc", "error"):  # columns only when some trial has one
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
    return better(metric)(done, key=lambda r: r[f"best {metric}"]) if done else None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no runs)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c), c).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def better(metric: str):
    """min for losses and errors, max for everything else."""
    return min if any(w in metric.lower() for w in ("loss", "err")) else max


def _is_finite(text: Any) -> bool:
    return is_number(text) and math.isfinite(float(text))


def is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def cell(value: Any, column: str = "") -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if column == "time_s" or abs(value) >= 100 else f"{value:.4f}"
    return "" if value is None else str(value)


def _job_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (sys.maxsize, name)
