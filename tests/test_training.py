"""Real tiny training runs: what freezing keeps, what resume restores, what a run folder holds."""

import csv
import json
import os

import pytest
import torch

from transferlab.errors import ConfigError
from transferlab.train import train

from helpers import TINY, checkpoint_state, completed, initial_backbone, run_cli


def test_run_folder_contract(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["class_names"] == ["0", "1", "2"]
    assert summary["inputs"] == {
        "kind": "image",
        "data_config": {**summary["inputs"]["data_config"], "input_size": [3, 32, 32]},
        "channels_last": False,
    }
    assert summary["epochs"] == 2 and summary["best_epoch"] in (0, 1)
    assert {"torch", "lightning", "timm", "transferlab"} <= set(summary["versions"])
    # test_convnext learns 3 digit classes in 2 epochs (chance: 0.33); the best checkpoint is what was tested.
    assert summary["test"]["test/acc"] > 0.8 and "test/f1" in summary["test"]
    timings = summary["timings"]
    assert timings["fit_s"] > 0 and len(timings["epoch_s"]) == 2
    for key in ("train_samples_per_s", "loader_samples_per_s", "model_samples_per_s"):
        assert len(timings[key]) == 2 and all(v > 0 for v in timings[key]), key
    # The whole epoch's images pass through both: each alone is faster than the two together.
    assert (
        min(timings["loader_samples_per_s"][1], timings["model_samples_per_s"][1]) > timings["train_samples_per_s"][1]
    )
    for name in (
        "metrics.csv",
        "curves.png",
        "confusion.png",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        ".hydra/config.yaml" if (trained_run / ".hydra").exists() else "metrics.csv",
    ):
        assert (trained_run / name).is_file(), name
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert {"train/loss", "val/loss", "val/acc", "lr/head", "lr/stem", "train_samples_per_s"} <= set(rows[0])
    meta = torch.load(trained_run / "checkpoints/best.ckpt", weights_only=True)["transferlab"]
    assert meta["class_names"] == ["0", "1", "2"] and meta["inputs"]["data_config"]["input_size"] == (3, 32, 32)


def test_channels_last_runs_backbone_and_images_in_nhwc(make_cfg):
    from transferlab.cli import instantiate
    from transferlab.heads import LinearHead
    from transferlab.module import TransferModule

    cfg = make_cfg("backbone.channels_last=true")
    modules = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        backbone = instantiate({**cfg.backbone, "channels_last": channels_last})
        head = LinearHead(backbone.num_features, 3)
        modules.append(TransferModule(backbone, head, ["0", "1", "2"]).eval())
    kernels = [p for p in modules[1].backbone.parameters() if p.ndim == 4]
    assert kernels and all(k.is_contiguous(memory_format=torch.channels_last) for k in kernels)
    images = torch.randn(2, 3, 32, 32)
    assert modules[1].inputs.prepare(images).is_contiguous(memory_format=torch.channels_last)
    assert not modules[0].inputs.prepare(images).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(modules[1](images), modules[0](images), rtol=1e-4, atol=1e-5)
    summary = train(cfg)
    assert completed(summary), summary.get("error")
    assert summary["inputs"]["channels_last"] is True


@pytest.mark.parametrize("freeze_depth", [2, "all"])
def test_frozen_parameters_and_batchnorm_statistics_do_not_move(make_cfg, tmp_path, freeze_depth):
    cfg = make_cfg(f"schedule.freeze_depth={freeze_depth}", "schedule.backbone_lr_mult=0.5", "test=false")
    before = initial_backbone(cfg)
    train(cfg)
    after = {
        k.removeprefix("backbone."): v
        for k, v in checkpoint_state(tmp_path / "run/checkpoints/last.ckpt").items()
        if k.startswith("backbone.")
    }
    frozen_prefixes = ("conv1.", "bn1.", "layer1.") if freeze_depth == 2 else ("",)
    frozen = [k for k in before if k.startswith(frozen_prefixes)]
    assert any("running_mean" in k for k in frozen)  # BatchNorm statistics are among the frozen tensors
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    trained = [k for k in before if k not in frozen and k.endswith("weight")]
    assert all(not torch.equal(before[k], after[k]) for k in trained)
    # test_resnet's groups: stem (conv1, bn1), layer1..layer4; freeze_depth=2 trains layer2..layer4.
    assert {k.split(".")[0] for k in trained} == (set() if freeze_depth == "all" else {"layer2", "layer3", "layer4"})

    rows = list(csv.DictReader((tmp_path / "run/metrics.csv").open()))
    assert float(rows[0]["lr/layer4"]) == pytest.approx(0.5 * float(rows[0]["lr/head"]))


def test_resume_from_last_matches_an_uninterrupted_run(make_cfg, tmp_path):
    epochs = ["trainer.max_epochs=3", "test=false"]
    train(make_cfg(*epochs, run="straight"))
    # Stop after the first epoch as a preemption would, then resume in the same run folder.
    train(
        make_cfg(
            *epochs,
            "+callbacks.stop._target_=helpers.StopAfterEpoch",
            "+callbacks.stop.epoch=0",
            run="resumed",
        )
    )
    assert json.loads((tmp_path / "resumed/summary.json").read_text())["epochs"] == 1
    summary = train(make_cfg(*epochs, "ckpt_path=last", run="resumed"))
    assert summary["resumed_from"].endswith("resumed/checkpoints/last.ckpt")
    assert summary["epochs"] == 3  # the history came back from the checkpoint
    straight, resumed = (
        checkpoint_state(tmp_path / "straight/checkpoints/last.ckpt"),
        checkpoint_state(tmp_path / "resumed/checkpoints/last.ckpt"),
    )
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_failed_run_says_so_and_leaves_no_checkpoints(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^schedule.freeze_depth=9: the backbone has 5 layer groups"):
        train(make_cfg("schedule.freeze_depth=9"))
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "failed" and "freeze_depth=9" in summary["error"]
    assert not (tmp_path / "run/checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.root=/no/such/folder", r"^data.root=/no/such/folder: folder not found"),
        ("backbone.name=vit_tiny_patch16_2244", r"^backbone.name=vit_tiny_patch16_2244: unknown timm model"),
    ],
)
def test_user_errors_in_a_run(make_cfg, override, message):
    extra = ["data=folder", "data.classes=null"] if override.startswith("data.root") else []
    with pytest.raises(ConfigError, match=message):
        train(make_cfg(*extra, override))


