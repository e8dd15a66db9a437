"""Eval and predict on a real trained checkpoint, in-process and through the console scripts."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from transferlab.errors import ConfigError
from transferlab.eval import evaluate
from transferlab.module import load_module
from transferlab.predict import predict

from helpers import compose_config, read_summary, run_cli


def _eval_cfg(trained_run: Path, out: Path, *overrides: str):
    return compose_config(
        f"ckpt_path={trained_run}/checkpoints/best.ckpt",
        f"paths.output_dir={out}",
        "trainer.accelerator=cpu",
        *overrides,
        config_name="eval",
    )


@pytest.mark.parametrize("split", ["test", "val", "train"])
def test_eval_matches_the_training_run(trained_run, tmp_path, split):
    train_summary = json.loads((trained_run / "summary.json").read_text())
    summary = evaluate(_eval_cfg(trained_run, tmp_path, f"split={split}"))

    assert summary["status"] == "completed" and summary["task"] == "eval" and summary["split"] == split
    assert summary["n"] == train_summary["split_sizes"][split]
    assert summary["class_names"] == train_summary["class_names"] == ["0", "1", "2"]
    metrics = summary["metrics"]
    assert set(metrics) == {f"{split}/acc", f"{split}/f1", f"{split}/loss"}  # no top5 with 3 classes
    assert all(0 <= metrics[f"{split}/{name}"] <= 1 for name in ("acc", "f1")) and metrics[f"{split}/loss"] >= 0
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["metrics"] == metrics and written["ckpt_path"] == str(trained_run / "checkpoints/best.ckpt")
    assert (tmp_path / "confusion.png").stat().st_size > 1000

    acc = metrics[f"{split}/acc"]
    assert acc > 0.8  # a model that learned, so that agreement below means something
    if split == "test":  # the same best checkpoint on the same split as the training run's own test
        assert acc == pytest.approx(train_summary["test"]["test/acc"], abs=1e-6)
    elif split == "val":  # best.ckpt is the epoch with the best val/acc
        assert acc == pytest.approx(train_summary["best"]["val/acc"], abs=1e-6)


def test_eval_errors(trained_run, tmp_path):
    with pytest.raises(ConfigError, match=r"^split=bogus: choose one of train, val, test$"):
        evaluate(_eval_cfg(trained_run, tmp_path / "a", "split=bogus"))
    assert json.loads((tmp_path / "a/summary.json").read_text())["status"] == "failed"

    # +data.KEY changes a saved data option: without a test fraction the digits have no test split.
    with pytest.raises(
        ConfigError, match=r"^split=test: the checkpoint's data has no test split \(it has train, val\)"
    ):
        evaluate(_eval_cfg(trained_run, tmp_path / "b", "+data.test_fraction=0"))

    # data.root reaches the data module (digits has no root, so it says so)
    with pytest.raises(ConfigError, match=r"^data.root=/moved is set but data.source=digits"):
        evaluate(_eval_cfg(trained_run, tmp_path / "c", "data.root=/moved"))

    with pytest.raises(ConfigError, match=r"^ckpt_path=.*nothing.ckpt: file not found"):
        evaluate(_eval_cfg(trained_run, tmp_path / "d", f"ckpt_path={tmp_path}/nothing.ckpt"))


def _digit_pngs(folder: Path, count: int = 12) -> dict[Path, int]:
    """Real 8x8 digits of classes 0-2 as PNG files (the checkpoint's transform resizes them): path -> digit."""
    digits = load_digits()
    keep = np.flatnonzero(digits.target < 3)[:count]
    (folder / "sub").mkdir(parents=True)
    labels = {}
    for n, i in enumerate(keep):
        path = folder / ("sub" if n % 2 else "") / f"digit_{i:04d}.png"  # searched recursively
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(path)  # grayscale: made RGB
        labels[path] = int(digits.target[i])
    return dict(sorted(labels.items()))


def _predict_cfg(trained_run: Path, tmp_path: Path, *overrides: str, run: str = "run"):
    return compose_config(
        f"ckpt_path={trained_run}/checkpoints/best.ckpt",
        f"input={tmp_path / 'images'}",
        f"paths.output_dir={tmp_path / run}",
        "trainer.accelerator=cpu",
        *overrides,
        config_name="predict",
    )


def test_predict_labels_a_folder(trained_run, tmp_path, caplog):
    labels = _digit_pngs(tmp_path / "images")
    paths = list(labels)
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "images" / "notes.txt").write_text("not an image file name")
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        output = predict(_predict_cfg(trained_run, tmp_path, "batch_size=5"))

    assert output == tmp_path / "run/predictions.csv"
    assert output.read_text().splitlines()[0] == "path,class,probability"
    rows = list(csv.DictReader(output.open()))
    assert [r["path"] for r in rows] == [str(p) for p in paths]  # one row per image; the broken file skipped
    assert all(r["class"] in ("0", "1", "2") and 0 < float(r["probability"]) <= 1 for r in rows)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 unreadable" in warnings[0]
    assert (tmp_path / "run/bad_files.txt").read_text() == f"{tmp_path / 'images' / 'broken.png'}\n"

    # the same as the model itself on the same images with the checkpoint's own eval transform

    module = load_module(str(trained_run / "checkpoints/best.ckpt"))
    transform = module.inputs.transform("none", train=False)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        probs = module.probabilities(module(batch))
    assert [r["class"] for r in rows] == [module.class_names[i] for i in probs.argmax(1).tolist()]
    assert [float(r["probability"]) for r in rows] == pytest.approx(probs.max(1).values.tolist(), abs=1e-5)
    assert sum(r["class"] == str(labels[p]) for r, p in zip(rows, paths)) >= 10  # and mostly right


