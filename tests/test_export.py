"""transferlab-export: real tiny image and text checkpoints exported as ONNX and torch.export programs, run by
onnxruntime and torch.export.load against PyTorch, and predict's two backends on the same inputs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from transferlab.errors import ConfigError
from transferlab.export import export
from transferlab.module import load_module
from transferlab.predict import predict
from transferlab.train import train

from helpers import TINY, compose_config, custom_network_run, read_summary, run_cli, tmpfs
from test_text import _texts, _write, tiny_bert  # noqa: F401 (a fixture)

SUFFIX = {"onnx": ".onnx", "torch_export": ".pt2"}


def _export_cfg(ckpt: Path, tmp_path: Path, *overrides: str, run: str = "export"):
    return compose_config(f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / run}", *overrides, config_name="export")


def _predict_cfg(tmp_path: Path, source: str, inputs: Path, run: str, *overrides: str):
    return compose_config(source, f"input={inputs}", f"paths.output_dir={tmp_path / run}", "trainer.accelerator=cpu",
                          *overrides, config_name="predict")  # fmt: skip


def _run_onnx(path: Path, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])


def _run(path: Path, fmt: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    if fmt == "onnx":
        return _run_onnx(path, feeds)
    return torch.export.load(str(path)).module()(*feeds.values())


@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_an_image_checkpoint_exports_runs_at_any_batch_size_and_predicts_the_same_labels(trained_run, tmp_path, fmt):
    ckpt = trained_run / "checkpoints/best.ckpt"
    output = export(_export_cfg(ckpt, tmp_path, f"format={fmt}"))

    assert output == tmp_path / "export" / f"model{SUFFIX[fmt]}"
    info = json.loads(output.with_name(output.name + ".json").read_text())
    module = load_module(str(ckpt))
    assert info["format"] == fmt and info["class_names"] == module.class_names == ["0", "1", "2"]
    assert info["inputs"]["data_config"]["input_size"] == [3, 32, 32]
    assert info["inputs"]["data_config"]["mean"] == list(module.inputs.data_config["mean"])
    parity = info["parity"]
    assert parity["n"] == parity["agree"] == 108 and parity["inputs"] == "the checkpoint's val split"  # 3 x 36 digits
    assert 0 <= parity["max_abs_diff"] <= 1e-4 and set(parity["max_abs_diff_by_batch"]) == {"batch_1", "batch_7"}
    summary = read_summary(tmp_path / "export")
    assert summary["status"] == "completed" and summary["parity"] == parity
    if fmt == "onnx":
        onnx.checker.check_model(str(output), full_check=True)
        graph = onnx.load(str(output)).graph
        assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic, not the traced 2

    torch.manual_seed(0)
    for batch in (1, 7, 33):  # sizes it was never traced at
        images = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = module(images)
        got = _run(output, fmt, {"images": images})
        assert got.shape == (batch, 3)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    # predict through the export and through the checkpoint: the same rows
    images = tmp_path / "images"
    images.mkdir()
    for i, label in enumerate([0, 1, 2, 1, 0, 2, 2]):  # odd modes and sizes: as predict reads them, in both
        array = np.full((8 + i, 8), 255 * (label + 1) // 3, np.uint8)
        array[label::3] = 0
        Image.fromarray(array).convert("L" if i % 2 else "P").save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not an image")
    by_export = predict(_predict_cfg(tmp_path, f"model={output}", images, "by_export", "batch_size=3"))
    by_ckpt = predict(_predict_cfg(tmp_path, f"ckpt_path={ckpt}", images, "by_ckpt", "batch_size=3"))
    rows_export, rows_ckpt = list(csv.DictReader(by_export.open())), list(csv.DictReader(by_ckpt.open()))
    assert by_export.read_text().splitlines()[0] == "path,class,probability"
    assert len(rows_export) == 7 and [r["path"] for r in rows_export] == [r["path"] for r in rows_ckpt]
    assert [r["class"] for r in rows_export] == [r["class"] for r in rows_ckpt]
    for a, b in zip(rows_export, rows_ckpt):
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-5)
    assert (tmp_path / "by_export/bad_files.txt").read_text() == f"{images / 'broken.png'}\n"
    assert read_summary(tmp_path / "by_export")["model"] == str(output)


@pytest.fixture(scope="module")
def text_run(tiny_bert, tmp_path_factory) -> Path:  # noqa: F811
    """A tiny BERT fine-tuned on three topics for 2 epochs: its checkpoint."""
    root = tmp_path_factory.mktemp("topics")
    rows = _texts(90, seed=3)
    _write(root / "train.csv", rows[:60])
    _write(root / "val.csv", rows[60:])
    summary = train(compose_config(
        "backbone=hf", f"backbone.path={tiny_bert}", "backbone.max_length=32", "data=text", f"data.root={root}",
        "trainer.max_epochs=2", "trainer.accelerator=cpu", "logger=none", "test=false", "optimizer.lr=3e-3",
        f"paths.output_dir={root / 'run'}",
    ))  # fmt: skip
    return Path(summary["checkpoints"]["best"])


@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
def test_a_text_checkpoint_exports_with_its_tokenizer_and_any_length(text_run, tmp_path, fmt):
    from tokenizers import Tokenizer

    output = export(_export_cfg(text_run, tmp_path, f"format={fmt}", f"output={tmp_path}/out/topics{SUFFIX[fmt]}"))
    info = json.loads((tmp_path / f"out/topics{SUFFIX[fmt]}.json").read_text())
    assert info["inputs"] == {"kind": "text", "max_length": 32, "pad_id": 0}
    assert info["input_names"] == ["input_ids", "attention_mask"] and info["parity"]["agree"] == 30
    module = load_module(str(text_run))
    tokenizer = Tokenizer.from_file(str(tmp_path / f"out/topics{SUFFIX[fmt]}.tokenizer.json"))
    assert tokenizer.to_str() == module.inputs.tokenizer_json

    texts = ["a joystick", "glyphs and hinting with ligatures in a family of typefaces", "prime numbers"]
    for batch in ([texts[0]], texts):  # one text; three of different lengths, padded
        collated = module.inputs.collate([_item(module, t) for t in batch])
        with torch.no_grad():
            expected = module(collated.inputs)
        got = _run(output, fmt, collated.inputs)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(texts) + "\n")
    by_export = predict(_predict_cfg(tmp_path, f"model={output}", lines, "by_export"))
    by_ckpt = predict(_predict_cfg(tmp_path, f"ckpt_path={text_run}", lines, "by_ckpt"))
    rows_export, rows_ckpt = list(csv.reader(by_export.open())), list(csv.reader(by_ckpt.open()))
    assert rows_export[0] == rows_ckpt[0] == ["row", "class", "probability", *module.class_names]
    assert [r[:2] for r in rows_export] == [r[:2] for r in rows_ckpt] and len(rows_export) == 4
    for a, b in zip(rows_export[1:], rows_ckpt[1:]):
        assert [float(x) for x in a[2:]] == pytest.approx([float(x) for x in b[2:]], abs=1e-5)


def _item(module, text: str):
    from transferlab.batches import Batch

    return Batch(module.inputs.transform("none", False)(text), 0)


def test_an_adapted_checkpoint_exports_without_its_domain_discriminator(tmp_path):
    summary = train(compose_config(*TINY, "data=digits_m", "adapt=dann", "test=false",
                                   f"paths.output_dir={tmp_path / 'dann'}"))  # fmt: skip
    ckpt = Path(summary["checkpoints"]["best"])
    assert any(k.startswith("adaptation.") for k in torch.load(ckpt, weights_only=True)["state_dict"])
    output = export(_export_cfg(ckpt, tmp_path))
    stored = {t.name for t in onnx.load(str(output)).graph.initializer}
    assert stored and not any("adaptation" in name or "discriminator" in name for name in stored)
    module = load_module(str(ckpt))
    weights = sum(int(np.prod(t.dims)) for t in onnx.load(str(output)).graph.initializer)
    served = [*module.backbone.parameters(), *module.backbone.buffers(), *module.head.parameters()]
    discriminator = sum(p.numel() for k, p in torch.load(ckpt, weights_only=True)["state_dict"].items()
                        if k.startswith("adaptation."))  # fmt: skip
    assert discriminator > 10**6 and weights <= sum(p.numel() for p in served)  # (BatchNorm may fold into convs)


def test_bad_exports_are_one_line_and_leave_no_file(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints/best.ckpt"
    out = tmp_path / "out"
    cases = [
        (["format=tflite"], r"^format=tflite: choose one of onnx, torch_export$"),
        ([f"output={out}/model.pt2"], r"^output=.*model.pt2: format=onnx writes a .onnx file; e.g. output=model.onnx$"),
        (["atol=0"], r"^atol=0: use a number > 0"),
        ([f"output={ckpt}"], r"^output=.*: format=onnx writes a .onnx file"),
        (["ckpt_path=" + str(tmp_path / "none.ckpt")], r"^ckpt_path=.*none.ckpt: file not found"),
        (["atol=1e-30"], r"^atol=1e-30: onnxruntime's logits differ from PyTorch's by up to .*nothing was written"),
    ]
    for i, (overrides, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            export(_export_cfg(ckpt, tmp_path, f"output={out}/model.onnx", *overrides, run=f"r{i}"))
        assert read_summary(tmp_path / f"r{i}")["status"] == "failed"
    assert not out.exists() or not list(out.iterdir())  # not even a staging folder

    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*other.ckpt: not a transferlab checkpoint"):
        export(_export_cfg(tmp_path / "other.ckpt", tmp_path, run="other"))

    (out / "model.onnx").parent.mkdir(exist_ok=True)
    (out / "model.onnx").write_text("keep me")
    with pytest.raises(ConfigError, match=r"^output=.*model.onnx: exists; choose a new file or set overwrite=true"):
        export(_export_cfg(ckpt, tmp_path, f"output={out}/model.onnx", run="exists"))
    assert (out / "model.onnx").read_text() == "keep me"

    with tmpfs(tmp_path / "readonly", "size=1m,ro") as readonly:
        with pytest.raises(
            ConfigError, match=r"^output=.*readonly/model.onnx: cannot write there \(Read-only file system"
        ):
            export(_export_cfg(ckpt, tmp_path, f"output={readonly}/model.onnx", run="ro"))
    with tmpfs(tmp_path / "small", "size=64k") as full:  # the file cannot be written whole: nothing stays
        with pytest.raises(Exception):  # noqa: B017 (an OSError the entry point turns into one line)
            export(_export_cfg(ckpt, tmp_path, f"output={full}/model.onnx", run="full"))
        assert list(full.iterdir()) == []


def test_an_operator_onnx_cannot_convert_is_named_with_its_module(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    run = tmp_path / "custom"
    result = custom_network_run(code, tmp_path / "cache", run, scale="1.0")
    assert result.returncode == 0, result.stderr[-2000:]
    # the same network, now with an operation the ONNX exporter has no conversion for
    (code / "netfile.py").write_text((code / "netfile.py").read_text().replace(
        "return self.conv(x).mean((2, 3)) * SCALE", "return torch.special.bessel_j0(self.conv(x).mean((2, 3))) * SCALE"
    ).replace("from torch import nn", "import torch\nfrom torch import nn"))  # fmt: skip
    sys.path.insert(0, str(code))
    try:
        with pytest.raises(ConfigError, match=r"^format=onnx: the ONNX exporter cannot convert aten::special_bessel_j0 "
                                              r"\(opset 17\) in backbone \(netfile.Net\); try format=torch_export"):  # fmt: skip
            export(_export_cfg(run / "checkpoints/best.ckpt", tmp_path))
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("netfile", None)
    assert not list((tmp_path / "export").glob("model.onnx*"))


@pytest.mark.slow
def test_the_export_command_and_predict_from_an_export(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints/best.ckpt"
    result = run_cli("transferlab-export", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}/e")
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"exported onnx -> {tmp_path}/e/model.onnx (max |logit difference| ") and "108/108" in last
    assert "Warning" not in result.stderr

    result = run_cli("transferlab-export", f"ckpt_path={ckpt}", "atol=1e-30", f"hydra.run.dir={tmp_path}/bad")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: atol=1e-30: onnxruntime's logits differ"), lines
    assert not list((tmp_path / "bad").glob("model.onnx*"))

    (tmp_path / "e/model.onnx.json").unlink()
    result = run_cli("transferlab-predict", f"model={tmp_path}/e/model.onnx", f"input={tmp_path}",
                     f"hydra.run.dir={tmp_path}/p")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: model={tmp_path}/e/model.onnx: its model.onnx.json is missing")
