"""Sweep presets through the real Hydra sweepers and launchers: a grid, Optuna, parallel joblib trials."""

import json
from pathlib import Path

import pytest
import yaml

from helpers import TINY, run_cli

pytestmark = pytest.mark.slow  # sweeps: a Hydra multirun each


def _sweep(tmp_path: Path, *overrides: str) -> dict[str, dict]:
    sweep = tmp_path / "sweep"
    result = run_cli("transferlab-train", *TINY, "test=false", *overrides, f"hydra.sweep.dir={sweep}", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


def test_lr_x_depth_grid_preset(tmp_path):
    # The preset's grid, narrowed from the command line (command-line values win over the preset's).
    summaries = _sweep(tmp_path, "+sweep=lr_x_depth", "optimizer.lr=1e-3", "schedule.freeze_depth=0,2")
    assert sorted(s["status"] for s in summaries.values()) == ["completed", "completed"]
    assert sorted(next(o for o in s["overrides"] if "freeze_depth" in o) for s in summaries.values()) == [
        "schedule.freeze_depth=0",
        "schedule.freeze_depth=2",
    ]


def test_optuna_maximises_and_survives_a_failed_trial(tmp_path):
    summaries = _sweep(
        tmp_path,
        "+sweep=optuna",
        "hydra.sweeper.n_trials=3",
        "schedule.backbone_lr_mult=1.0",
        "schedule.freeze_depth=choice(0,9)",
    )
    assert len(summaries) == 3
    results = yaml.safe_load((tmp_path / "sweep/optimization_results.yaml").read_text())
    completed = [s for s in summaries.values() if s["status"] == "completed"]
    assert results["best_value"] == max(s["best"]["val/acc"] for s in completed)
    failed = [s for s in summaries.values() if s["status"] == "failed"]
    assert all("freeze_depth=9" in s["error"] for s in failed)


def test_parallel_trials_keep_their_own_files_and_a_nan_trial_fails_alone(tmp_path):
    summaries = _sweep(tmp_path, "+sweep=parallel", "optimizer=sgd", "optimizer.lr=1e-3,1e12")
    by_lr = {next(o for o in s["overrides"] if o.startswith("optimizer.lr")): s for s in summaries.values()}
    assert by_lr["optimizer.lr=0.001"]["status"] == "completed"
    diverged = by_lr["optimizer.lr=1000000000000.0"]
    assert diverged["status"] == "failed" and diverged["error"].startswith("RunFailed: train/loss is nan")
    assert diverged["run_dir"] != by_lr["optimizer.lr=0.001"]["run_dir"]
    assert Path(by_lr["optimizer.lr=0.001"]["run_dir"], "checkpoints/last.ckpt").is_file()
    assert not Path(diverged["run_dir"], "checkpoints").exists()