def test_predict_errors(trained_run, tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ConfigError, match=r"^input=.*images: no image files \(.jpg, .*\) found$"):
        predict(_predict_cfg(trained_run, tmp_path, run="r1"))
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ConfigError, match=r"^bad_files=error: .*broken.jpg is not a readable image"):
        predict(_predict_cfg(trained_run, tmp_path, "bad_files=error", run="r2"))
    with pytest.raises(ConfigError, match=r"^input=.*: no image files .* found; 1 unreadable file\(s\) skipped$"):
        predict(_predict_cfg(trained_run, tmp_path, run="r3"))
    with pytest.raises(ConfigError, match=r"^input=.*nowhere: folder not found"):
        predict(_predict_cfg(trained_run, tmp_path, f"input={tmp_path}/nowhere", run="r4"))
    with pytest.raises(ConfigError, match=r"^bad_files=maybe: choose one of skip, error$"):
        predict(_predict_cfg(trained_run, tmp_path, "bad_files=maybe", run="r5"))
    _digit_pngs(tmp_path / "one", count=1)
    for i, (override, message) in enumerate([
        ("batch_size=0", r"^batch_size=0: use a whole number >= 1"),
        ("num_workers=-1", r"^num_workers=-1: use a whole number >= 0"),
        ("overwrite=maybe", r"^overwrite=maybe: use true or false$"),  # not read as true
        ("trainer.accelerator=bogus", r"^trainer: pytorch_lightning.Trainer refused its options \(.*accelerator"),
    ]):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            predict(_predict_cfg(trained_run, tmp_path, override, f"input={tmp_path}/one", run=f"r6{i}"))
    assert not list(tmp_path.glob("r*/predictions.csv"))
    failed = read_summary(tmp_path / "r5")  # each folder says how its run ended
    assert failed["status"] == "failed" and failed["error"].startswith("ConfigError: bad_files=maybe")


@pytest.mark.slow
def test_cli_eval_and_predict(trained_run, tmp_path):
    _digit_pngs(tmp_path / "images", count=4)
    ckpt = trained_run / "checkpoints/best.ckpt"
    result = run_cli(
        "transferlab-eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}/eval", "trainer.accelerator=cpu"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("eval test: acc ") and last.endswith(f"-> {tmp_path}/eval"), last
    summary = json.loads((tmp_path / "eval/summary.json").read_text())
    assert summary["status"] == "completed" and summary["overrides"][0] == f"ckpt_path={ckpt}"
    assert (tmp_path / "eval/confusion.png").is_file()

    result = run_cli(
        "transferlab-predict",
        f"ckpt_path={tmp_path}/missing.ckpt",
        f"input={tmp_path}/images",
        f"hydra.run.dir={tmp_path}/predict",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: ckpt_path={tmp_path}/missing.ckpt: file not found")
