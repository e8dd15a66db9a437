"""Domain adaptation on real shifts: target test accuracy of source-only, DANN, CDAN, MCC, DANN+MCC and the
train-on-target oracle, mean and std over seeds.

Pairs:
  digits->digits-M     scikit-learn's digits (labelled) -> digits-M (data=digits_m: the same digits blended over
                       crops of colour photos, as MNIST-M); the real CIFAR-10 ResNet-20 checkpoint fine-tuned at
                       32 px with an MLP head (its hidden layer and the backbone are adapted).
  photo->sketch        hymenoptera photos (train/, labelled) -> sketches of other hymenoptera photos (val/, drawn
                       as pencil sketches: a PACS-style photo->sketch shift); ImageNet EfficientNet-Lite0
                       (the dev extra) frozen at 160 px, features cached, an MLP head whose hidden layer is adapted.

The score is target/acc of the checkpoint chosen on the *source* val split (no target label picks the model), on
the target's held-out test split. Every arm is the same `transferlab-train` config with one adapt override; the
oracle trains on the labelled target instead. Completed run folders under --out are reused. Usage:
  python benchmarks/adaptation.py [--seeds 3] [--shared ../shared/data] [--out benchmarks/results] [--pairs ...]
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

from schedules import _lite0_weights, arguments, markdown, plot, run

METHODS = {
    "source only": ["adapt=none"],
    "DANN": ["adapt=dann"],
    "CDAN": ["adapt=cdan"],
    "MCC": ["adapt=mcc"],
    "DANN+MCC": ["adapt=dann_mcc"],
    "train on target (oracle)": ["adapt=none"],
}


def pairs(shared: Path, domains: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Each pair's overrides, and what its oracle changes (train on the labelled target)."""
    photos, sketches = sketch_pair(shared / "hymenoptera", domains)
    return {
        "digits->digits-M": (
            [
                "backbone=custom",
                "backbone.name=null",
                "backbone.model._target_=cifar_resnet.resnet20",
                f"backbone.weights={shared / 'pretrained/cifar10_resnet20/resnet20-12fca82f.th'}",
                "backbone.data_config.input_size=[3,32,32]",
                "data=digits_m",
                "data.batch_size=16",
                "head=mlp",
                "trainer.max_epochs=15",
            ],
            ["data.source=digits_m"],
        ),
        "photo->sketch": (
            [
                "backbone.name=tf_efficientnet_lite0",
                f"backbone.weights={_lite0_weights()}",
                "backbone.weights_match=order",
                "schedule=frozen",
                "schedule.probe=sgd",
                "head=mlp",
                "data=folder",
                f"data.root={photos}",
                f"data.target.root={sketches}",
                "data.input_size=160",
                "data.augment=none",
                "data.test_fraction=0.2",
                "data.batch_size=16",
                "trainer.max_epochs=30",
            ],
            [f"data.root={sketches}"],
        ),
    }


def sketch_pair(hymenoptera: Path, domains: Path) -> tuple[Path, Path]:
    """photos/<class> (links to hymenoptera's train/ images) and sketches/<class> (its val/ images as pencil
    sketches: gray divided by its blurred inverse, the colour-dodge recipe), written once under ``domains``."""
    import numpy as np
    from PIL import Image, ImageFilter, ImageOps

    photos, sketches = domains / "photos", domains / "sketches"
    for name in ("ants", "bees"):
        (photos / name).mkdir(parents=True, exist_ok=True)
        for image in sorted((hymenoptera / "train" / name).iterdir()):
            link = photos / name / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
        (sketches / name).mkdir(parents=True, exist_ok=True)
        for image in sorted((hymenoptera / "val" / name).iterdir()):
            out = sketches / name / f"{image.stem}.png"
            if not out.exists():
                gray = ImageOps.grayscale(Image.open(image)).resize((256, 256))
                blurred = np.asarray(ImageOps.invert(gray).filter(ImageFilter.GaussianBlur(6)), dtype=np.float32)
                dodge = np.asarray(gray, dtype=np.float32) * 255 / np.maximum(255 - blurred, 1)
                Image.fromarray(np.clip(dodge, 0, 255).astype(np.uint8)).convert("RGB").save(out)
    return photos, sketches


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--pairs", nargs="*", help="only these columns (default: all)")
    args = parser.parse_args()
    runs = args.out / "adaptation_runs"

    start = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}
    epoch_s: dict[str, dict[str, float]] = {}
    for pair, (base, oracle) in pairs(args.shared, runs / "domains").items():
        if args.pairs and pair not in args.pairs:
            continue
        for name, method in METHODS.items():
            extra = oracle if "oracle" in name else []
            seconds = []
            for seed in range(args.seeds):
                folder = runs / re.sub(r"[^\w-]", "", pair) / re.sub(r"[^\w]", "_", name) / str(seed)
                summary = run([*base, *method, *extra, f"seed={seed}", f"data.split_seed={seed}"], folder)
                if summary["status"] != "completed":
                    raise SystemExit(f"{pair} {name} seed {seed}: {summary.get('error')}")
                results.setdefault(pair, {}).setdefault(name, []).append(summary["test"]["target/acc"])
                seconds += summary["timings"]["epoch_s"]
            epoch_s.setdefault(pair, {})[name] = round(statistics.median(seconds), 2)
            accs = results[pair][name]
            print(
                f"{pair:18s} {name:26s} {statistics.mean(accs):.4f} +- {statistics.pstdev(accs):.4f}  "
                f"{epoch_s[pair][name]:.2f} s/epoch"
            )

    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "adaptation.json"
    if args.pairs and saved.is_file():  # the other columns as an earlier run left them
        earlier = json.loads(saved.read_text())
        results = {**earlier["accuracy"], **results}
        epoch_s = {**earlier["epoch_s"], **epoch_s}
    saved.write_text(json.dumps({"accuracy": results, "epoch_s": epoch_s}, indent=2) + "\n")
    names = list(METHODS)
    table = markdown(results, names, "method")
    costs = ["| s/epoch | " + " | ".join(" / ".join(f"{epoch_s[p][n]:.1f}" for n in names[:5]) for p in results) + " |"]
    (args.out / "adaptation.md").write_text(table + "\n")
    plot(results, args.out / "adaptation.png", names, "Domain adaptation: target test accuracy (mean ± std, 3 seeds)")
    print(f"\n{table}\n{costs[0]}  (source only / DANN / CDAN / MCC / DANN+MCC)\n")
    for pair, rows in results.items():
        low, high = statistics.mean(rows["source only"]), statistics.mean(rows["train on target (oracle)"])
        best = max(names[1:5], key=lambda n: statistics.mean(rows[n]))
        closed = (statistics.mean(rows[best]) - low) / (high - low) if high > low else float("nan")
        dann = statistics.mean(rows["DANN"]) - low
        print(f"{pair}: DANN {dann * 100:+.1f} points over source only; best {best} closes {closed:.0%} of the gap")
    print(f"{len(results) * len(METHODS) * args.seeds} runs in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
