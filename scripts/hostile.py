"""Hostile cases against the installed CLI: what a careless or unlucky user feeds transferlab.

    python scripts/hostile.py [--keep DIR]

Every case runs a console script (transferlab-train, -eval, -predict, -export, -report) in a fresh folder and is judged:
- clean: the expected outcome; a mistake ends with one ``error:`` line and exit status 2 (a run that fails by
  itself, such as a diverged loss: exit status 1; a signal: 130/143);
- traceback: a traceback, Hydra's multi-line block, or an error that is not one line;
- silent: it went on (exit 0) where it should have refused, or the result is wrong;
- lost: something the user had (a finished run, an input file) was overwritten or removed.
Each case's folder and the shared finished folders are hashed file by file before its command: a changed or
removed file outside what the case owns is ``lost``. The last line is ``N cases: clean X, traceback T, silent S,
lost L``. About 18 minutes on 2 CPU cores (107 cases, then the signal, concurrency, cache, DDP and disk cases).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' tiny run and user network
from helpers import BIN, TINY, custom_network_run  # noqa: E402


@dataclass
class Case:
    name: str
    command: str
    args: list[str]
    expect: str = "error"  # error | ok | a custom judge
    judge: Callable[[subprocess.CompletedProcess, Path], str] | None = None
    setup: Callable[[Path], None] | None = None
    owns: tuple[str, ...] = ()  # folders of the case the command may change (a run it resumes or overwrites)
    env: dict[str, str] | None = None


def run(command: str, *args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / command, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def one_error_line(result: subprocess.CompletedProcess) -> bool:
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    return result.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0]


def one_failed_line(result: subprocess.CompletedProcess) -> bool:
    """A run that failed by itself (diverged, features not finite): one ``error:`` line and exit status 1."""
    lines = result.stderr.strip().splitlines()
    return (
        result.returncode == 1 and bool(lines) and lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    )


def verdict(result: subprocess.CompletedProcess, expect: str) -> str:
    broke = "Traceback" in result.stderr or "Error executing job" in result.stderr
    if expect == "error":
        if one_error_line(result) and not broke:
            return "clean"
        return "silent" if result.returncode == 0 else "traceback"
    if result.returncode == 0 and not broke:
        return "clean"
    return "traceback"


# --- inputs -----------------------------------------------------------------------------------------------------


def photo(path: Path, seed: int, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def photo_tree(root: Path, odd: dict[str, Callable[[Path], None]] | None = None) -> Path:
    for c, name in enumerate(("cat", "dog")):
        for i in range(8):
            photo(root / name / f"{i}.jpg", seed=10 * c + i)
    for file, make in (odd or {}).items():
        make(root / file)
    return root


def truncated(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = photo(path, seed=99)
    path.write_bytes(data[: len(data) * 2 // 3])


def png16(path: Path) -> None:
    """A mid-grey 16-bit grayscale PNG (PIL's plain conversion makes it white)."""
    height, width = 40, 48
    raw = b"".join(b"\x00" + np.full(width, 32896, dtype=">u2").tobytes() for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def odd_modes(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    png16(root / "gray16.png")
    Image.new("CMYK", (48, 40), (0, 255, 0, 0)).save(root / "cmyk.jpg")
    Image.new("RGBA", (48, 40), (0, 0, 0, 0)).save(root / "clear.png")
    Image.new("P", (48, 40), 3).save(root / "palette.gif")
    Image.new("I;16", (48, 40)).save(root / "black16.tif")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def snapshot(*folders: Path) -> dict[Path, str]:
    """Every file under ``folders`` (hidden ones and .hydra/ included) with its hash."""
    return {p: digest(p) for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()}


def changed(before: dict[Path, str], owned: list[Path]) -> list[Path]:
    """Files of ``before`` that were changed or removed, outside the ``owned`` folders."""
    return [p for p, h in before.items() if digest(p) != h and not any(p.is_relative_to(o) for o in owned)]


# --- the cases --------------------------------------------------------------------------------------------------


def cases(work: Path, ckpt: Path, done: Path, sweep: Path, predicted: Path) -> list[Case]:
    """``ckpt``: a trained 3-class test_resnet checkpoint; ``done``: its completed run folder; ``sweep``: a finished
    2-trial sweep folder; ``predicted``: a finished predict run's folder."""
    c: list[Case] = []
    for args in (
        ["optimizer.lrr=1e-3"], ["+optimiser.lr=1e-3"], ["+seed=3"], ["optimizer.lr=[1,2"], ["optimizer.lr=nan"],
        ["optimizer.lr=inf"], ["optimizer.lr=abc"], ["optimizer.lr=-1"], ["seed=abc"], ["seed=-5"],
        ["data.samples_per_class=abc"], ["data.samples_per_class=0"], ["data.train_fraction=nan"],
        ["data.val_fraction=1.5"], ["data.batch_size=0"], ["data.batch_size=2.5"], ["data.num_workers=-1"],
        ["data.input_size=abc"], ["data.mean=[1,2]"], ["data.classes=[1,1]"], ["data.classes=[0,11]"],
        ["head=mlp", "head.hidden_sizes=[-4]"], ["head=mlp", "head.hidden_sizes=abc"], ["head.dropout=2"],
        ["head=conv"], ["schedule=cyclic"], ["schedule.freeze_depth=99"], ["schedule.freeze_depth=-1"],
        ["schedule.backbone_lr_mult=0"], ["schedule.bn_mode=eval"], ["schedule=gradual", "schedule.unfreeze_every=0"],
        ["trainer.max_epochs=0"], ["trainer.precision=8"], ["trainer.accelerator=gpu"], ["monitor=val/acc5"],
        ["monitor_mode=up"], ["label_smoothing=nan"], ["test=maybe"], ["+data.colour=rgb"],
        ["backbone.name=resnet_nope"], ["backbone.weights=~/no-such-weights.pth"], ["ckpt_path=/no/such.ckpt"],
        ["data=folder"], ["data=folder", "data.root=/no/such/folder"],
        ["adapt=dann"], ["adapt=gan"], ["adapt=dann", "data.target.root=/no/such/folder"],
        ["adapt=dann", "data=digits_m", "adapt.adversarial_weight=nan"], ["adapt=mcc", "data=digits_m", "adapt.temperature=0"],
        ["adapt=dann", "data=digits_m", "schedule=frozen"], ["data=digits_m", "data.target.source=mnist"],
        ["data=digits_m", "data.target.colour=rgb"], ["data=digits_m", "data.photos=/no/such/folder"],
        # Partial targets (called mid-run), Hydra's own options, the scheduler's ranges.
        ["+optimizer.lrr=1"], ["+trainer.fast_dev_runn=1"], ["hydra.sweeper.foo=1"],
        ["+sweep=optuna", "hydra.sweeper.n_trials=abc"], ["optimizer.weight_decay=-1"],
        ["optimizer=sgd", "optimizer.momentum=-0.5"], ["lr_scheduler.min_lr_ratio=-1"],
        ["lr_scheduler.warmup_steps=-5"], ["lr_scheduler.warmup_steps=100000"],
        ["lr_scheduler=step", "lr_scheduler.milestones=[0.8,0.2]"], ["lr_scheduler=step", "lr_scheduler.gamma=0"],
        ["adapt=dann", "data=digits_m", "adapt.adversarial_weight=1e30"],
        ["backbone=custom", "backbone.name=null", "backbone.model._target_=torchvision.models.resnett18"],
    ):  # fmt: skip
        c.append(Case(f"train {' '.join(args)}", "transferlab-train", [*TINY, *args]))
    # No source data (data=source_free): only a source-free run, chosen by a target metric, of the same model.
    no_source = ["data=source_free", "data.input_size=null", "data.target.source=digits_m"]
    shot = ["adapt=shot", "adapt.source_ckpt=<ckpt>", *no_source]
    for args in (no_source, shot, [*shot, "monitor=target/im", "class_weights=balanced"],
                 [*shot, "monitor=target/im", "head=mlp"]):  # fmt: skip
        given = [a.replace("<ckpt>", str(ckpt)) for a in args]
        c.append(Case(f"train {' '.join(args)}", "transferlab-train", [*TINY, *given]))

    def diverged(result: subprocess.CompletedProcess, case_dir: Path) -> str:
        if one_failed_line(result) and _status(case_dir / "run") == "failed":
            return "clean"
        return "silent" if result.returncode == 0 else "traceback"

    def deeper_vit(case_dir: Path) -> None:
        import timm
        from safetensors.torch import save_file

        save_file(timm.create_model("test_vit", depth=7, num_classes=0).state_dict(), case_dir / "deep.safetensors")

    def photos(case_dir: Path) -> None:
        for i in range(2):
            photo(case_dir / f"photos/{i}.jpg", seed=i, size=(64, 48))
        truncated(case_dir / "photos/cut.jpg")

    def linked_class(case_dir: Path) -> None:
        photo_tree(case_dir / "in")
        (case_dir / "in/all").symlink_to(case_dir / "in")

    c += [
        Case("train optimizer.lr=1e12 (diverges)", "transferlab-train", [*TINY, "optimizer.lr=1e12"], judge=diverged),
        Case("train weights_match=order <a 7-block vit into 6 blocks>", "transferlab-train",
             [*TINY, "backbone.name=test_vit", "backbone.weights={dir}/deep.safetensors", "backbone.weights_match=order"],
             setup=deeper_vit),
        Case("train data=digits_m data.photos=<a truncated jpeg>", "transferlab-train",
             [*TINY, "data=digits_m", "data.photos={dir}/photos"], setup=photos,
             judge=lambda r, d: verdict(r, "ok") if "skipped 1 unreadable photo" in r.stderr else "silent"),
        Case("train data=folder <a class folder linked to its split>", "transferlab-train",
             [*TINY[:1], "data=folder", "data.root={dir}/in", "trainer.max_epochs=1", "logger=none",
              "data.input_size=32", "data.num_workers=0"], setup=linked_class),
    ]  # fmt: skip

    # Weights and checkpoints that do not fit.
    def weights(kind: str) -> Callable[[Path], None]:
        def make(case_dir: Path) -> None:
            import torch
            from safetensors.torch import save_file

            target = case_dir / f"w.{kind}"
            if kind == "pth":
                target.write_bytes(ckpt.read_bytes()[:4000])  # truncated
            elif kind == "safetensors":
                import timm

                state = timm.create_model("test_resnet", num_classes=0).state_dict()
                save_file(
                    {k: torch.zeros(*(s + 1 for s in v.shape)) if v.ndim else v for k, v in state.items()}, target
                )
            else:  # a pickle that would run code
                target.write_bytes(b"cos\nsystem\n(S'touch " + str(case_dir / "pwned").encode() + b"'\ntR.")

        return make

    for kind in ("pth", "safetensors", "pkl"):
        c.append(Case(f"train backbone.weights=<bad {kind}>", "transferlab-train", [*TINY, "backbone.weights={dir}/w." + kind],
                      setup=weights(kind), judge=lambda r, d: "silent" if (d / "pwned").exists() else verdict(r, "error")))  # fmt: skip

    def cut_ckpt(case_dir: Path) -> None:
        (case_dir / "cut.ckpt").write_bytes(ckpt.read_bytes()[:5000])

    c += [
        Case("train ckpt_path=<truncated>", "transferlab-train", [*TINY, "ckpt_path={dir}/cut.ckpt"], setup=cut_ckpt),
        Case("train ckpt_path=<2-class model>", "transferlab-train", [*TINY, "data.classes=[0,1]", f"ckpt_path={ckpt}"]),
        Case("train ckpt_path=<other architecture>", "transferlab-train", [*TINY, "backbone.name=test_convnext", f"ckpt_path={ckpt}"]),
        Case("eval ckpt_path=<truncated>", "transferlab-eval", ["ckpt_path={dir}/cut.ckpt", "trainer.accelerator=cpu"], setup=cut_ckpt),
        Case("eval ckpt_path=<not a checkpoint>", "transferlab-eval", ["ckpt_path={dir}/x.ckpt", "trainer.accelerator=cpu"],
             setup=lambda d: (d / "x.ckpt").write_text("hello")),
        Case("eval split=bogus", "transferlab-eval", [f"ckpt_path={ckpt}", "split=bogus"]),
        Case("predict ckpt_path=<truncated>", "transferlab-predict", ["ckpt_path={dir}/cut.ckpt", "input={dir}/in"],
             setup=lambda d: (cut_ckpt(d), photo(d / "in/a.jpg", 1))),
        Case("predict input=<empty>", "transferlab-predict", [f"ckpt_path={ckpt}", "input={dir}/in"],
             setup=lambda d: (d / "in").mkdir()),
        Case("predict bad_files=maybe", "transferlab-predict", [f"ckpt_path={ckpt}", "input={dir}", "bad_files=maybe"]),
        Case("predict output=<the checkpoint>", "transferlab-predict",
             ["ckpt_path={dir}/c.ckpt", "input={dir}/in", "output={dir}/c.ckpt"],
             setup=lambda d: (shutil.copy(ckpt, d / "c.ckpt"), photo(d / "in/a.jpg", 1)),
             judge=lambda r, d: "lost" if digest(d / "c.ckpt") != digest(ckpt) else verdict(r, "error")),
        Case("export ckpt_path=<truncated>", "transferlab-export", ["ckpt_path={dir}/cut.ckpt"], setup=cut_ckpt),
        Case("export format=tflite", "transferlab-export", [f"ckpt_path={ckpt}", "format=tflite"]),
        Case("predict model=<an .onnx of junk, no json>", "transferlab-predict", ["model={dir}/m.onnx", "input={dir}/in"],
             setup=lambda d: ((d / "m.onnx").write_text("junk"), photo(d / "in/a.jpg", 1))),
    ]  # fmt: skip

    # Images: broken and odd files.
    def labelled_16(result: subprocess.CompletedProcess, case_dir: Path) -> str:
        out = case_dir / "run/predictions.csv"
        if result.returncode != 0 or not out.is_file():
            return verdict(result, "ok")
        rows = out.read_text().splitlines()[1:]
        listed = (case_dir / "run/bad_files.txt").read_text() if (case_dir / "run/bad_files.txt").is_file() else ""
        return "clean" if len(rows) == 16 and "cut.jpg" in listed else "silent"

    c += [
        Case("predict <a truncated jpeg among 16>", "transferlab-predict", [f"ckpt_path={ckpt}", "input={dir}/in"],
             setup=lambda d: photo_tree(d / "in", {"cat/cut.jpg": truncated}), judge=labelled_16),
        Case("train data=folder <a truncated jpeg> bad_files=error", "transferlab-train",
             [*TINY[:1], "data=folder", "data.root={dir}/in", "data.bad_files=error", "data.val_fraction=0.25",
              "trainer.max_epochs=1", "logger=none", "data.input_size=32", "data.num_workers=0"],
             setup=lambda d: photo_tree(d / "in", {"cat/cut.jpg": truncated})),
        Case("train data=folder <a truncated jpeg> bad_files=skip", "transferlab-train",
             [*TINY[:1], "data=folder", "data.root={dir}/in", "data.val_fraction=0.25", "trainer.max_epochs=1",
              "logger=none", "data.input_size=32", "data.num_workers=0"],
             setup=lambda d: photo_tree(d / "in", {"cat/cut.jpg": truncated}),
             judge=lambda r, d: verdict(r, "ok") if "cut.jpg" in _read(d / "run/bad_files.txt") else "silent"),
        Case("predict <16-bit, CMYK, alpha, palette images>", "transferlab-predict", [f"ckpt_path={ckpt}", "input={dir}/in"],
             setup=lambda d: odd_modes(d / "in"),
             judge=lambda r, d: verdict(r, "ok") if len(_read(d / "run/predictions.csv").splitlines()) == 6 else "silent"),
        Case("report <malformed trials>", "transferlab-report", ["{dir}/sweep"], expect="ok",
             setup=lambda d: _malformed_sweep(d / "sweep", done)),
        Case("report --metric val/bogus", "transferlab-report", ["{dir}/sweep", "--metric", "val/bogus"],
             setup=lambda d: shutil.copytree(sweep, d / "sweep"), judge=_report_refused),
    ]  # fmt: skip

    # The run folder: every file of a finished folder is hashed before the command (main), so a refused command
    # that rewrote .hydra/ or a log is "lost".
    def copy(source: Path, name: str, images: bool = False) -> Callable[[Path], None]:
        def make(case_dir: Path) -> None:
            shutil.copytree(source, case_dir / name)
            if images:
                photo(case_dir / "in/a.jpg", 1)
                (case_dir / "in/notes.jpg").write_text("not an image: skipped, and never replaced")

        return make

    def emptied(result: subprocess.CompletedProcess, case_dir: Path) -> str:
        if result.returncode != 0:
            return verdict(result, "ok")
        stale = [n for n in ("stale.txt", "predictions.csv") if (case_dir / "redo" / n).exists()]
        return "silent" if stale or _status(case_dir / "redo") != "completed" else "clean"

    def stale(case_dir: Path) -> None:
        shutil.copytree(predicted, case_dir / "redo")
        (case_dir / "redo/stale.txt").write_text("from the run before")

    predict_args = [f"ckpt_path={ckpt}", "input={dir}/in"]
    c += [
        Case("train into a completed run's folder (optimizer.lr=0.5)", "transferlab-train",
             [*TINY, "optimizer.lr=0.5", "hydra.run.dir={dir}/done"], setup=copy(done, "done")),
        Case("resume a moved run (ckpt_path=last)", "transferlab-train",
             [*TINY, "trainer.max_epochs=2", "ckpt_path=last", "hydra.run.dir={dir}/moved"],
             setup=copy(done, "moved"), judge=_resumed_in_place, owns=("moved",)),
        Case("resume a completed run with a mismatched model", "transferlab-train",
             [*TINY, "data.classes=[0,1]", "ckpt_path=last", "hydra.run.dir={dir}/done"], setup=copy(done, "done")),
        Case("eval into a train run's folder", "transferlab-eval", [f"ckpt_path={ckpt}", "hydra.run.dir={dir}/done"],
             setup=copy(done, "done")),
        Case("predict into a train run's folder", "transferlab-predict", [*predict_args, "hydra.run.dir={dir}/done"],
             setup=copy(done, "done", images=True)),
        Case("predict into a finished predict folder", "transferlab-predict", [*predict_args, "hydra.run.dir={dir}/p"],
             setup=copy(predicted, "p", images=True)),
        Case("predict output=<a skipped file of input_dir> overwrite=true", "transferlab-predict",
             [*predict_args, "output={dir}/in/notes.jpg", "overwrite=true"], setup=copy(predicted, "p", images=True)),
        Case("predict output=<an existing file>", "transferlab-predict", [*predict_args, "output={dir}/p/predictions.csv"],
             setup=copy(predicted, "p", images=True)),
        Case("eval overwrite=true <a finished folder with stale files>", "transferlab-eval",
             [f"ckpt_path={ckpt}", "split=val", "overwrite=true", "trainer.accelerator=cpu", "hydra.run.dir={dir}/redo"],
             setup=stale, judge=emptied, owns=("redo",)),
        Case("train -m into a finished sweep folder", "transferlab-train",
             ["-m", *TINY, "test=false", "optimizer.lr=5e-1", "hydra.sweep.dir={dir}/sweep"], setup=copy(sweep, "sweep")),
        Case("run-folder files get the umask (022)", "transferlab-train", [*TINY, "test=false"], judge=_umask_modes),
    ]  # fmt: skip
    return c


def _report_refused(result: subprocess.CompletedProcess, case_dir: Path) -> str:
    lines = result.stderr.strip().splitlines()
    if result.returncode == 2 and len(lines) == 1 and lines[0].startswith("transferlab-report: error: "):
        return "clean"
    return "silent" if result.returncode == 0 else "traceback"


def _umask_modes(result: subprocess.CompletedProcess, case_dir: Path) -> str:
    if result.returncode != 0:
        return verdict(result, "ok")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (case_dir / "run").iterdir() if p.is_file()}
    return "clean" if modes.get("summary.json") == modes.get("metrics.csv") == 0o644 else "silent"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def _resumed_in_place(result: subprocess.CompletedProcess, case_dir: Path) -> str:
    if result.returncode != 0:
        return verdict(result, "ok")
    summary = json.loads((case_dir / "moved/summary.json").read_text())
    best = (summary.get("checkpoints") or {}).get("best") or ""
    return "clean" if best.startswith(str(case_dir / "moved")) and summary["epochs"] == 2 else "silent"


def _malformed_sweep(sweep: Path, done: Path) -> None:
    shutil.copytree(done, sweep / "0")
    cases = (("1", "{not json"), ("2", "[1, 2]"), ("3", '{"status": 7, "best": "x"}'),
             ("4", '{"status": "completed", "best": {"val/acc": "high"}}'))  # fmt: skip
    for job, text in cases:
        (sweep / job).mkdir(parents=True)
        (sweep / job / "summary.json").write_text(text)


def signal_cases(work: Path) -> list[tuple[str, str]]:
    """SIGTERM, SIGINT and kill -9 in the middle of training; then the report on the killed one."""
    out = []
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)):
        run_dir = work / f"signal-{signum.name}" / "0"
        cli = subprocess.Popen([BIN / "transferlab-train", *TINY, "trainer.max_epochs=200", f"hydra.run.dir={run_dir}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.time() + 120
        while not (run_dir / "metrics.csv").is_file() and cli.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        cli.send_signal(signum)
        _, err = cli.communicate(timeout=120)
        status = _status(run_dir)
        if signum == signal.SIGKILL:
            report = run("transferlab-report", str(run_dir.parent))
            dead = "| dead |" in report.stdout
            out.append(("kill -9, then the report", "clean" if dead else "silent"))
        elif "Traceback" in err:
            out.append((f"{signum.name} mid-training", "traceback"))
        else:
            ok = cli.returncode == code and status == "interrupted"
            out.append((f"{signum.name} mid-training", "clean" if ok else "silent"))
    return out


def concurrent_case(work: Path) -> list[tuple[str, str]]:
    """Two trainings started together into one folder: one runs, the other is refused, and the folder's .hydra/
    holds the config of the one that ran."""
    run_dir = work / "together"
    starts = [subprocess.Popen([BIN / "transferlab-train", *TINY, f"optimizer.lr={lr}", f"hydra.run.dir={run_dir}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for lr in ("0.001", "0.002")]  # fmt: skip
    results = [subprocess.CompletedProcess(p.args, p.wait(timeout=600), "", p.stderr.read()) for p in starts]
    codes = sorted(r.returncode for r in results)
    if any("Traceback" in r.stderr for r in results):
        return [("two trainings into one folder at once", "traceback")]
    if codes != [0, 2]:
        return [("two trainings into one folder at once", "silent")]
    winner = next(lr for lr, r in zip(("0.001", "0.002"), results) if r.returncode == 0)
    saved = _read(run_dir / ".hydra/overrides.yaml")
    summary = json.loads(_read(run_dir / "summary.json") or "{}")
    ok = f"optimizer.lr={winner}" in saved and f"optimizer.lr={winner}" in summary.get("overrides", [])
    return [("two trainings into one folder at once", "clean" if ok else "lost")]


def cache_cases(work: Path) -> list[tuple[str, str]]:
    """A user's own network edited between runs, features beyond fp16's range, features that are NaN."""
    code, cache = work / "code", work / "cache"
    code.mkdir()
    hits = []
    for name, scale in (("a", "1.0"), ("b", "1e6")):
        result = custom_network_run(code, cache, work / f"cache-{name}", scale)
        if result.returncode != 0:
            return [("the cache notices an edited forward()", verdict(result, "ok"))]
        hits.append([e["hit"] for e in json.loads(_read(work / f"cache-{name}/summary.json"))["feature_cache"]])
    entry = json.loads(_read(work / "cache-b/summary.json"))["feature_cache"][-1]["file"]
    values = np.load(entry)
    out = [("the cache notices an edited forward()", "clean" if hits[1] == [False, False] else "silent"),
           ("features beyond fp16's range are kept", "clean" if np.isfinite(values).all() else "silent")]  # fmt: skip
    broken = custom_network_run(code, cache, work / "cache-nan", "float('nan')")
    leftovers = [p for p in cache.iterdir() if p.suffix != ".npy"]
    ok = one_failed_line(broken) and _status(work / "cache-nan") == "failed" and not leftovers
    out.append(("NaN features", "clean" if ok else "traceback" if "Traceback" in broken.stderr else "silent"))
    return out


def ddp_case(work: Path) -> list[tuple[str, str]]:
    """2 DDP processes on 113 test digits: the recorded test/acc must be the checkpoint's on one device."""
    run_dir = work / "ddp"
    trained = run("transferlab-train", *TINY, "data.test_fraction=0.21", "data.val_fraction=0.21", "optimizer.lr=1e-5",
                  "trainer.strategy=ddp", "trainer.devices=2", f"hydra.run.dir={run_dir}")  # fmt: skip
    if trained.returncode != 0:
        return [("DDP scores each test example once", verdict(trained, "ok"))]
    summary = json.loads(_read(run_dir / "summary.json"))
    scored = run("transferlab-eval", f"ckpt_path={summary['checkpoints']['best']}", "trainer.accelerator=cpu",
                 f"hydra.run.dir={work}/ddp-eval")  # fmt: skip
    if scored.returncode != 0:
        return [("DDP scores each test example once", verdict(scored, "ok"))]
    again = json.loads(_read(work / "ddp-eval/summary.json"))["metrics"]["test/acc"]
    return [
        ("DDP scores each test example once", "clean" if abs(again - summary["test"]["test/acc"]) < 1e-6 else "silent")
    ]


def mounted(disk: Path, size: str) -> bool:
    disk.mkdir()
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )


def disk_cases(work: Path, sweep: Path) -> list[tuple[str, str]]:
    """Training onto a full disk (a 600 KB tmpfs), then onto a read-only one; features onto a full cache; the
    report onto a read-only sweep folder. None where no tmpfs can be mounted."""
    disk, small, report = work / "disk", work / "small-cache", work / "ro-sweep"
    if not mounted(disk, "600k"):
        print("(no full or read-only disk cases: cannot mount a tmpfs here)")
        return []
    try:
        result = run("transferlab-train", *TINY, f"hydra.run.dir={disk}/run")
        temporary = (".partial", ".tmp", ".summary.json.")
        leftovers = [p for p in disk.rglob("*") if any(t in p.name for t in temporary)]
        outcome = "lost" if leftovers else verdict(result, "error")
        if outcome == "clean" and _status(disk / "run") != "failed":
            outcome = "silent"  # summary.json must say how the run ended
        out = [("train onto a full disk", outcome)]
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        read_only = run("transferlab-train", *TINY, f"hydra.run.dir={disk}/other")
        out.append(("train onto a read-only disk", verdict(read_only, "error")))

        mounted(small, "64k")
        (work / "code").mkdir(exist_ok=True)
        full = custom_network_run(work / "code", small, work / "small-run", "1.0", width=512)
        left = [p for p in small.iterdir() if p.suffix != ".npy" or ".tmp" in p.name]  # whole entries may stay
        outcome = "lost" if left else verdict(full, "error")
        out.append(
            (
                "features onto a full cache disk",
                "silent" if outcome == "clean" and _status(work / "small-run") != "failed" else outcome,
            )
        )

        mounted(report, "4m")
        shutil.copytree(sweep, report / "sweep", ignore=shutil.ignore_patterns("*.ckpt"))  # the report reads no weights
        subprocess.run(["mount", "-o", "remount,ro", str(report)], check=True)
        out.append(
            (
                "report on a read-only sweep folder",
                _report_refused(run("transferlab-report", str(report / "sweep")), report),
            )
        )
        out.append(("report --out <read-only>", _report_refused(
            run("transferlab-report", str(sweep), "--out", str(report / "out")), report)))  # fmt: skip
        return out
    finally:
        for folder in (disk, small, report):
            subprocess.run(["umount", str(folder)], check=False, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="transferlab-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    os.umask(0o022)  # what a teammate's shell has: run-folder files must be readable by the group and others
    done, sweep, predicted = work / "trained", work / "sweep", work / "predicted"
    photo(work / "images/a.jpg", 1)
    for made in (
        run("transferlab-train", *TINY, f"hydra.run.dir={done}"),
        run("transferlab-train", "-m", *TINY, "test=false", "optimizer.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}"),
        run("transferlab-predict", f"ckpt_path={done}/checkpoints/best.ckpt", f"input={work}/images",
            f"hydra.run.dir={predicted}"),
    ):  # fmt: skip
        if made.returncode != 0:
            print(made.stderr[-3000:], file=sys.stderr)
            return 1
    ckpt = done / "checkpoints/best.ckpt"
    results: list[tuple[str, str]] = []
    for i, case in enumerate(cases(work, ckpt, done, sweep, predicted)):
        case_dir = work / f"case{i:02d}"
        case_dir.mkdir()
        if case.setup:
            case.setup(case_dir)
        argv = [a.replace("{dir}", str(case_dir)) for a in case.args]
        if not any(a.startswith(("hydra.run.dir=", "-m")) for a in argv) and case.command != "transferlab-report":
            argv.append(f"hydra.run.dir={case_dir}/run")
        before = snapshot(case_dir, done, sweep, predicted)
        result = run(case.command, *argv, env=case.env)
        outcome = case.judge(result, case_dir) if case.judge else verdict(result, case.expect)
        lost = changed(before, [case_dir / o for o in case.owns])
        results.append((case.name, "lost" if lost else outcome))
        print(f"{results[-1][1]:>9}  {case.name}", flush=True)
        if results[-1][1] != "clean":
            detail = f"changed: {', '.join(str(p.relative_to(work)) for p in lost[:3])}" if lost else ""
            print(
                "           " + (detail or (result.stderr.strip().splitlines() or ["(no output)"])[-1][:300]),
                flush=True,
            )
    for special in (signal_cases, concurrent_case, cache_cases, ddp_case, lambda w: disk_cases(w, sweep)):
        for name, outcome in special(work):
            results.append((name, outcome))
            print(f"{outcome:>9}  {name}", flush=True)
    counts = {k: sum(outcome == k for _, outcome in results) for k in ("clean", "traceback", "silent", "lost")}
    print(f"{len(results)} cases: clean {counts['clean']}, traceback {counts['traceback']}, "
          f"silent {counts['silent']}, lost {counts['lost']}")  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if counts["clean"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
