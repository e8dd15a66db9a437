"""Schedules as phases: presets, learning rates at every step, BatchNorm modes, resume, accumulation, DDP, compile."""

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from transferlab.errors import ConfigError
from transferlab.layer_groups import LayerGroup
from transferlab.schedules import Phase, Schedule, preset
from transferlab.train import train

from helpers import TINY, completed, initial_backbone, run_cli

GROUPS = [LayerGroup(f"g{i}", (f"g{i}.w",)) for i in range(5)]  # test_resnet has 5: stem, layer1..layer4
STEM, LAYER3, LAYER4 = "backbone.conv1.0.weight", "backbone.layer3.0.conv1.weight", "backbone.layer4.0.conv1.weight"


def depths(schedule):
    return [(p.epochs, p.frozen_count(GROUPS)) for p in schedule.phases]


def test_gradual_spreads_its_unfreezing_over_the_run_unless_told_otherwise():
    assert depths(preset("gradual", num_groups=5, max_epochs=20)) == [(2, 5), (2, 4), (2, 3), (2, 2), (2, 1), (None, 0)]
    assert depths(preset("gradual", num_groups=5, max_epochs=40, unfreeze_fraction=0.25)) == [
        (2, 5),
        *[(2, d) for d in (4, 3, 2, 1)],
        (None, 0),
    ]
    assert depths(preset("gradual", num_groups=5, max_epochs=30, freeze_depth=3)) == [(7, 5), (7, 4), (None, 3)]
    assert depths(preset("gradual", num_groups=5, max_epochs=3)) == [(1, 5), (1, 4), (1, 3), (1, 2), (1, 1), (None, 0)]
    assert depths(preset("gradual", num_groups=5, max_epochs=20, unfreeze_every=1))[0] == (1, 5)  # explicit wins
    assert depths(preset("gradual", num_groups=5, max_epochs=20, milestones=[[3, 0]])) == [(3, 5), (None, 0)]
    with pytest.raises(ConfigError, match=r"^schedule.unfreeze_fraction=0: use a number in \(0, 1\]"):
        preset("gradual", num_groups=5, max_epochs=20, unfreeze_fraction=0)


def test_presets_are_phases():
    assert depths(preset("full")) == [(None, 0)]
    assert depths(preset("frozen")) == [(None, 5)]
    assert depths(preset("freeze_depth", freeze_depth=2)) == [(None, 2)]
    assert depths(preset("gradual", num_groups=5)) == [(1, 5), (1, 4), (1, 3), (1, 2), (1, 1), (None, 0)]
    assert depths(preset("gradual", freeze_depth=3, unfreeze_every=2, num_groups=5)) == [(2, 5), (2, 4), (None, 3)]
    assert depths(preset("gradual", milestones=[[2, 3], [5, 0]])) == [(2, 5), (3, 3), (None, 0)]
    lp_ft = preset("lp_ft", probe_epochs=3, freeze_depth=1, backbone_lr_mult=0.5, ft_lr_mult=0.1)
    assert depths(lp_ft) == [(3, 5), (None, 1)]
    assert lp_ft.phases[1].lr_scales(5)[-2:] == pytest.approx([0.05, 0.1])
    spelled = preset("phases", bn_mode="frozen_stats", phases=[{"epochs": 2, "freeze_depth": "all"}, {}])
    assert depths(spelled) == [(2, 5), (None, 0)] and spelled.phases[1].bn_mode == "frozen_stats"
    assert [Schedule((Phase(epochs=2), Phase(epochs=1), Phase())).phase_index(e) for e in range(5)] == [0, 0, 1, 2, 2]


