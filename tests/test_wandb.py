"""W&B in a real offline sweep, read back from the run's own record log with wandb's protobuf definitions."""

import json
import os
import struct
from pathlib import Path

import pytest

from transferlab.loggers import wandb_offline

from conftest import TINY, run_cli


def read_records(path: Path):
    """Decode a .wandb file: wandb's LevelDB-style log (7-byte file header, 32 KiB blocks, 7-byte chunk
    headers: crc32, length, type) of ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: one whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def _run_records(job_dir: Path) -> dict:
    (log,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = {"config": {}, "summary": {}, "history_keys": set(), "files": []}
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["name"], out["id"] = record.run.run_group, record.run.display_name, record.run.run_id
        elif kind == "config":
            out["config"].update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            out["summary"].update({_key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "history":
            out["history_keys"].update(_key(item) for item in record.history.item)
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def test_offline_without_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_offline()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline()


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
    runs = [_run_records(sweep / job) for job in ("0", "1")]
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
