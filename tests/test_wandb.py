"""W&B in a real offline sweep, read back from the run's own record log with wandb's protobuf definitions."""

import json
import os

import pytest

from transferlab.loggers import wandb_offline

from helpers import TINY, run_cli, run_records


def test_offline_without_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_offline()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline()


@pytest.mark.slow
def test_sweep_is_one_wandb_group_with_config_summary_and_images(tmp_path):
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env["HOME"] = str(tmp_path)  # no credentials: offline by itself
    result = run_cli(
        "transferlab-train",
        "-m",
        *TINY,
        "logger=[csv,wandb]",
        "optimizer.lr=1e-3,2e-3",
        f"hydra.sweep.dir={sweep}",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [run_records(sweep / job) for job in ("0", "1")]
    assert {r["group"] for r in runs} == {"sweep"}  # one group: the multirun folder's name
    assert len({r["id"] for r in runs}) == 2
    for run, lr in zip(runs, ("0.001", "0.002")):
        assert run["name"].endswith(f"optimizer.lr={lr}") and "backbone.name=test_resnet" in run["name"]
        assert run["config"]["backbone"]["name"] == "test_resnet"  # the full resolved config
        assert run["config"]["optimizer"]["lr"] == float(lr)
        summary = json.loads((sweep / ("0" if lr == "0.001" else "1") / "summary.json").read_text())
        assert run["summary"]["best/val/acc"] == pytest.approx(summary["best"]["val/acc"])
        assert run["summary"]["test/acc"] == pytest.approx(summary["test"]["test/acc"])
        assert {"train/loss_epoch", "val/acc", "lr-AdamW/head"} <= run["history_keys"]
        assert {k.split(".")[0] for k in run["history_keys"]} >= {"curves", "confusion"}  # logged images
        assert any(f.startswith("media/images/curves") for f in run["files"])
        assert run["exit_code"] == 0  # wandb.finish() ran for each job
