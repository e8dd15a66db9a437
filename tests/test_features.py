"""The feature cache: frozen-backbone features computed once, reused across epochs and runs, keyed by everything
they depend on, and safe under concurrent writers."""

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab import features
from transferlab.data.sources import LabeledImages, Split
from transferlab.module import load_module
from transferlab.train import train

from helpers import completed


def run(make_cfg, cache: Path, *overrides: str, name: str = "run") -> dict:
    summary = train(make_cfg(f"data.feature_cache={cache}", *overrides, run=name))
    assert completed(summary), summary.get("error")
    return summary


def cache_files(cache: Path) -> set[str]:
    return {p.name for p in cache.glob("*.npy")}


def test_frozen_run_caches_features_the_backbone_computes(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    summary = run(make_cfg, cache, "schedule=frozen", "trainer.max_epochs=2")
    log = summary["feature_cache"]
    # Computed once at the start, reused by the second epoch (the loaders are kept).
    assert [(e["split"], e["hit"]) for e in log] == [("train", False), ("val", False)]
    assert len(cache_files(cache)) == 2

    module = load_module(summary["checkpoints"]["last"])
    from transferlab.cli import instantiate
    from transferlab.data.target import split_options

    options, _, _ = split_options(make_cfg("data.num_workers=0").data)
    dm = instantiate(options, inputs=module.inputs)
    images = torch.stack([dm.datasets["val"][i][0] for i in range(len(dm.datasets["val"]))])
    with torch.no_grad():
        expected = module.backbone.eval()(images).numpy()
    cached = np.load(next(e["file"] for e in log if e["split"] == "val"))
    assert cached.dtype == np.float16
    np.testing.assert_allclose(cached.astype(np.float32), expected, rtol=1e-2, atol=1e-3)


def test_second_run_reuses_the_cache_and_matches_an_uncached_run(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    first = run(make_cfg, cache, "schedule=frozen", "trainer.max_epochs=2", name="first")
    second = run(make_cfg, cache, "schedule=frozen", "trainer.max_epochs=2", name="second")
    assert all(e["hit"] for e in second["feature_cache"])
    assert second["final"]["val/acc"] == first["final"]["val/acc"]  # a hit draws the same random numbers
    assert second["final"]["train/loss"] == first["final"]["train/loss"]

    uncached = train(make_cfg("schedule=frozen", "trainer.max_epochs=2", "data.feature_cache=null", run="plain"))
    assert "feature_cache" not in uncached
    assert abs(uncached["final"]["val/acc"] - first["final"]["val/acc"]) <= 0.01
    assert uncached["final"]["train/loss"] == pytest.approx(first["final"]["train/loss"], abs=1e-2)


@pytest.mark.parametrize(
    "change",
    [
        "seed=7",  # a new random initialisation: other weights
        "data.classes=[0,1,3]",  # other images
        "data.input_size=40",  # another transform
        "data.split_seed=3",  # another split
    ],
)
def test_any_change_makes_a_new_entry(make_cfg, tmp_path, change):
    cache = tmp_path / "cache"
    run(make_cfg, cache, "schedule=frozen", name="base")
    before = cache_files(cache)
    changed = run(make_cfg, cache, "schedule=frozen", change, name="changed")
    assert not any(e["hit"] for e in changed["feature_cache"])
    assert len(cache_files(cache) - before) == 2


def test_fingerprints_see_one_changed_weight_buffer_file_or_pixel(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    base = features.backbone_fingerprint(model)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = torch.nextafter(model[0].weight[0, 0, 0, 0], torch.tensor(1.0))
    assert features.backbone_fingerprint(model) != base
    changed = features.backbone_fingerprint(model)
    model[1].running_mean += 1e-3
    assert features.backbone_fingerprint(model) != changed

    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(path)
    labels = np.array([0])

    def fingerprint(items, labels, transform=str):
        return LabeledImages(Split(items, labels), transform).fingerprint()

    files = fingerprint([path], labels)
    assert fingerprint([path], np.array([1])) != files
    assert fingerprint([path], labels, transform=repr) != files  # another preparation of the same images
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert fingerprint([path], labels) != files
    pixels = np.zeros((4, 4, 3), np.uint8)
    arrays = fingerprint([pixels], labels)
    pixels[0, 0, 0] = 1
    assert fingerprint([pixels], labels) != arrays


def test_augmented_train_split_is_not_cached_but_val_is(make_cfg, tmp_path):
    summary = run(make_cfg, tmp_path / "cache", "schedule=frozen", "data.augment=light")
    assert [e["split"] for e in summary["feature_cache"]] == ["val"]


def test_lp_ft_probes_on_features_then_fine_tunes_on_images(make_cfg, tmp_path):
    summary = run(make_cfg, tmp_path / "cache", "schedule=lp_ft", "schedule.probe_epochs=1", "trainer.max_epochs=2")
    assert {e["epoch"] for e in summary["feature_cache"]} == {0}
    assert [p["trainable_params"] > 10_000 for p in summary["phases"]] == [False, True]
    assert summary["epochs"] == 2


def _writer(path: str, log: str, barrier) -> str:
    def compute(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(1000, 64))
        for i in range(10):  # slow enough that the others arrive while it writes
            out[i * 100 : (i + 1) * 100] = i
            time.sleep(0.05)
        out.flush()

    barrier.wait()
    values, _ = features.load_or_compute(Path(path), compute)
    return features.entry_key(np.asarray(values).tobytes().hex())


@pytest.mark.slow
def test_concurrent_writers_compute_once_and_read_the_whole_entry(tmp_path):
    path, log = tmp_path / "entry.npy", tmp_path / "computed.log"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(4) as pool:
        barrier = manager.Barrier(4)
        digests = pool.starmap(_writer, [(str(path), str(log), barrier)] * 4)
    assert len(log.read_text().split()) == 1
    assert len(set(digests)) == 1
    assert np.load(path)[-1, 0] == 9
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_a_failed_write_leaves_nothing_to_read(tmp_path):
    path = tmp_path / "entry.npy"

    def crash(tmp: Path) -> None:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(10, 4))[:5] = 1
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        features.load_or_compute(path, crash)
    assert list(tmp_path.iterdir()) == []  # no temporary file, no lock file
    values, hit = features.load_or_compute(path, lambda tmp: np.save(tmp, np.ones((10, 4), np.float16)))
    assert not hit and values.shape == (10, 4)