def test_layer_decay_scales_and_freezing():
    phase = Phase(layer_decay=0.5, backbone_lr_mult=0.8, min_lr_scale=0.04, freeze_below=0.1)
    assert phase.lr_scales(5) == pytest.approx([0.04, 0.05, 0.1, 0.2, 0.4, 1.0])
    assert phase.frozen_groups(GROUPS) == [True, True, False, False, False]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bn_mode": "eval"}, r"^schedule.bn_mode=eval: choose one of train, frozen_stats, frozen, affine_only"),
        ({"layer_decay": 1.5}, r"^schedule.layer_decay=1.5: use a number in \(0, 1\]"),
        ({"head_lr_mult": 0}, r"^schedule.head_lr_mult=0: must be > 0"),
        ({"name": "cosine"}, r"^schedule.name=cosine: choose one of full, frozen"),
        ({"name": "layer_decay"}, r"^schedule.layer_decay is required"),
        ({"name": "gradual", "milestones": [[0, 5], [0, 3]]}, r"^schedule.milestones: epochs must be distinct"),
    ],
)
def test_schedule_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        preset(**kwargs)


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@pytest.mark.parametrize("scheduler", ["cosine", "step"])
def test_every_group_lr_is_base_times_scale_times_schedule(make_cfg, tmp_path, scheduler):
    record = tmp_path / "lr.json"
    extra = ["lr_scheduler.warmup_steps=3"] if scheduler == "cosine" else ["lr_scheduler.milestones=[0.5]"]
    summary = train(
        make_cfg(
            "schedule=lp_ft",
            "schedule.probe_epochs=1",
            "schedule.layer_decay=0.5",
            "schedule.backbone_lr_mult=0.5",
            f"lr_scheduler={scheduler}",
            *extra,
            "optimizer.lr=0.01",
            "trainer.max_epochs=3",
            "test=false",
            "+callbacks.lr._target_=helpers.RecordLr",
            f"+callbacks.lr.path={record}",
        )
    )
    rows = json.loads(record.read_text())
    schedule = preset("lp_ft", probe_epochs=1, layer_decay=0.5, backbone_lr_mult=0.5, num_groups=5)
    total = len(rows)
    names = [*summary["layer_groups"], "head"]
    for step, epoch, groups in rows:
        factor = _cosine(step, total, 3) if scheduler == "cosine" else (0.1 if step >= int(0.5 * total) else 1.0)
        scales = dict(zip(names, schedule.phases[schedule.phase_index(epoch)].lr_scales(5)))
        # Each layer group is two optimizer groups at one lr: its weights decay, its biases and norm weights not.
        assert {layer for layer, _, _ in groups.values()} == set(names)
        assert set(groups) == {*names, *(f"{n}.no_decay" for n in names)}
        for name, (layer, lr, weight_decay) in groups.items():
            assert lr == pytest.approx(0.01 * scales[layer] * factor, rel=1e-9), (step, epoch, name)
            assert weight_decay == (0.0 if name.endswith(".no_decay") else 0.01), name
    assert [p["freeze_depth"] for p in summary["phases"]] == [5, 0]
    assert [p["start_epoch"] for p in summary["phases"]] == [0, 1]


@pytest.mark.parametrize(
    ("mode", "depth", "stats_move", "affine_moves", "conv_moves"),
    [
        ("train", 0, True, True, True),
        ("frozen_stats", 0, False, True, True),
        ("frozen", 0, False, False, True),
        ("affine_only", "all", False, True, False),
    ],
)
def test_batchnorm_modes(make_cfg, tmp_path, mode, depth, stats_move, affine_moves, conv_moves):
    from hydra.utils import instantiate

    cfg = make_cfg(f"schedule.bn_mode={mode}", f"schedule.freeze_depth={depth}", "test=false")
    torch.manual_seed(cfg.seed)
    before = instantiate(cfg.backbone).model.state_dict()
    train(cfg)
    after = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    bn, conv = "layer2.0.bn1", "layer2.0.conv1"
    assert (not torch.equal(before[f"{bn}.running_mean"], after[f"backbone.{bn}.running_mean"])) == stats_move
    assert (not torch.equal(before[f"{bn}.weight"], after[f"backbone.{bn}.weight"])) == affine_moves
    assert (not torch.equal(before[f"{conv}.weight"], after[f"backbone.{conv}.weight"])) == conv_moves


def _epoch_weights(folder: Path, rank: int, epoch: int) -> dict:
    return torch.load(folder / f"rank{rank}_epoch{epoch}.pt", weights_only=True)


def test_gradual_unfreezing_trains_each_group_from_its_epoch(make_cfg, tmp_path):
    weights = tmp_path / "weights"
    cfg = make_cfg(
        "schedule=gradual",
        "trainer.max_epochs=3",
        "test=false",
        "+callbacks.save._target_=helpers.SaveEpochWeights",
        f"+callbacks.save.dirpath={weights}",
    )
    initial = {f"backbone.{k}": v for k, v in initial_backbone(cfg).items()}
    summary = train(cfg)
    assert [(p["start_epoch"], p["freeze_depth"]) for p in summary["phases"]] == [(0, 5), (1, 4), (2, 3)]
    epochs = [_epoch_weights(weights, 0, e) for e in range(3)]
    assert torch.equal(epochs[0][LAYER4], initial[LAYER4])  # head only in epoch 0
    assert not torch.equal(epochs[1][LAYER4], epochs[0][LAYER4])  # layer4 unfrozen at epoch 1
    assert torch.equal(epochs[1][LAYER3], initial[LAYER3]) and not torch.equal(epochs[2][LAYER3], epochs[1][LAYER3])
    assert torch.equal(epochs[2][STEM], initial[STEM])


