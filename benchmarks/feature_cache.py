"""What the feature cache saves: a 10-epoch linear probe with and without it, a 12-trial sweep against one trial,
and the accuracy of cached against uncached runs.

Every run is the real CLI (`transferlab-train`, a fresh process, timed from outside) on ../shared/data:
  probe   hymenoptera at 224 px, the real CIFAR-10 ResNet-20 checkpoint frozen, linear head, 10 epochs, no
          augmentation; uncached, cached with an empty cache (computes the features) and cached again (reuses).
  sweep   the same probe: one trial, then a 12-trial multirun (head=linear,mlp x 6 learning rates), each with an
          empty cache.
  digits  the same checkpoint on digits at 32 px, 20 labels per class, 3 seeds, uncached and cached.
Usage:
  python benchmarks/feature_cache.py [--shared ../shared/data] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def common(shared: Path, size: int) -> list[str]:
    return [
        "backbone=custom",
        "backbone.name=null",
        "backbone.model._target_=cifar_resnet.resnet20",  # the architecture of the checkpoint, from tests/
        f"backbone.weights={shared / 'pretrained/cifar10_resnet20/resnet20-12fca82f.th'}",
        f"backbone.data_config.input_size=[3,{size},{size}]",
        "schedule=frozen",
        "schedule.probe=sgd",  # the epoch-wise probe: what the cache speeds up epoch after epoch
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "logger=none",
        "data.augment=none",
    ]


def train(overrides: list[str], run_dir: Path, cache: Path | None, multirun: bool = False) -> tuple[float, Path]:
    """Run transferlab-train in a fresh process; return its wall time and its run (or sweep) folder."""
    where = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    cache_option = f"data.feature_cache={cache}" if cache else "data.feature_cache=null"
    command = [
        sys.executable,
        "-m",
        "transferlab.train",
        *(["-m"] if multirun else []),
        *overrides,
        cache_option,
        where,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "HYDRA_FULL_ERROR": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return wall, run_dir


def summary(run_dir: Path) -> dict:
    data = json.loads((run_dir / "summary.json").read_text())
    assert data["status"] == "completed", data.get("error")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared/data")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="transferlab-cache-bench-"))
    probe = [
        *common(args.shared, 224),
        "data=folder",
        f"data.root={args.shared / 'hymenoptera'}",
        "data.input_size=224",
        f"trainer.max_epochs={args.epochs}",
        "optimizer.lr=1e-2",  # a linear probe on fixed features takes a larger lr than fine-tuning
        "monitor=val/acc",
        "test=false",
    ]

    print(f"probe: hymenoptera 224 px, ResNet-20 frozen, {args.epochs} epochs (wall = process start to exit)")
    rows = {}
    for name, cache in (
        ("uncached", None),
        ("cached, empty cache", work / "cache"),
        ("cached, reused", work / "cache"),
    ):
        wall, run_dir = train(probe, work / name.replace(", ", "-").replace(" ", "_"), cache)
        s = summary(run_dir)
        rows[name] = (wall, s["timings"]["fit_s"], s["final"]["val/acc"])
        print(f"  {name:20s} wall {wall:6.1f} s  fit {rows[name][1]:6.1f} s  val/acc {rows[name][2]:.4f}")
    base_wall, base_fit, base_acc = rows["uncached"]
    for name in ("cached, empty cache", "cached, reused"):
        wall, fit, acc = rows[name]
        print(
            f"  {name}: {base_fit / fit:.1f}x faster fit, {base_wall / wall:.1f}x faster wall, "
            f"val/acc {100 * (acc - base_acc):+.1f} points"
        )

    print("sweep: the same probe, one trial against 12 trials (head=linear,mlp x 6 lr), each from an empty cache")
    one, _ = train([*probe, "head=linear"], work / "one_trial", work / "cache_one")
    lrs = "1e-4,3e-4,1e-3,3e-3,1e-2,3e-2"
    sweep, sweep_dir = train(
        [*probe, "head=linear,mlp", f"optimizer.lr={lrs}"], work / "sweep", work / "cache_sweep", multirun=True
    )
    trials = sorted(sweep_dir.glob("*/summary.json"))
    hits = sum(e["hit"] for t in trials for e in json.loads(t.read_text()).get("feature_cache", []))
    print(f"  one trial {one:.1f} s, {len(trials)} trials {sweep:.1f} s ({hits} cache hits)")

    print("digits: ResNet-20 frozen at 32 px, 10 classes, 20 labels per class, test accuracy over 3 seeds")
    digits = [
        *common(args.shared, 32),
        "data.samples_per_class=20",
        "data.batch_size=50",
        "trainer.max_epochs=15",
        "optimizer.lr=1e-2",
    ]
    accs: dict[str, list[float]] = {"uncached": [], "cached": []}
    for seed in range(3):
        for name, cache in (("uncached", None), ("cached", work / "cache_digits")):
            _, run_dir = train(
                [*digits, f"seed={seed}", f"data.split_seed={seed}"], work / f"digits_{name}_{seed}", cache
            )
            accs[name].append(summary(run_dir)["test"]["test/acc"])
    for name, values in accs.items():
        print(f"  {name:9s} {statistics.mean(values):.4f} +- {statistics.pstdev(values):.4f}  {values}")
    diff = 100 * (statistics.mean(accs["cached"]) - statistics.mean(accs["uncached"]))
    print(f"  cached - uncached: {diff:+.1f} points")

    print(f"\nrun folders in {work}")
    print(
        f"linear probe: {base_fit / rows['cached, reused'][1]:.1f}x faster fit with a reused cache, "
        f"{base_fit / rows['cached, empty cache'][1]:.1f}x with an empty one"
    )
    print(f"12-trial sweep / one trial: {sweep / one:.2f}")


if __name__ == "__main__":
    main()
