"""transferlab-export on real models: EfficientNet-Lite0 (ImageNet weights) fine-tuned on hymenoptera and
all-MiniLM-L6-v2 with a head trained on its frozen features of debian_topics, each exported as ONNX and as a
torch.export program.

Per model and format: file size; the export's own parity figure (max |logit difference| from PyTorch over the val
split); val accuracy through PyTorch and through the export (the same inputs, prepared once); CPU latency at batch
1 and 32 (median of --repeats calls after 3 warm-up calls, the same batch for every runtime), PyTorch eager
against onnxruntime (CPUExecutionProvider, default threads) and the torch.export program, measured side by side in
one process.

  python benchmarks/export.py [--shared ../shared/data] [--out benchmarks/results] [--repeats 20]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from schedules import arguments, provenance, run, settings
from text import base as text_base

from transferlab.cli import conf_dir

MODELS = ("lite0 / hymenoptera", "MiniLM / debian_topics")


def train_models(shared: Path, out: Path) -> dict[str, Path]:
    """The two checkpoints (trained once, reused from --out/export_runs after)."""
    lite0 = [*settings(shared, Path("unused"))["lite0"], "trainer.max_epochs=3", "seed=0"]
    minilm = [*text_base(shared / "debian_topics", "64", 0, 10), "schedule=frozen", "test=false", "monitor=val/acc"]
    ckpts = {}
    for name, overrides in zip(MODELS, (lite0, minilm)):
        folder = out / "export_runs" / name.split(" ")[0].lower()
        ckpts[name] = Path(run(overrides, folder)["checkpoints"]["best"])
    return ckpts


def export_model(ckpt: Path, fmt: str, folder: Path) -> Path:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from transferlab.export import export

    GlobalHydra.instance().clear()
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt_path={ckpt}", f"format={fmt}", f"paths.output_dir={folder}",
                                           "overwrite=true"])  # fmt: skip
    return export(cfg)


def median_ms(call, inputs, repeats: int) -> float:
    for _ in range(3):
        call(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(inputs)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(ckpt: Path, folder: Path, repeats: int) -> dict:
    from torch.utils.data import DataLoader, default_collate

    from transferlab.exported import load_exported
    from transferlab.inference import checkpoint_data
    from transferlab.module import load_module

    module = load_module(str(ckpt))
    val = checkpoint_data(module, {}, folder).datasets["val"]
    collate = module.inputs.collate or default_collate
    batches = list(DataLoader(val, batch_size=32, collate_fn=collate))
    one = collate([val[0]])

    def eager(inputs):
        with torch.no_grad():
            return module(inputs)

    def accuracy(logits_of) -> float:
        right = sum(int((logits_of(b.inputs).argmax(1) == b.target).sum()) for b in batches)
        return right / len(val)

    row = {"n_val": len(val), "pytorch": {"val_acc": accuracy(eager), "ms_batch_1": median_ms(eager, one.inputs,
           repeats), "ms_batch_32": median_ms(eager, batches[0].inputs, repeats)}}  # fmt: skip
    for fmt in ("onnx", "torch_export"):
        path = export_model(ckpt, fmt, folder / fmt)
        exported = load_exported(path)
        row[fmt] = {
            "size_mb": round(path.stat().st_size / 1e6, 2),
            "max_abs_diff": exported.info["parity"]["max_abs_diff"],
            "val_acc": accuracy(exported.logits),
            "ms_batch_1": median_ms(exported.logits, one.inputs, repeats),
            "ms_batch_32": median_ms(exported.logits, batches[0].inputs, repeats),
        }
    return row


def markdown(rows: dict[str, dict]) -> str:
    lines = [
        "| model | runtime | file MB | max logit diff | val acc | ms, batch 1 | ms, batch 32 | x eager (1 / 32) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, row in rows.items():
        base = row["pytorch"]
        for runtime, label in (("pytorch", "PyTorch eager"), ("onnx", "onnxruntime"), ("torch_export", "torch.export")):
            r = row[runtime]
            diff = "" if runtime == "pytorch" else f"{r['max_abs_diff']:.1e}"
            speed = f"{base['ms_batch_1'] / r['ms_batch_1']:.2f} / {base['ms_batch_32'] / r['ms_batch_32']:.2f}"
            lines.append(
                f"| {model} (n={row['n_val']}) | {label} | {r.get('size_mb', '')} | "
                f"{diff} | {r['val_acc']:.4f} | "
                f"{r['ms_batch_1']:.1f} | {r['ms_batch_32']:.1f} | {speed} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    start = time.perf_counter()
    ckpts = train_models(args.shared, args.out)
    rows = {name: measure(ckpt, args.out / "export_runs" / f"export-{i}", args.repeats)
            for i, (name, ckpt) in enumerate(ckpts.items())}  # fmt: skip
    for row in rows.values():
        for fmt in ("onnx", "torch_export"):
            assert row[fmt]["val_acc"] == row["pytorch"]["val_acc"], (
                row
            )  # the export gives the checkpoint's accuracy exactly
    report = markdown(rows)
    import onnxruntime

    result = {"provenance": {**provenance("benchmarks/export.py"), "threads": torch.get_num_threads(),
                             "onnxruntime": onnxruntime.__version__}, "models": rows}  # fmt: skip
    (args.out / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "export.md").write_text(report + "\n")
    print(f"\n{report}\n\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