@pytest.mark.parametrize("killed_after", [0, 1], ids=["last-probe-epoch", "first-fine-tune-epoch"])
def test_resume_after_a_phase_change_matches_an_uninterrupted_run(make_cfg, tmp_path, killed_after):
    common = ["schedule=lp_ft", "schedule.probe_epochs=1", "trainer.max_epochs=3", "test=false"]
    straight = train(make_cfg(*common, run="straight"))
    # Killed after an epoch (just before the phase change, or just after it), then resumed from last in its folder.
    stop = ["+callbacks.stop._target_=helpers.StopAfterEpoch", f"+callbacks.stop.epoch={killed_after}"]
    train(make_cfg(*common, *stop, run="resumed"))
    resumed = train(make_cfg(*common, "ckpt_path=last", run="resumed"))
    assert resumed["phases"] == straight["phases"] and len(resumed["phases"]) == 2
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["optimizer_states"][0]["param_groups"] == b["optimizer_states"][0]["param_groups"]


def test_phase_changes_land_on_optimizer_step_boundaries(make_cfg, tmp_path):
    record = tmp_path / "lr.json"
    # 5 training batches an epoch, 2 per optimizer step: the epoch's last step takes a single batch.
    train(
        make_cfg(
            "schedule=lp_ft",
            "schedule.probe_epochs=1",
            "trainer.max_epochs=2",
            "trainer.accumulate_grad_batches=2",
            "test=false",
            "+callbacks.grads._target_=helpers.CheckGradsAtPhaseStart",
            "+callbacks.lr._target_=helpers.RecordLr",
            f"+callbacks.lr.path={record}",
        )
    )
    rows = json.loads(record.read_text())
    assert [(step, epoch) for step, epoch, _ in rows] == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]


def test_layer_decay_lr_per_group_in_metrics(make_cfg, tmp_path):
    train(
        make_cfg(
            "schedule=layer_decay",
            "schedule.layer_decay=0.5",
            "lr_scheduler=constant",
            "optimizer.lr=0.01",
            "test=false",
        )
    )
    row = next(csv.DictReader((tmp_path / "run/metrics.csv").open()))
    got = [float(row[f"lr/{g}"]) for g in ("stem", "layer1", "layer2", "layer3", "layer4", "head")]
    assert got == pytest.approx([0.01 * 0.5**k for k in (5, 4, 3, 2, 1, 0)])


@pytest.mark.slow
def test_torch_compile_trains_newly_unfrozen_layers(make_cfg, tmp_path):
    weights = tmp_path / "weights"
    cfg = make_cfg(
        "schedule=gradual",
        "trainer.max_epochs=2",
        "trainer.compile=true",
        "test=false",
        "+callbacks.save._target_=helpers.SaveEpochWeights",
        f"+callbacks.save.dirpath={weights}",
    )
    initial = {f"backbone.{k}": v for k, v in initial_backbone(cfg).items()}
    train(cfg)
    epochs = [_epoch_weights(weights, 0, e) for e in range(2)]
    assert torch.equal(epochs[0][LAYER4], initial[LAYER4])
    assert not torch.equal(epochs[1][LAYER4], epochs[0][LAYER4])
    assert torch.equal(epochs[1][LAYER3], initial[LAYER3])


@pytest.mark.slow
def test_ddp_two_processes_train_newly_unfrozen_layers_in_step(tmp_path):
    weights = tmp_path / "weights"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    result = run_cli(
        "transferlab-train",
        *TINY,
        "schedule=gradual",
        "trainer.max_epochs=2",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "test=false",
        "+callbacks.save._target_=helpers.SaveEpochWeights",
        f"+callbacks.save.dirpath={weights}",
        f"hydra.run.dir={tmp_path}/run",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = _epoch_weights(weights, 0, 1), _epoch_weights(weights, 1, 1)
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    first = _epoch_weights(weights, 0, 0)
    assert not torch.equal(r0[LAYER4], first[LAYER4])  # unfrozen at epoch 1, trained under DDP
    assert torch.equal(r0[LAYER3], first[LAYER3])
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert completed(summary) and len(summary["phases"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "weights"]  # no extra run folders per rank
