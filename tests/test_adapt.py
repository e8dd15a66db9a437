"""Domain adaptation: gradient reversal, the DANN/CDAN/MCC losses, target data, and real tiny runs end to end."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.adapt import (
    DomainAdaptation,
    class_confusion,
    information_maximisation_loss,
    ramp,
    reverse_gradient,
    statistics_of,
)
from transferlab.data import ClassificationDataModule
from transferlab.data.digits import load_digits, load_digits_m
from transferlab.data.sampling import CycleShuffle, EpochShuffle
from transferlab.data.target import TargetData
from transferlab.errors import ConfigError
from transferlab.eval import evaluate
from transferlab.module import load_module
from transferlab.train import train
from transferlab.validators import DIRECTIONS

from helpers import TINY, completed, run_cli

DA = ["data=digits_m", "test=false"]


def test_gradient_reversal_flips_the_gradient_and_scales_it():
    x = torch.randn(4, 3, requires_grad=True)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.3 * torch.arange(3.0).expand(4, 3))


def test_ramp_follows_ganin_et_al():
    assert ramp(0.0) == 0.0
    assert ramp(0.5) == pytest.approx(2 / (1 + np.exp(-5)) - 1)
    assert ramp(1.0) == pytest.approx(0.99991, abs=1e-5)
    assert all(ramp(a) < ramp(b) for a, b in zip(np.linspace(0, 1, 11)[:-1], np.linspace(0, 1, 11)[1:]))


@pytest.mark.parametrize("adversarial", ["dann", "cdan"])
def test_features_get_the_discriminators_gradient_reversed_and_scaled_by_the_ramp(adversarial):
    torch.manual_seed(0)
    adaptation = DomainAdaptation(8, 3, adversarial=adversarial, adversarial_weight=0.5, discriminator_hidden=16)
    features = torch.randn(12, 8, requires_grad=True)
    logits = torch.randn(12, 3)
    loss, logs = adaptation(features, logits, num_source=6, progress=0.2)
    loss.backward()
    assert logs["adapt/lambda"] == pytest.approx(0.5 * ramp(0.2))
    # The same loss through a reversal of -1 (the identity's gradient): the discriminator's own gradient.
    plain = features.detach().clone().requires_grad_(True)
    adaptation.adversarial_weight = -1.0 / ramp(0.2)
    adaptation(plain, logits, num_source=6, progress=0.2)[0].backward()
    assert torch.allclose(features.grad, -0.5 * ramp(0.2) * plain.grad, atol=1e-6)
    assert features.grad.abs().sum() > 0


def test_mcc_is_low_for_confident_distinct_predictions_and_high_for_confusion():
    confident = torch.eye(4).repeat(4, 1) * 20
    confused = torch.zeros(16, 4)
    assert class_confusion(confident, 2.5) < 0.01
    assert class_confusion(confused, 2.5) == pytest.approx(0.75)


def test_an_adapter_that_adapts_nothing_is_refused():
    with pytest.raises(ConfigError, match=r"^adapt: adapts nothing"):
        DomainAdaptation(8, 3, adversarial=None, mcc_weight=0.0, target_in_batchnorm=False)
    with pytest.raises(ConfigError, match=r"^adapt.target_in_batchnorm=false: the adaptation losses need target"):
        DomainAdaptation(8, 3, adversarial="dann", target_in_batchnorm=False)
    with pytest.raises(ConfigError, match=r"^adapt.adversarial=gan: unknown"):
        DomainAdaptation(8, 3, adversarial="gan")


def test_digits_m_blends_each_digit_over_a_photo_the_same_way_every_time():
    digits, names = load_digits([3, 7])
    blended, same_names = load_digits_m([3, 7])
    again, _ = load_digits_m([3, 7])
    assert names == same_names and np.array_equal(digits.labels, blended.labels)
    assert blended.items[0].shape == (32, 32, 3) and blended.items[0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(blended.items, again.items))
    # Colour from the photo: the channels differ (a digit alone is gray, the same in all three).
    assert np.array_equal(digits.items[0][..., 0], digits.items[0][..., 1])
    assert not np.array_equal(blended.items[0][..., 0], blended.items[0][..., 1])


def test_target_order_is_not_the_sources():
    os.environ.setdefault("PL_GLOBAL_SEED", "7")
    data = list(range(50))
    source = list(EpochShuffle(data))
    target = CycleShuffle(data, num_samples=120)
    drawn = list(target)
    assert len(drawn) == 120 and sorted(drawn[:50]) == data and sorted(drawn[50:100]) == data
    assert drawn[:50] != source
    target.set_epoch(1)
    assert list(target) != drawn


@pytest.mark.slow
def test_each_method_trains_on_digits_m_in_a_sweep_and_the_report_shows_target_accuracy(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "transferlab-train",
        "-m",
        *TINY,
        "data=digits_m",
        "adapt=none,dann,cdan,mcc,dann_mcc",
        "data.batch_size=32",
        f"hydra.sweep.dir={sweep}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    methods = {}
    for summary_file in sorted(sweep.glob("*/summary.json")):
        summary = json.loads(summary_file.read_text())
        assert summary["status"] == "completed", summary.get("error")
        assert 0 <= summary["test"]["target/acc"] <= 1 and "target/f1" in summary["test"]
        assert summary["target"] == {
            "source": "digits_m",
            "labelled": True,
            "split_sizes": summary["split_sizes"],  # digits-M split like the digits it is made of
        }
        assert summary["model_selection"] == {"monitor": "val/acc", "on_target_labels": False}
        methods[tuple((summary.get("adaptation") or {}).get("methods", []))] = summary
        assert "target/acc" in summary["final"]
    assert set(methods) == {(), ("dann",), ("cdan",), ("mcc",), ("dann", "mcc")}
    dann = methods[("dann",)]
    train_images = dann["split_sizes"]["train"]  # a last batch of one image is dropped (BatchNorm)
    assert dann["adaptation"]["steps_per_epoch"] == train_images // 32 + (train_images % 32 > 1)
    assert 0 < dann["final"]["adapt/lambda"] <= 1 and "lr/discriminator" in dann["final"]
    assert "adapt/mcc" in methods[("mcc",)]["final"] and "adapt/domain_loss" not in methods[("mcc",)]["final"]
    report = run_cli("transferlab-report", sweep)
    assert report.returncode == 0, report.stderr
    assert "target/acc" in (sweep / "report.md").read_text()


def _folder_run(make_cfg, domain_folders: Path, target: str, *overrides: str) -> dict:
    """A run from the digits folder to the ``target`` folder."""
    source, target_root = domain_folders / "digits", domain_folders / target
    folder = ["data=folder", "data.classes=null", f"data.root={source}", f"data.target.root={target_root}"]
    folder.append("data.augment=none")
    return train(make_cfg(*folder, *overrides))


@pytest.mark.parametrize("method", ["dann", "cdan"])
def test_two_folders_labelled_target_and_selection_on_target_labels(make_cfg, domain_folders, method):
    summary = _folder_run(
        make_cfg, domain_folders, "digits_m", "data.test_fraction=0.2", f"adapt={method}", "monitor=target/acc"
    )
    assert completed(summary)
    assert summary["model_selection"] == {"monitor": "target/acc", "on_target_labels": True}
    assert summary["target"]["labelled"] and summary["target"]["root"] == str(domain_folders / "digits_m")
    assert "target/acc" in summary["test"] and summary["best"]["target/acc"] == summary["final"]["target/acc"]


@pytest.mark.parametrize("method", ["mcc", "dann_mcc"])
def test_flat_unlabelled_target_trains_without_target_scores(make_cfg, domain_folders, method):
    summary = _folder_run(make_cfg, domain_folders, "unlabelled", f"adapt={method}")
    assert summary["adaptation"]["methods"] == method.split("_")
    images = len(list((domain_folders / "unlabelled").iterdir()))
    assert summary["target"] == {
        "root": str(domain_folders / "unlabelled"),
        "labelled": False,
        "split_sizes": {"train": images, "val": images, "test": 0},  # val: the same images, for the validators
    }
    assert {k for k in summary["final"] if k.startswith("target/")} == set(DIRECTIONS)  # no labels to score


def test_frozen_backbone_adapts_the_heads_hidden_layer_from_cached_features(make_cfg):
    summary = train(
        make_cfg(*DA, "schedule=frozen", "schedule.probe=sgd", "head=mlp", "adapt=dann", "trainer.max_epochs=2")
    )
    served = {(e["split"], e["hit"]) for e in summary["feature_cache"]}
    assert {"train", "val", "target_train", "target_val"} <= {split for split, _ in served}
    assert summary["final"]["adapt/lambda"] > 0
    # No phase freezes or rescales the discriminator: it trains at optimizer.lr beside a frozen backbone.
    first_epoch = next(csv.DictReader(open(Path(summary["run_dir"]) / "metrics.csv")))
    assert float(first_epoch["lr/discriminator"]) == float(first_epoch["lr/head"]) > 0


def test_resume_mid_ramp_ends_with_the_same_weights(make_cfg, tmp_path):
    common = [*DA, "adapt=dann_mcc", "adapt.discriminator_hidden=32", "trainer.max_epochs=3"]
    train(make_cfg(*common, run="straight"))
    train(
        make_cfg(*common, "+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=0", run="resumed")
    )
    summary = train(make_cfg(*common, "ckpt_path=last", run="resumed"))
    assert summary["epochs"] == 3
    straight = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("adaptation.adversarial.discriminator.") for k in straight)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # Inference rebuilds the model alone: the discriminator is left out.
    model = load_module(str(tmp_path / "resumed/checkpoints/last.ckpt"))
    assert not any(name.startswith("adaptation") for name, _ in model.named_modules())
    assert torch.equal(model.head.fc.weight, straight["head.fc.weight"])


@pytest.mark.slow
def test_ddp_two_processes_adapt_in_step(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    weights = tmp_path / "weights"
    result = run_cli(
        "transferlab-train",
        *TINY,
        *DA,
        "adapt=cdan",
        "adapt.discriminator_hidden=32",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "+callbacks.save._target_=helpers.SaveEpochWeights",
        f"+callbacks.save.dirpath={weights}",
        f"hydra.run.dir={tmp_path}/run",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r0 = torch.load(weights / "rank0_epoch0.pt", weights_only=True)
    r1 = torch.load(weights / "rank1_epoch0.pt", weights_only=True)
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "completed" and summary["adaptation"]["methods"] == ["cdan"]
    assert np.isfinite(summary["final"]["target/dev"])  # both ranks' examples gathered: one value


@pytest.mark.slow
def test_target_folder_errors_are_one_line(make_cfg, tmp_path):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.png").write_bytes(b"not a png")
    other = tmp_path / "other_classes"
    for name in ("cat", "dog"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(other / name / "a.png")

    def error(*overrides: str) -> str:
        with pytest.raises(ConfigError) as caught:
            train(make_cfg("overwrite=true", *overrides))
        return str(caught.value)

    assert "folder not found" in error("adapt=dann", f"data.target.root={tmp_path / 'missing'}")
    assert "has no images" in error("adapt=dann", f"data.target.root={tmp_path / 'empty'}")
    assert "['cat', 'dog'] differ from the source's ['0', '1', '2']" in error("adapt=dann", f"data.target.root={other}")
    assert "needs target images" in error("adapt=dann")
    message = error("adapt=dann", "data=digits_m", "schedule=frozen")
    assert message.startswith("adapt.adversarial=dann: nothing to adapt") and "head=mlp" in message
    assert error("adapt=mcc", "data=digits_m", "adapt.mcc_weight=-1").startswith("adapt.mcc_weight=-1:")
    # On the command line: one error line, last (the skipped files' warning comes first: found once fit starts).
    result = run_cli(
        "transferlab-train", *TINY, "adapt=dann", f"data.target.root={broken}", f"hydra.run.dir={tmp_path}/cli"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: data.target.root={broken}: no readable image"), result.stderr
    assert "Traceback" not in result.stderr and sum(line.startswith("error") for line in lines) == 1


def test_target_datamodule_splits_a_labelled_folder_like_the_source(domain_folders):
    module = ClassificationDataModule(source="folder", root=str(domain_folders / "digits"), test_fraction=0.2)
    target_data = TargetData(module, {"root": str(domain_folders / "digits_m")})
    assert target_data.summary()["split_sizes"] == module.split_sizes() and target_data.labelled
    source = module.datasets["test"].items
    target = target_data.datasets["target_test"].items
    assert [p.name for p in source] == [
        p.name for p in target
    ]  # the same digits, so no target test digit was trained on


@pytest.mark.slow
def test_wandb_gets_target_and_adaptation_metrics(tmp_path):
    from helpers import run_records

    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env["HOME"] = str(tmp_path)  # no credentials: offline by itself
    run = tmp_path / "run"
    result = run_cli(
        "transferlab-train", *TINY, "logger=[csv,wandb]", "data=digits_m", "adapt=dann", f"hydra.run.dir={run}", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = run_records(run)
    assert records["config"]["adapt"]["adversarial"] == "dann"
    assert {"target/acc", "adapt/lambda_epoch", "lr-AdamW/discriminator"} <= records["history_keys"]
    summary = json.loads((run / "summary.json").read_text())
    assert records["summary"]["target/acc"] == pytest.approx(summary["test"]["target/acc"])


def test_batchnorm_statistics_of_other_batches_hold_within_and_are_restored_after():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    model[0].weight.data = torch.eye(4, 3).view(4, 3, 1, 1)
    model[0].bias.data.zero_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(5, 3, 6, 6) * 2 + 3 for _ in range(3)]
    with statistics_of(model, batches, model):
        mean = torch.cat(batches).mean((0, 2, 3))
        assert torch.allclose(model[1].running_mean[:3], mean, atol=1e-5)  # the mean over every batch
        assert not model[1].training and model[1].momentum is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[1].momentum == 0.1 and not model[1].training


def test_adabn_trains_as_source_only_and_scores_the_target_with_its_own_statistics(make_cfg):
    plain = train(make_cfg(*DA, "adapt=none", "trainer.max_epochs=2", run="plain"))
    adabn = train(make_cfg(*DA, "adapt=adabn", "trainer.max_epochs=2", run="adabn"))
    assert completed(adabn) and adabn["adaptation"]["methods"] == ["adabn"]
    # The same source training (no target image in its batches), weights and statistics (the target's are used
    # while scoring it, then restored) ...
    weights = [torch.load(r["checkpoints"]["last"], weights_only=True)["state_dict"] for r in (plain, adabn)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert adabn["final"]["val/acc"] == plain["final"]["val/acc"]
    # ... and another score on the target: the shift here is colour and texture, which BatchNorm statistics absorb.
    assert adabn["final"]["target/acc"] != plain["final"]["target/acc"]


def test_mixed_bn_puts_target_images_in_the_batches_without_a_loss(make_cfg):
    summary = train(make_cfg(*DA, "adapt=mixed_bn"))
    assert completed(summary) and summary["adaptation"]["methods"] == ["mixed_bn"]
    assert summary["final"]["adapt/loss"] == 0 and "adapt/domain_loss" not in summary["final"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule=frozen", "schedule.probe=sgd"], "the schedule freezes the whole backbone"),
        (["backbone.name=test_convnext"], "the backbone has no BatchNorm layer"),
    ],
)
def test_adabn_without_a_batchnorm_that_runs_is_one_line(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=f"^adapt.target_statistics=true: {message}"):
        train(make_cfg(*DA, "adapt=adabn", *overrides))


def test_information_maximisation_loss_is_lowest_for_confident_diverse_predictions():
    confident_diverse = torch.eye(4).repeat(3, 1) * 30
    one_class = torch.zeros(12, 4)
    one_class[:, 0] = 30
    uniform = torch.zeros(12, 4)
    assert information_maximisation_loss(confident_diverse) == pytest.approx(-np.log(4), abs=1e-3)
    assert information_maximisation_loss(one_class) == pytest.approx(0.0, abs=1e-3)  # confident, not diverse
    assert information_maximisation_loss(uniform) == pytest.approx(0.0, abs=1e-3)  # diverse, not confident


def test_shot_adapts_from_a_source_checkpoint_on_target_images_alone_with_the_classifier_fixed(make_cfg, tmp_path):
    source = train(make_cfg(*DA, "head=mlp", "trainer.max_epochs=1", run="source"))
    best = source["checkpoints"]["best"]
    shot = train(
        make_cfg(*DA, "head=mlp", "adapt=shot", f"adapt.source_ckpt={best}", "trainer.max_epochs=2", run="shot")
    )
    assert completed(shot) and shot["adaptation"]["methods"] == ["im", "source_free"]
    assert shot["final"]["adapt/im_loss"] < 0 and "train/loss" not in shot["final"]  # no source loss
    before = torch.load(best, weights_only=True)["state_dict"]
    after = torch.load(shot["checkpoints"]["last"], weights_only=True)["state_dict"]
    for key in before:  # the classifier stays the source's; the features moved
        assert torch.equal(before[key], after[key]) == key.startswith("head.fc."), key
    assert list(shot["adaptation"]["batch_size"]) == ["target"]  # source-free: no source batch


def test_shot_errors_are_one_line(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^adapt.source_ckpt=null: SHOT \(adapt.im_weight > 0\) adapts"):
        DomainAdaptation(8, 3, adversarial=None, im_weight=1.0)
    (tmp_path / "some.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^adapt.source_ckpt=.*some.ckpt: a source-free run needs a target loss"):
        DomainAdaptation(8, 3, adversarial=None, im_weight=0.0, source_ckpt=str(tmp_path / "some.ckpt"))
    with pytest.raises(ConfigError, match=r"^adapt.source_ckpt=.*missing.ckpt: file not found"):
        DomainAdaptation(8, 3, adversarial=None, im_weight=1.0, source_ckpt=str(tmp_path / "missing.ckpt"))
    other = train(make_cfg(*DA, "head=linear", "trainer.max_epochs=1", run="linear_source"))
    with pytest.raises(ConfigError, match=r"^adapt.source_ckpt=.*: a checkpoint of another model"):
        train(make_cfg(*DA, "head=mlp", "adapt=shot", f"adapt.source_ckpt={other['checkpoints']['best']}"))
    with pytest.raises(ConfigError, match=r"^adapt.adversarial=dann: a source-free run"):
        DomainAdaptation(8, 3, adversarial="dann", source_ckpt=other["checkpoints"]["best"])


def test_the_best_checkpoint_by_each_validator_is_kept_and_tested(make_cfg):
    by = ["target/snd", "target/entropy", "val/acc", "target/acc", "val/loss", "target/dev"]
    summary = train(make_cfg(*DA[:1], "adapt=dann", "trainer.max_epochs=3", f"test_best_by=[{','.join(by)}]"))
    assert completed(summary) and list(summary["test_best_by"]) == by
    rows = list(csv.DictReader(open(Path(summary["run_dir"]) / "metrics.csv")))
    for metric, chosen in summary["test_best_by"].items():
        pick = min if metric in ("target/entropy", "val/loss", "target/dev") else max
        assert chosen["epoch"] == int(pick(rows, key=lambda r: float(r[metric]))["epoch"]), metric
        assert 0 <= chosen["target/acc"] <= 1 and "test/acc" in chosen
    assert summary["test_best_by"]["val/acc"] == {"epoch": summary["best_epoch"], **summary["test"]}
    checkpoints = {p.name for p in (Path(summary["run_dir"]) / "checkpoints").iterdir()}
    assert checkpoints == {"best.ckpt", "last.ckpt", *(f"best-by-{m.replace('/', '-')}.ckpt" for m in by[:2] + by[3:])}
    for metric in by[:2] + by[3:]:  # each file is of the epoch it was chosen at
        saved = torch.load(Path(summary["run_dir"]) / f"checkpoints/best-by-{metric.replace('/', '-')}.ckpt")
        assert saved["epoch"] == summary["test_best_by"][metric]["epoch"], metric
    # ... and each epoch's own weights were tested: another epoch, another loss.
    losses = {chosen["epoch"]: chosen["target/loss"] for chosen in summary["test_best_by"].values()}
    assert len(losses) >= 2 and len(set(losses.values())) == len(losses), summary["test_best_by"]
    with pytest.raises(ConfigError, match=r"^test_best_by=target/sndd: no step logs it"):
        train(make_cfg(*DA[:1], "adapt=dann", "test_best_by=[target/sndd]", run="bad"))


def test_shot_resumes_to_the_same_weights(make_cfg, tmp_path):
    source = train(make_cfg(*DA, "head=mlp", run="source"))["checkpoints"]["best"]
    common = [*DA, "head=mlp", "adapt=shot", f"adapt.source_ckpt={source}", "trainer.max_epochs=2"]
    train(make_cfg(*common, run="straight"))
    stop = ["+callbacks.stop._target_=helpers.StopAfterEpoch", "+callbacks.stop.epoch=0"]
    train(make_cfg(*common, *stop, run="resumed"))
    assert train(make_cfg(*common, "ckpt_path=last", run="resumed"))["epochs"] == 2
    straight = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


# No source data at all: the source checkpoint gives the classes and the input preparation.
NO_SOURCE = ["data=source_free", "data.input_size=null", "data.target.source=digits_m", "monitor=target/im"]


def test_shot_without_source_data_matches_the_run_that_names_it(make_cfg, tmp_path):
    source = train(make_cfg(*DA, "head=mlp", "trainer.max_epochs=1", run="source"))
    best = source["checkpoints"]["best"]
    # No dropout: each val loader of the run that names the source draws a seed from the global RNG dropout reads.
    shot = [*DA[:1], "head=mlp", "head.dropout=0", "adapt=shot", f"adapt.source_ckpt={best}", "trainer.max_epochs=2"]
    shot.append("monitor=target/im")
    named = train(make_cfg(*shot, "test=false", run="named"))
    alone = train(make_cfg(*shot, *NO_SOURCE, "test_best_by=[target/acc]", run="alone"))
    assert completed(alone) and alone["class_names"] == source["class_names"]
    assert alone["split_sizes"] == {"train": 0, "val": 0, "test": 0}  # nothing of the source is read
    assert alone["target"]["split_sizes"] == source["target"]["split_sizes"]
    assert alone["weights_report"] == f"adapt.source_ckpt={best}: every model tensor"
    # The source's input preparation (32 px), not the backbone's default, though data.input_size is unset.
    shot_meta = torch.load(alone["checkpoints"]["last"], weights_only=True)["transferlab"]
    assert shot_meta["inputs"] == torch.load(best, weights_only=True)["transferlab"]["inputs"]
    # Source-free training reads target batches alone: without the source named, the same steps, the same weights.
    ends = [torch.load(run["checkpoints"]["last"], weights_only=True)["state_dict"] for run in (named, alone)]
    for key in ends[0]:
        assert torch.equal(ends[0][key], ends[1][key]), key
    rows = list(csv.DictReader(open(Path(alone["run_dir"]) / "metrics.csv")))
    assert not any(k.startswith(("val/", "train/")) for k in rows[0]), list(rows[0])
    assert alone["best_epoch"] == int(max(rows, key=lambda r: float(r["target/im"] or "-inf"))["epoch"])
    # Its test is the labelled target's test split, the confusion matrix too.
    assert set(alone["test"]) >= {"target/acc", "target/loss"} and "test/acc" not in alone["test"]
    assert "target/acc" in alone["test_best_by"]["target/acc"]
    assert (Path(alone["run_dir"]) / "confusion.png").is_file()
    # eval needs data named (the run read none), and then scores the target's test split as the run did.
    evaluate_cfg = [f"ckpt_path={alone['checkpoints']['best']}", "split=test", "trainer.accelerator=cpu"]
    with pytest.raises(
        ConfigError,
        match=r"^data.source=none: no source data, so nothing to split or score .*; name labelled data: \+data.source=",
    ):
        evaluate(make_cfg(*evaluate_cfg, run="eval_none", config_name="eval"))
    scored = evaluate(make_cfg(*evaluate_cfg, "+data.source=digits_m", run="eval", config_name="eval"))
    assert scored["metrics"]["test/acc"] == pytest.approx(alone["test"]["target/acc"], abs=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.source=none", "data.input_size=null"], r"^data.source=none: only a source-free run"),
        (["adapt=shot", "data=source_free"], r"^data.input_size=32: applies to source data"),
        (["adapt=shot", *NO_SOURCE, "monitor=val/acc"], r"^monitor=val/acc: data.source=none has no source split"),
        (["adapt=shot", *NO_SOURCE, "test_best_by=[val/loss]"], r"^test_best_by=val/loss: data.source=none"),
        (["adapt=shot", *NO_SOURCE, "class_weights=balanced"], r"^class_weights=balanced: weighs the labelled"),
        (["adapt=shot", *NO_SOURCE, "+data.root=/x"], r"^data.root=/x: applies to source data"),
    ],
)
def test_no_source_data_errors_are_one_line_before_anything_is_built(make_cfg, tmp_path, overrides, message):
    from transferlab.config import validate

    (tmp_path / "source.ckpt").write_bytes(b"")  # validate checks that the file exists, not what it holds
    shot = [f"adapt.source_ckpt={tmp_path / 'source.ckpt'}"] if "adapt=shot" in overrides else []
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*overrides, *shot))
