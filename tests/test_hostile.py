"""What a hostile (or unlucky) user does: odd and broken images, config mistakes, weights and checkpoints that do not
fit, signals, kills, full disks, shared and moved run folders, damaged caches. One test per family; real files,
real processes and signals."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data import ClassificationDataModule
from transferlab.data.images import find_unreadable, load_rgb
from transferlab.errors import ConfigError
from transferlab.sweep_results import load_trials
from transferlab.train import train

from helpers import BIN, TINY, completed, custom_network_run, read_summary, run_cli, tmpfs


def _one_error_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one ``error:`` line a failed command ends with (log lines and warnings may come before it)."""
    assert result.returncode == code, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    return errors[0]


# --- images ---------------------------------------------------------------------------------------------------------


def _png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (grayscale HxW or RGB HxWx3), written by hand: PIL writes no 48-bit RGB."""
    height, width = pixels.shape[:2]
    color = 0 if pixels.ndim == 2 else 2
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_every_camera_and_scanner_mode_comes_out_as_the_right_rgb(tmp_path):
    gray16 = np.full((4, 6), 32896, dtype=np.uint16)  # 128 * 257: mid grey in 16 bits
    gray16[0, 0] = 65535
    _png16(tmp_path / "gray16.png", gray16)
    rgb16 = np.zeros((4, 6, 3), dtype=np.uint16)
    rgb16[..., 0] = 65535  # pure red
    _png16(tmp_path / "rgb16.png", rgb16)
    Image.new("CMYK", (6, 4), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)  # cyan
    rgba = Image.new("RGBA", (6, 4), (255, 0, 0, 0))  # transparent red: shown over white
    rgba.putpixel((1, 1), (0, 0, 255, 255))
    rgba.save(tmp_path / "rgba.png")
    Image.new("LA", (6, 4), (0, 0)).save(tmp_path / "la.png")
    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(tmp_path / "palette.gif", transparency=0)
    Image.new("1", (6, 4), 1).save(tmp_path / "bilevel.png")
    rotated = Image.new("RGB", (6, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated by 90 degrees
    rotated.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=100)

    pixels = {p.stem: np.asarray(load_rgb(p)).astype(int) for p in tmp_path.iterdir()}
    assert all(p.dtype != object and p.shape[-1] == 3 for p in pixels.values())
    assert pixels["gray16"][1, 1].tolist() == [128, 128, 128] and pixels["gray16"][0, 0].tolist() == [255] * 3
    assert pixels["rgb16"][2, 2].tolist() == [255, 0, 0]
    assert np.abs(pixels["cmyk"][2, 2] - [0, 255, 255]).max() <= 3
    assert pixels["rgba"][0, 0].tolist() == [255, 255, 255] and pixels["rgba"][1, 1].tolist() == [0, 0, 255]
    assert pixels["la"][0, 0].tolist() == [255, 255, 255]  # fully transparent black: white
    assert pixels["palette"][0, 0].tolist() == [0, 255, 0]
    assert pixels["bilevel"][0, 0].tolist() == [255, 255, 255]
    assert pixels["rotated"].shape == (6, 4, 3)
    assert find_unreadable(sorted(tmp_path.iterdir())) == {}


def _photo(path: Path, seed: int, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.mark.slow
def test_a_truncated_jpeg_is_screened_out_of_training_and_prediction(trained_run, tmp_path):
    root = tmp_path / "photos"
    for c in ("cat", "dog"):
        for i in range(6):
            data = _photo(root / c / f"{i}.jpg", seed=i + 10 * len(c))
    (root / "dog" / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])  # verify() passes it; decoding fails

    dm = ClassificationDataModule(source="folder", root=str(root), output_dir=str(tmp_path / "run"), input_size=32)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable"):
        dm.setup()
    assert (tmp_path / "run/bad_files.txt").read_text().strip().endswith("cut.jpg")
    with pytest.raises(ConfigError, match=r"cut.jpg is not a readable image \(OSError: image file is truncated"):
        ClassificationDataModule(source="folder", root=str(root), bad_files="error", input_size=32).setup()

    result = run_cli(
        "transferlab-predict",
        f"ckpt_path={trained_run}/checkpoints/best.ckpt",
        f"input={root}",
        f"hydra.run.dir={tmp_path}/predict",
        "trainer.accelerator=cpu",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "predict/predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 and not any("cut.jpg" in r for r in rows)
    assert (tmp_path / "predict/bad_files.txt").read_text().strip().endswith("cut.jpg")


# --- config ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "option"),
    [
        ("optimizer.lrr=1e-3", "optimizer.lrr"),  # an unknown key
        ("+optimiser=adamw", "+optimiser=adamw"),  # an unknown key added with +
        ("+seed=1", "+seed"),  # + on a key that exists
        ("optimizer.lr=[1,2", "optimizer.lr=[1,2"),  # Hydra's own parse error
        ("optimizer.lr=nan", "optimizer.lr=nan"),
        ("seed=abc", "seed=abc"),
        ("data.samples_per_class=five", "data.samples_per_class=five"),
        ("head=mlp head.hidden_sizes=[-4]", "head.hidden_sizes=[-4]"),
        ("trainer.accelerator=gpu", "trainer.accelerator=gpu"),  # no GPU here (the suite runs on CPUs)
        ("monitor=val/acc5", "monitor=val/acc5"),  # nothing logs it: refused before the first epoch
        ("+data.colour=rgb", "data:"),  # an instantiation failure, wrapped
    ],
)
def test_config_mistakes_are_one_line_before_any_epoch(tmp_path, override, option):
    if override.startswith("trainer.accelerator") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_cli("transferlab-train", *TINY, *override.split(), f"hydra.run.dir={tmp_path}/run")
    assert _one_error_line(result).startswith(f"error: {option}")
    assert not (tmp_path / "run/metrics.csv").exists()


# --- weights and checkpoints ----------------------------------------------------------------------------------------


def test_weights_whose_every_tensor_has_the_wrong_shape_are_an_error(make_cfg, tmp_path):
    from safetensors.torch import save_file

    from transferlab.cli import instantiate

    model = instantiate(make_cfg().backbone).model
    wrong = {k: torch.zeros(*(s + 1 for s in v.shape)) if v.ndim else v for k, v in model.state_dict().items()}
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(ConfigError, match=r"0 of \d+ tensors fit the model \(\d+ of another shape"):
        train(make_cfg(f"backbone.weights={tmp_path}/wrong.safetensors"))


@pytest.mark.slow
def test_a_checkpoint_that_is_truncated_or_of_another_model_is_one_line(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints/best.ckpt"
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[:5000])
    images = tmp_path / "images"
    _photo(images / "a.jpg", seed=1)
    for command, args in (
        ("transferlab-train", [*TINY, f"ckpt_path={cut}"]),
        ("transferlab-eval", [f"ckpt_path={cut}", "trainer.accelerator=cpu"]),
        ("transferlab-predict", [f"ckpt_path={cut}", f"input={images}", "trainer.accelerator=cpu"]),
    ):
        line = _one_error_line(run_cli(command, *args, f"hydra.run.dir={tmp_path}/{command}"))
        assert line.startswith(f"error: ckpt_path={cut}: not a readable checkpoint"), line
    # The trained run has 3 classes and test_convnext: resuming it as a 2-class test_resnet run.
    other = run_cli(
        "transferlab-train", *TINY, "data.classes=[0,1]", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}/o"
    )
    assert "a checkpoint of another model" in _one_error_line(other)


# --- the run folder tells the truth ---------------------------------------------------------------------------------


def _start(run: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [BIN / "transferlab-train", *TINY, "trainer.max_epochs=200", f"hydra.run.dir={run}", *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_epoch(run: Path, cli: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not (run / "metrics.csv").is_file():
        assert cli.poll() is None and time.time() < deadline, "the run ended before its first epoch"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_as_interrupted_with_its_exit_status(tmp_path, signum, code):
    run = tmp_path / "run"
    cli = _start(run)
    _wait_for_epoch(run, cli)
    cli.send_signal(signum)
    _, err = cli.communicate(timeout=120)
    assert cli.returncode == code, err[-2000:]
    summary = read_summary(run)
    assert summary["status"] == "interrupted" and summary["reason"] == signal.Signals(signum).name
    assert "Traceback" not in err
    assert not [p for p in run.rglob("*") if ".partial" in p.name or p.name.startswith(".summary.json.")]


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_refused_second_run_leaves_the_finished_folder_byte_for_byte(tmp_path):
    run, images = tmp_path / "run", tmp_path / "images"
    assert run_cli("transferlab-train", *TINY, f"hydra.run.dir={run}").returncode == 0
    _photo(images / "a.jpg", seed=1)
    (images / "notes.jpg").write_text("not an image: skipped, and never replaced")
    before = _files(run)
    ckpt = f"ckpt_path={run}/checkpoints/best.ckpt"
    for command, args in (
        ("transferlab-train", [*TINY, "optimizer.lr=0.5"]),
        ("transferlab-eval", [ckpt]),
        ("transferlab-predict", [ckpt, f"input={images}"]),
    ):
        result = run_cli(command, *args, f"hydra.run.dir={run}")
        assert _one_error_line(result).startswith(f"error: paths.output_dir={run}: holds a completed train run")
    # A resume refused once the model is built (Hydra has written its files by then): they are put back.
    resume = run_cli("transferlab-train", *TINY, "data.classes=[0,1]", "ckpt_path=last", f"hydra.run.dir={run}")
    assert "a checkpoint of another model" in _one_error_line(resume)
    assert _files(run) == before  # .hydra/ and train.log included

    predicted = tmp_path / "predicted"
    assert run_cli("transferlab-predict", ckpt, f"input={images}", f"hydra.run.dir={predicted}").returncode == 0
    assert read_summary(predicted)["status"] == "completed" and read_summary(predicted)["n"] == 1
    first = _files(predicted)
    again = run_cli("transferlab-predict", ckpt, f"input={images}", f"hydra.run.dir={predicted}")
    assert "holds a completed predict run" in _one_error_line(again)
    into_input = run_cli(
        "transferlab-predict",
        ckpt,
        f"input={images}",
        f"output={images}/notes.jpg",
        "overwrite=true",
        f"hydra.run.dir={tmp_path}/p2",
    )
    assert _one_error_line(into_input).startswith(f"error: output={images}/notes.jpg: is one of the inputs")
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text("an earlier prediction")
    replacing = run_cli(
        "transferlab-predict", ckpt, f"input={images}", f"output={elsewhere}", f"hydra.run.dir={tmp_path}/p3"
    )
    assert _one_error_line(replacing).startswith(f"error: output={elsewhere}: exists")
    assert _files(predicted) == first and elsewhere.read_text() == "an earlier prediction"
    assert (images / "notes.jpg").read_text().startswith("not an image")

    # overwrite=true empties the folder first: nothing of the old run is left beside the new one.
    (predicted / "stale.txt").write_text("from the run before")
    redo = run_cli(
        "transferlab-eval", ckpt, "split=val", "overwrite=true", "trainer.accelerator=cpu", f"hydra.run.dir={predicted}"
    )
    assert redo.returncode == 0, redo.stderr[-2000:]
    assert not (predicted / "stale.txt").exists() and not (predicted / "predictions.csv").exists()
    assert read_summary(predicted)["task"] == "eval"


@pytest.mark.slow
def test_of_two_runs_started_together_into_one_folder_the_refused_one_writes_nothing_there(tmp_path):
    run = tmp_path / "run"
    starts = {
        lr: subprocess.Popen(
            [BIN / "transferlab-train", *TINY, f"optimizer.lr={lr}", f"hydra.run.dir={run}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lr in ("0.001", "0.002")
    }
    ended = {lr: (p.wait(timeout=300), p.stderr.read()) for lr, p in starts.items()}
    assert sorted(code for code, _ in ended.values()) == [0, 2], ended
    winner = next(lr for lr, (code, _) in ended.items() if code == 0)
    loser = next(err for code, err in ended.values() if code == 2)
    assert loser.strip().splitlines()[-1].startswith(f"error: paths.output_dir={run}: ")
    assert f"optimizer.lr={winner}" in (run / ".hydra/overrides.yaml").read_text()
    assert f"optimizer.lr={winner}" in read_summary(run)["overrides"]

    from filelock import FileLock

    busy = tmp_path / "busy"
    busy.mkdir()
    with FileLock(str(busy / ".lock")):  # a run that has just started there, before its first summary.json
        result = run_cli("transferlab-train", *TINY, f"hydra.run.dir={busy}")
    assert "another run (another process) is using this folder" in _one_error_line(result)
    assert sorted(p.name for p in busy.iterdir()) == [".lock"]  # Hydra wrote no .hydra/ there


@pytest.mark.slow
def test_a_sweep_into_a_finished_sweep_folder_is_refused_before_hydra_writes(tmp_path):
    sweep = tmp_path / "sweep"
    args = [*TINY, "test=false", "optimizer.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}"]
    assert run_cli("transferlab-train", "-m", *args).returncode == 0
    before = _files(sweep)
    again = run_cli("transferlab-train", "-m", *args[:-2], "optimizer.lr=5e-1", f"hydra.sweep.dir={sweep}")
    line = _one_error_line(again)
    assert line.startswith(f"error: hydra.sweep.dir={sweep}: holds a sweep (2 completed); resume it"), line
    assert _files(sweep) == before  # multirun.yaml, every trial's .hydra/ and train.log included

    redo = run_cli(
        "transferlab-train", "-m", *args[:-2], "optimizer.lr=5e-4", "overwrite=true", f"hydra.sweep.dir={sweep}"
    )
    assert redo.returncode == 0, redo.stderr[-2000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]  # trial 1 of the old sweep is gone
    assert "optimizer.lr=0.0005" in read_summary(sweep / "0")["overrides"]


@pytest.mark.slow
def test_a_killed_run_is_dead_in_the_report_and_its_folder_is_not_reused_by_accident(tmp_path):
    sweep = tmp_path / "sweep"
    cli = _start(sweep / "0")
    _wait_for_epoch(sweep / "0", cli)
    cli.kill()
    cli.wait()
    assert read_summary(sweep / "0")["status"] == "running"  # kill -9 leaves no word
    assert [t.status for t in load_trials(sweep)] == ["dead"]
    again = run_cli("transferlab-train", *TINY, f"hydra.run.dir={sweep}/0")
    assert "holds a dead train run" in _one_error_line(again)


def test_a_folder_belongs_to_one_run_and_a_finished_one_is_kept(make_cfg, tmp_path):
    run = tmp_path / "run"
    train(make_cfg("test=false"))
    before = (run / "summary.json").read_text(), (run / "checkpoints/last.ckpt").read_bytes()
    with pytest.raises(ConfigError, match=r"holds a completed train run .*ckpt_path=last.*overwrite=true"):
        train(make_cfg("test=false"))
    assert ((run / "summary.json").read_text(), (run / "checkpoints/last.ckpt").read_bytes()) == before

    from filelock import FileLock

    with FileLock(str(run / ".lock")):  # as another live run holds it
        with pytest.raises(ConfigError, match=r"another run .* is using this folder"):
            train(make_cfg("test=false", "overwrite=true"))
    assert completed(train(make_cfg("test=false", "overwrite=true")))


def test_a_moved_run_resumes_from_its_own_checkpoints_and_a_failed_resume_keeps_the_summary(make_cfg, tmp_path):
    train(make_cfg("trainer.max_epochs=2", run="old"))
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "old", moved)
    summary = train(make_cfg("trainer.max_epochs=3", "ckpt_path=last", run="moved"))
    assert completed(summary) and summary["epochs"] == 3
    assert summary["checkpoints"]["best"].startswith(str(moved)) and "test" in summary

    finished = (moved / "summary.json").read_text()
    with pytest.raises(ConfigError, match=r"a checkpoint of another model"):
        train(make_cfg("trainer.max_epochs=4", "ckpt_path=last", "data.classes=[0,1]", run="moved"))
    assert (moved / "summary.json").read_text() == finished


@pytest.mark.slow
def test_a_full_or_read_only_disk_is_one_line_and_leaves_no_temporary_files(tmp_path):
    with tmpfs(tmp_path / "disk", "size=600k") as disk:
        result = run_cli("transferlab-train", *TINY, "test=false", f"hydra.run.dir={disk}/run")
        line = _one_error_line(result)
        assert "No space left on device" in line or "file write failed" in line, line
        leftovers = [p.name for p in (disk / "run").rglob("*") if ".partial" in p.name or ".tmp" in p.name]
        assert leftovers == [] and not list((disk / "run").glob(".summary.json.*"))
        summary = read_summary(disk / "run")  # rewritten in place: there was no room for a new file
        assert summary["status"] == "failed" and ("No space left" in summary["error"] or "write" in summary["error"])

        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        read_only = run_cli("transferlab-train", *TINY, f"hydra.run.dir={disk}/other")
        assert "cannot be written (read-only or not yours)" in _one_error_line(read_only)


# --- caches and reports ---------------------------------------------------------------------------------------------


def _cache_log(run: Path) -> list[tuple[str, bool]]:
    return [(e["split"], e["hit"]) for e in read_summary(run)["feature_cache"]]


@pytest.mark.slow
def test_the_cache_notices_edited_code_and_keeps_features_fp16_cannot_hold(tmp_path):
    cache = tmp_path / "cache"
    assert custom_network_run(tmp_path, cache, tmp_path / "a", "1.0").returncode == 0
    assert custom_network_run(tmp_path, cache, tmp_path / "b", "1.0").returncode == 0
    assert _cache_log(tmp_path / "b") == [("train", True), ("val", True)]
    # The same weights, an edited forward(): features far beyond fp16's range (65504).
    huge = custom_network_run(tmp_path, cache, tmp_path / "c", "1e6")
    assert huge.returncode == 0, huge.stderr[-2000:]
    assert _cache_log(tmp_path / "c") == [("train", False), ("val", False)]
    entry = np.load(read_summary(tmp_path / "c")["feature_cache"][1]["file"])
    assert entry.dtype == np.float32 and np.isfinite(entry).all() and np.abs(entry).max() > 65504

    broken = custom_network_run(tmp_path, cache, tmp_path / "d", "float('nan')")
    line = _one_error_line(broken, code=1)
    assert line.startswith("error: the backbone's features of example 0 are not finite (nan)"), line
    summary = read_summary(tmp_path / "d")
    assert summary["status"] == "failed" and "not finite" in summary["error"]
    assert sorted(p.suffix for p in cache.iterdir()) == [".npy"] * 4  # no temporary or lock file


@pytest.mark.slow
def test_a_full_disk_under_the_cache_is_one_line_and_leaves_nothing_there(tmp_path):
    with tmpfs(tmp_path / "cache", "size=64k") as cache:
        # 512 features: 0.1 MB of val features, no room for them
        result = custom_network_run(tmp_path, cache, tmp_path / "run", "1.0", width=512)
        line = _one_error_line(result)
        assert re.match(rf"error: data.feature_cache={cache}: no space for the (train|val) features", line), line
        assert read_summary(tmp_path / "run")["status"] == "failed"
        # the train entry was whole before the disk filled; nothing temporary is left beside it
        assert [p.name for p in cache.iterdir() if p.suffix != ".npy" or ".tmp" in p.name] == []


@pytest.mark.slow
def test_run_folder_files_get_the_umask_and_a_diverging_run_is_one_line(tmp_path):
    result = run_cli(
        "transferlab-train",
        *TINY,
        "optimizer.lr=1e12",
        "test=false",
        f"hydra.run.dir={tmp_path}/run",
        preexec_fn=lambda: os.umask(0o022),
    )
    line = _one_error_line(result, code=1)
    assert line.startswith("error: train/loss is nan in epoch 0; lower optimizer.lr"), line
    assert read_summary(tmp_path / "run")["status"] == "failed"
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert modes["summary.json"] == 0o644, modes


def test_a_damaged_cache_entry_is_computed_again_and_an_unusable_cache_is_bypassed(make_cfg, tmp_path):
    cache = tmp_path / "cache"
    first = train(make_cfg("schedule=frozen", f"data.feature_cache={cache}", "test=false", run="first"))
    entry = Path(first["feature_cache"][0]["file"])
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"is damaged; computing it again"):
        second = train(make_cfg("schedule=frozen", f"data.feature_cache={cache}", "test=false", run="second"))
    assert [e["hit"] for e in second["feature_cache"]] == [False, True]
    assert second["final"]["val/acc"] == first["final"]["val/acc"]

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match=r"cannot be written.*features not cached"):
        third = train(make_cfg("schedule=frozen", f"data.feature_cache={blocked}/x", "test=false", run="third"))
    assert third["status"] == "completed" and third["final"]["val/acc"] == first["final"]["val/acc"]


@pytest.mark.slow
def test_the_report_shows_a_malformed_trial_as_unreadable_and_goes_on(trained_run, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(trained_run, sweep / "0")
    for job, text in (("1", "{not json"), ("2", '["a list"]'), ("3", '{"status": "completed", "best": 3}')):
        (sweep / job).mkdir()
        (sweep / job / "summary.json").write_text(text)
    (sweep / "1" / "metrics.csv").write_bytes(b"\xff\xfe garbage\x00")
    result = run_cli("transferlab-report", sweep)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [t.status for t in load_trials(sweep)] == ["completed", "unreadable", "unreadable", "unreadable"]
    assert os.path.isfile(sweep / "report.html")
