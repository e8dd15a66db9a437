"""transferlab-report on hand-made multirun folders: a 3 x 2 lr x freeze_depth sweep with 4 completed trials,
one failed and one still running (and pending jobs in the partial-sweep tests). No training here."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from transferlab.report import load_trials, main, write_report
from transferlab.run_folder import write_metrics, write_summary

from helpers import run_cli, tmpfs

CHROMIUM = Path("/usr/bin/chromium")
SWEEP_ARGS = [
    "schedule=freeze_depth",
    "optimizer.lr=0.001,0.01,0.1",
    "schedule.freeze_depth=1,3",
    "trainer.max_epochs=4",
]
# job -> (lr, freeze_depth, status, val/acc per epoch); Hydra's basic sweeper numbers the grid lr-major.
JOBS = {
    0: ("0.001", "1", "completed", [0.50, 0.62, 0.70, 0.71]),
    1: ("0.001", "3", "completed", [0.45, 0.55, 0.60, 0.64]),
    2: ("0.01", "1", "completed", [0.70, 0.82, 0.88, 0.86]),  # the best: 0.88 at epoch 2
    3: ("0.01", "3", "completed", [0.65, 0.75, 0.80, 0.83]),
    4: ("0.1", "1", "failed", [0.20]),
    5: ("0.1", "3", "running", [0.60, 0.91]),  # higher so far, but not completed
}
ERROR = (
    "FloatingPointError: val/loss is nan at epoch 1; lower optimizer.lr "
    + "x" * 200
    + "\nTraceback (most recent call last):"
)


def overrides(lr: str, depth: str) -> list[str]:
    return ["schedule=freeze_depth", f"optimizer.lr={lr}", f"schedule.freeze_depth={depth}", "trainer.max_epochs=4"]


def make_job(root: Path, job: int, lr: str, depth: str, status: str, accs: list[float]) -> Path:
    """A run folder as train.py leaves it: .hydra/overrides.yaml, metrics.csv, summary.json."""
    run = root / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides(lr, depth)))
    history = [
        {
            "epoch": e,
            "train/loss": round(1.5 - acc, 4),
            "train/acc": round(acc + 0.05, 4),
            "val/loss": round(1.2 - acc, 4),
            "val/acc": acc,
            "lr/backbone": float(lr) * 0.1,
            "lr/head": float(lr),
            "epoch_time_s": 2.5,
        }
        for e, acc in enumerate(accs)
    ]
    write_metrics(run, history)
    summary = {
        "status": status,
        "task": "train",
        "run_dir": str(run),
        "overrides": overrides(lr, depth),
        "started": "2025-01-01T12:00:00",
    }
    if status == "completed":
        best = max(history, key=lambda r: r["val/acc"])
        summary |= {
            "monitor": "val/acc",
            "epochs": len(history),
            "final": history[-1],
            "best": best,
            "best_epoch": best["epoch"],
            "test": {"test/acc": round(best["val/acc"] - 0.02, 4), "test/loss": 0.5},
            "timings": {"fit_s": 10.0, "epoch_s": [2.5] * len(history), "total_s": 12.3},
        }
    elif status == "failed":
        summary |= {"error": ERROR, "timings": {"total_s": 3.1}}
    write_summary(run, summary)
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun"
    root.mkdir()
    (root / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    max_batch_size: null\n    params: null\n  overrides:\n    task:\n"
        + "".join(f"    - {a}\n" for a in SWEEP_ARGS)
    )
    for job, spec in JOBS.items():
        make_job(root, job, *spec)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table_has_swept_columns_statuses_and_the_best_trial(sweep, capsys):
    assert main([str(sweep)]) == 0
    rows = read_csv(sweep / "report.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert list(rows[0])[:5] == ["job", "overrides", "optimizer.lr", "schedule.freeze_depth", "status"]
    assert "trainer.max_epochs" not in rows[0] and "schedule" not in rows[0]  # constant overrides: no column
    assert [(r["optimizer.lr"], r["schedule.freeze_depth"]) for r in rows] == [j[:2] for j in JOBS.values()]
    assert [r["status"] for r in rows] == [j[2] for j in JOBS.values()]
    best = rows[2]
    assert (float(best["best val/acc"]), best["best epoch"], float(best["final val/acc"])) == (0.88, "2", 0.86)
    assert float(best["test/acc"]) == 0.86 and best["epochs"] == "4" and float(best["time_s"]) == 12.3
    failed, running = rows[4], rows[5]
    assert failed["error"].startswith("FloatingPointError: val/loss is nan") and len(failed["error"]) <= 100
    assert "Traceback" not in failed["error"] and failed["test/acc"] == ""
    assert (float(running["best val/acc"]), running["best epoch"], running["epochs"]) == (0.91, "1", "2")

    md = (sweep / "report.md").read_text()
    assert "Best trial: job 2 (optimizer.lr=0.01 schedule.freeze_depth=1): val/acc 0.8800 at epoch 2" in md
    assert "Common overrides: `schedule=freeze_depth trainer.max_epochs=4`" in md
    assert "![heatmap](heatmap.png)" in md and "![curves](curves.png)" in md
    out = capsys.readouterr().out.strip().splitlines()
    assert "Best trial: job 2 (optimizer.lr=0.01 schedule.freeze_depth=1): val/acc 0.8800 at epoch 2" in out
    assert all(f"wrote {sweep / name}" in out for name in ("report.csv", "report.md", "heatmap.png", "report.html"))
    table = out[-6:]  # the table comes last; overrides in the second column
    assert [row.split("|")[2].strip() for row in table] == [" ".join(overrides(*j[:2])) for j in JOBS.values()]
    assert "| completed |" in table[2] and "| failed |" in table[4] and "| running |" in table[5]


def test_partial_sweep_shows_pending_jobs(sweep):
    shutil.rmtree(sweep / "5")  # not started: no folder; multirun.yaml says what it will run
    (sweep / "4/summary.json").unlink()  # Hydra made .hydra/ but train() has not written a summary yet
    (sweep / "4/metrics.csv").unlink()
    (sweep / "3/summary.json").write_text(json.dumps({"status": "running", "overrides": overrides("0.01", "3")}))
    report = write_report(sweep, out=sweep / "report")
    rows = {r["job"]: r for r in report.rows}
    assert [rows[j]["status"] for j in "012345"] == ["completed"] * 3 + ["running", "pending", "pending"]
    assert (rows["5"]["optimizer.lr"], rows["5"]["schedule.freeze_depth"]) == ("0.1", "3")
    assert rows["4"]["overrides"] == " ".join(overrides("0.1", "1"))
    assert rows["3"]["best val/acc"] == 0.83 and rows["3"]["epochs"] == 4  # from the partial metrics.csv
    assert rows["5"]["best val/acc"] is None and "error" not in rows["5"]  # no failure: no error column
    assert report.best["job"] == "2"
    assert {p.name for p in report.paths} == {"report.csv", "report.md", "heatmap.png", "curves.png", "report.html"}
    assert all(p.parent == sweep / "report" for p in report.paths)


def test_only_started_jobs_and_other_metric(sweep):
    (sweep / "multirun.yaml").unlink()
    shutil.rmtree(sweep / "5")
    (sweep / "6").mkdir()  # an empty job folder, overrides unknown: pending, and no swept key from it
    trials = load_trials(sweep)
    assert [(t.job, t.status) for t in trials][-2:] == [("4", "failed"), ("6", "pending")]
    report = write_report(sweep, metric="val/loss")
    assert report.best["job"] == "2" and report.best["best val/loss"] == pytest.approx(0.32)  # a loss: the minimum
    assert "optimizer.lr" in report.rows[0] and report.rows[-1]["optimizer.lr"] is None


def test_images_are_valid_pngs(sweep):
    from PIL import Image

    write_report(sweep)
    for name, min_size in (("heatmap.png", (400, 250)), ("curves.png", (600, 300))):
        with Image.open(sweep / name) as image:
            image.verify()
        with Image.open(sweep / name) as image:
            assert image.format == "PNG" and image.width >= min_size[0] and image.height >= min_size[1], image.size


def test_one_swept_key_skips_the_heatmap(tmp_path):
    root = tmp_path / "sweep"
    for job, lr in enumerate(("0.001", "0.01")):
        make_job(root, job, lr, "2", "completed", [0.5, 0.6 + job / 10])
    (root / "heatmap.png").write_bytes(b"stale")
    report = write_report(root)
    assert not (root / "heatmap.png").exists() and (root / "curves.png").is_file()
    assert "No heatmap" in report.notes["heatmap"]
    assert (
        "No heatmap: it needs two swept keys; this sweep varies 1 (optimizer.lr)" in (root / "report.html").read_text()
    )
    assert report.best["job"] == "1"


def test_html_page_in_a_headless_browser(sweep, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the python package)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)")
    write_report(sweep)
    page_html = (sweep / "report.html").read_text()
    assert "http://" not in page_html and "https://" not in page_html and "<script" not in page_html
    messages, errors = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto((sweep / "report.html").as_uri(), wait_until="load")
            rows = page.locator("table tbody tr")
            assert rows.count() == len(JOBS)
            assert page.locator("tr.best-row td").first.inner_text() == "2"
            assert "Best trial: job 2" in page.locator("p.best").inner_text()
            images = page.evaluate(
                "() => [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
            )
            assert len(images) == 2 and all(done and w > 0 and h > 0 for _, done, w, h in images), images
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not errors and not [m for m in messages if m.startswith(("error", "warning"))], (errors, messages)
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []  # self-contained
    shutil.copy(tmp_path / "report.png", "/tmp/report_screenshot.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.slow
def test_cli(sweep, tmp_path):
    result = run_cli("transferlab-report", sweep, "--x", "schedule.freeze_depth", "--y", "optimizer.lr")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("| 5 |")
    assert (sweep / "report.html").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("transferlab-report", empty)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"transferlab-report: error: {empty}: no trials: no job folders and no multirun.yaml"
    ]


def test_unknown_heatmap_key_is_an_error(sweep, capsys):
    assert main([str(sweep), "--x", "optimizer.momentum"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "transferlab-report: error: --x optimizer.momentum: no trial overrides it (swept keys: optimizer.lr, schedule.freeze_depth)"
    ]


def test_what_the_report_cannot_use_is_one_line_or_an_unreadable_trial(sweep, tmp_path, capsys):
    summary = json.loads((sweep / "0/summary.json").read_text())
    (sweep / "0/summary.json").write_text(json.dumps({**summary, "best": {"val/acc": "high", "epoch": 2}}))
    assert [t.status for t in load_trials(sweep)][0] == "unreadable"
    assert main([str(sweep)]) == 0  # the others are reported

    assert main([str(sweep), "--metric", "val/bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("transferlab-report: error: --metric val/bogus: no trial logged it; choose one of")
    assert "val/acc" in err[-1]

    with tmpfs(tmp_path / "ro", "size=1m,ro") as disk:
        assert main([str(sweep), "--out", str(disk / "report")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"transferlab-report: error: --out {disk / 'report'}: cannot be written (Read-only file system); "
            "pass --out to a writable folder"
        ]