def test_weights_that_do_not_fit_say_how_many_keys_matched(make_cfg, tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"^backbone.weights=.*0 of 1 tensors fit the model"):
        train(make_cfg(f"backbone.weights={tmp_path / 'other.pth'}"))


@pytest.mark.slow
def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the hub download path, failing fast as it does offline
    result = run_cli(
        "transferlab-train",
        *TINY,
        "backbone.name=resnet18",
        "backbone.pretrained=true",
        f"hydra.run.dir={tmp_path}/run",
        env=env,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: backbone.pretrained=true: could not download")
    assert "backbone.weights=PATH" in lines[0]
    assert json.loads((tmp_path / "run/summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_multirun_grid_goes_on_past_a_failed_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "transferlab-train",
        "-m",
        *TINY,
        "test=false",
        "optimizer.lr=1e-4,1e-3",
        "schedule.freeze_depth=0,2,9",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert len(summaries) == 6
    failed = {k for k, s in summaries.items() if s["status"] == "failed"}
    assert len(failed) == 2 and all("freeze_depth=9" in summaries[k]["error"] for k in failed)
    completed = [s for s in summaries.values() if s["status"] == "completed"]
    grid = sorted(
        (float(o["optimizer.lr"]), int(o["schedule.freeze_depth"]))
        for o in (dict(x.split("=", 1) for x in s["overrides"]) for s in completed)
    )
    assert grid == [(1e-4, 0), (1e-4, 2), (1e-3, 0), (1e-3, 2)]
    assert all((sweep / k / "checkpoints/last.ckpt").is_file() for k in summaries if k not in failed)


def test_custom_backbone_with_a_checkpoint_from_the_wild_on_real_images(shared_data, make_cfg, tmp_path):
    """The CIFAR-10 ResNet-20 checkpoint (DataParallel keys, nested state_dict, CUDA tensors) on hymenoptera."""
    weights = shared_data / "pretrained/cifar10_resnet20/resnet20-12fca82f.th"
    cfg = make_cfg(
        "backbone=custom",
        "backbone.name=null",
        "backbone.model._target_=cifar_resnet.resnet20",
        f"backbone.weights={weights}",
        "backbone.data_config.input_size=[3,32,32]",
        "data=folder",
        "data.classes=null",
        f"data.root={shared_data / 'hymenoptera'}",
        "data.num_workers=0",
        "data.batch_size=64",
        "trainer.max_epochs=2",
        "schedule.freeze_depth=2",
        "optimizer.lr=3e-3",
    )
    summary = train(cfg)
    assert completed(summary)
    assert summary["weights_report"].startswith(f"weights {weights}: 95/95 model tensors loaded; 0 missing")
    assert summary["class_names"] == ["ants", "bees"] and summary["split_sizes"]["train"] == 245
    assert summary["layer_groups"] == ["conv1", "bn1", "layer1", "layer2", "layer3"]
    assert summary["best"]["val/acc"] > 0.5

    from transferlab.eval import evaluate
    from transferlab.predict import predict

    from helpers import compose_config

    ckpt = summary["checkpoints"]["best"]
    scored = evaluate(
        compose_config(f"ckpt_path={ckpt}", "split=val", f"paths.output_dir={tmp_path}/eval", config_name="eval")
    )
    assert scored["n"] == 153 and scored["metrics"]["val/acc"] == pytest.approx(summary["best"]["val/acc"], abs=1e-6)
    csv_path = predict(
        compose_config(
            f"ckpt_path={ckpt}",
            f"input={shared_data / 'hymenoptera/val/bees'}",
            f"paths.output_dir={tmp_path}/predict",
            config_name="predict",
        )
    )
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 83 and {r["class"] for r in rows} <= {"ants", "bees"}


def test_use_from_python_as_the_docs_show(tmp_path):
    """docs/python.md's pieces, without Hydra: an LP-FT run whose probe epoch trains the head on
    served features while the backbone stays put, and whose fine-tuning epoch moves the backbone."""
    import pytorch_lightning as pl

    from transferlab.backbones import create_backbone
    from transferlab.data import ClassificationDataModule
    from transferlab.feature_serving import FeatureServing
    from transferlab.heads import LinearHead
    from transferlab.module import TransferModule
    from transferlab.phase_control import PhaseControl
    from transferlab.schedules import preset

    pl.seed_everything(0)
    backbone = create_backbone("test_convnext")  # no BatchNorm: two epochs from scratch learn the digits
    phases = PhaseControl(preset("lp_ft", probe_epochs=1, ft_lr_mult=1.0), backbone.model, backbone.layer_groups)
    serving = FeatureServing(backbone, tmp_path / "cache", phases.backbone_frozen)
    data = ClassificationDataModule(classes=[0, 1, 2], input_size=32, inputs=backbone.inputs, features=serving)
    head = LinearHead(backbone.num_features, data.num_classes)
    module = TransferModule(backbone, head, data.class_names, lr_scales=phases.lr_scales(), inputs=data.inputs)

    class Snapshot(pl.Callback):
        def __init__(self):
            self.backbones = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.backbones.append({k: v.clone() for k, v in pl_module.backbone.state_dict().items()})

    start = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    snapshot = Snapshot()
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[phases, serving, snapshot], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert sorted((e["epoch"], e["split"]) for e in serving.served) == [(0, "train"), (0, "val")]
    after_probe, after_fine_tuning = snapshot.backbones
    assert all(torch.equal(start[k], after_probe[k]) for k in start)  # the probe epoch ran on features
    assert any(not torch.equal(start[k], after_fine_tuning[k]) for k in start)
    assert trainer.callback_metrics["val/acc"] > 0.6  # 3 classes: chance is 0.33


@pytest.mark.slow
def test_ddp_scores_every_val_and_test_example_exactly_once(tmp_path):
    """113 val and 113 test digits on 2 ranks: Lightning's sampler would pad one rank with a repeated example."""
    from transferlab.eval import evaluate

    from helpers import compose_config, read_summary

    split = ["data.val_fraction=0.21", "data.test_fraction=0.21"]
    result = run_cli(
        "transferlab-train",
        *TINY,
        *split,
        "optimizer.lr=1e-5",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        f"hydra.run.dir={tmp_path}/run",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path / "run")
    assert summary["split_sizes"]["val"] == summary["split_sizes"]["test"] == 113
    for name, recorded in (("val", summary["best"]), ("test", summary["test"])):
        scored = evaluate(
            compose_config(
                f"ckpt_path={summary['checkpoints']['best']}",
                f"split={name}",
                "trainer.accelerator=cpu",
                f"paths.output_dir={tmp_path}/eval_{name}",
                config_name="eval",
            )
        )
        assert scored["n"] == 113  # one device, each example once
        for metric in ("acc", "loss"):
            assert recorded[f"{name}/{metric}"] == pytest.approx(scored["metrics"][f"{name}/{metric}"], abs=1e-5)


def test_class_weights_weigh_the_loss_and_are_recorded(make_cfg):
    from transferlab.module import load_module

    summary = train(make_cfg("class_weights=balanced", "data.samples_per_class=null", run="balanced"))
    assert completed(summary) and len(summary["class_weights"]) == 3
    module = load_module(summary["checkpoints"]["best"])
    assert module.class_weights.tolist() == pytest.approx(summary["class_weights"])
    logits, target = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([1, 2])
    by_hand = torch.nn.functional.cross_entropy(logits, target, weight=module.class_weights)
    assert module.loss(logits, target) == pytest.approx(by_hand.item())

    summary = train(make_cfg("class_weights=[1,2,3]", run="listed"))
    assert summary["class_weights"] == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match=r"^class_weights=\[1, 2\]: 2 weights for 3 classes \(0, 1, 2\)"):
        train(make_cfg("class_weights=[1,2]", run="short"))
    with pytest.raises(ConfigError, match=r"^class_weights=heavy: use null, balanced, or a list"):
        train(make_cfg("class_weights=heavy", run="bad"))
