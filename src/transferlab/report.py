"""Tabulate the runs of a multirun folder from their summary.json files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from transferlab.run_folder import SUMMARY, read_summary


def collect(multirun_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder that has a summary.json, in job order."""
    rows = []
    for path in sorted(Path(multirun_dir).glob(f"*/{SUMMARY}"), key=lambda p: _job_order(p.parent.name)):
        summary = read_summary(path.parent)
        monitor = summary.get("monitor", "val/acc")
        rows.append(
            {
                "job": path.parent.name,
                "overrides": " ".join(summary.get("overrides", [])),
                "status": summary.get("status"),
                f"best {monitor}": (summary.get("best") or {}).get(monitor),
                "test/acc": (summary.get("test") or {}).get("test/acc"),
                "epochs": summary.get("epochs"),
                "time_s": (summary.get("timings") or {}).get("total_s"),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no runs)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _job_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (sys.maxsize, name)


if __name__ == "__main__":
    print(markdown_table(collect(sys.argv[1])))
