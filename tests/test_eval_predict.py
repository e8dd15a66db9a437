"""Eval and predict on a real trained checkpoint, in-process and through the console scripts."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from conftest import compose_config
from transferlab.errors import ConfigError
from transferlab.eval import evaluate
from transferlab.module import load_module
from transferlab.predict import predict

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("split", ["test", "val"])
def test_eval_matches_the_training_run(trained_run, tmp_path, split):
    train_summary = json.loads((trained_run / "summary.json").read_text())
    cfg = compose_config(
        f"ckpt_path={trained_run}/checkpoints/best.ckpt",
        f"split={split}",
        f"paths.output_dir={tmp_path}",
        "trainer.accelerator=cpu",
        config_name="eval",
    )
    summary = evaluate(cfg)
    assert summary["status"] == "completed" and summary["n"] == train_summary["split_sizes"][split]
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == summary["metrics"]
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    acc = summary["metrics"][f"{split}/acc"]
    assert acc > 0.8  # a model that learned, so that agreement below means something
    expected = train_summary["test"]["test/acc"] if split == "test" else train_summary["best"]["val/acc"]
    assert acc == pytest.approx(expected, abs=1e-6)


def test_eval_unknown_split(trained_run, tmp_path):
    cfg = compose_config(
        f"ckpt_path={trained_run}/checkpoints/best.ckpt",
        "split=train",
        f"paths.output_dir={tmp_path}",
        config_name="eval",
    )
    with pytest.raises(ConfigError, match=r"^split=train: choose one of val, test$"):
        evaluate(cfg)


def _digit_pngs(folder: Path, count: int = 12) -> tuple[list[Path], np.ndarray]:
    digits = load_digits()
    keep = np.flatnonzero(digits.target < 3)[:count]
    folder.mkdir(parents=True)
    paths = []
    for i in keep:
        path = folder / f"digit_{i:04d}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).convert("RGB").save(path)
        paths.append(path)
    return paths, digits.target[keep]


def test_predict_labels_a_folder(trained_run, tmp_path):
    paths, _ = _digit_pngs(tmp_path / "images")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")
    ckpt = trained_run / "checkpoints/best.ckpt"
    cfg = compose_config(
        f"ckpt_path={ckpt}",
        f"input_dir={tmp_path / 'images'}",
        f"paths.output_dir={tmp_path}",
        "trainer.accelerator=cpu",
        config_name="predict",
    )
    output = predict(cfg)
    rows = list(csv.DictReader(output.open()))
    assert [r["path"] for r in rows] == [str(p) for p in paths]  # the broken file was skipped
    assert all(r["class"] in ("0", "1", "2") and 0 < float(r["probability"]) <= 1 for r in rows)

    # the same as the model on the same images with the checkpoint's own transform
    from transferlab.data.transforms import build_transform

    module = load_module(str(ckpt))
    transform = build_transform(module.metadata["data_config"], "none", train=False)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        probs = module.probabilities(module(batch))
    assert [r["class"] for r in rows] == [module.class_names[i] for i in probs.argmax(1).tolist()]
    assert [float(r["probability"]) for r in rows] == pytest.approx(probs.max(1).values.tolist(), abs=1e-5)


def test_predict_errors(trained_run, tmp_path):
    ckpt = f"ckpt_path={trained_run}/checkpoints/best.ckpt"
    (tmp_path / "empty").mkdir()
    for overrides, message in [
        ([ckpt, f"input_dir={tmp_path}/nowhere"], r"^input_dir=.*nowhere: folder not found"),
        ([ckpt, f"input_dir={tmp_path}/empty"], r"^input_dir=.*empty: no image files"),
    ]:
        with pytest.raises(ConfigError, match=message):
            predict(compose_config(*overrides, f"paths.output_dir={tmp_path}", config_name="predict"))


def test_cli_eval_and_predict(trained_run, tmp_path):
    _digit_pngs(tmp_path / "images", count=4)
    ckpt = trained_run / "checkpoints/best.ckpt"
    result = subprocess.run(
        [BIN / "transferlab-eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}/eval"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("eval test: acc ")
    assert json.loads((tmp_path / "eval/summary.json").read_text())["status"] == "completed"

    result = subprocess.run(
        [
            BIN / "transferlab-predict",
            f"ckpt_path={tmp_path}/missing.ckpt",
            f"input_dir={tmp_path}/images",
            f"hydra.run.dir={tmp_path}/predict",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: ckpt_path={tmp_path}/missing.ckpt: file not found")
