"""Heads: shapes, options, binary and label smoothing, in real runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from transferlab.errors import ConfigError
from transferlab.heads import LinearHead, MLPHead
from transferlab.train import train

from helpers import completed

REPO = Path(__file__).resolve().parents[1]


def test_head_shapes_and_options():
    x = torch.randn(4, 32)
    assert LinearHead(32, 5, dropout=0.2)(x).shape == (4, 5)
    mlp = MLPHead(32, 5, hidden_sizes=[16, 8], activation="silu", norm="layer", dropout=0.1)
    assert mlp(x).shape == (4, 5)
    assert [type(m).__name__ for m in mlp.hidden][:4] == ["Linear", "LayerNorm", "SiLU", "Dropout"]
    assert LinearHead(32, 2, binary=True)(x).shape == (4, 1)
    assert LinearHead(32, 3, binary=True)(x).shape == (4, 3)  # binary applies to two classes only
    with pytest.raises(ConfigError, match=r"^head.activation=swish: unknown; choose one of relu, gelu"):
        MLPHead(32, 5, activation="swish")


def test_binary_mlp_head_with_label_smoothing_trains(make_cfg):
    summary = train(
        make_cfg(
            "backbone.name=test_convnext",  # no BatchNorm: a 2-epoch run from scratch generalises
            "head=mlp",
            "head.binary=true",
            "head.hidden_sizes=[32]",
            "data.classes=[0,1]",
            "label_smoothing=0.1",
            "trainer.max_epochs=2",
        )
    )
    assert completed(summary) and summary["class_names"] == ["0", "1"]
    assert summary["test"]["test/acc"] > 0.9  # two digits, one logit: chance is 0.5


def test_label_smoothing_reaches_the_loss(make_cfg):
    from hydra.utils import instantiate

    from transferlab.module import TransferModule

    cfg = make_cfg("label_smoothing=0.2")
    backbone = instantiate(cfg.backbone)
    module = TransferModule(backbone, LinearHead(backbone.num_features, 3), ["a", "b", "c"], label_smoothing=0.2)
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert module.loss(logits, target) == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.2).item())


def test_bf16_mixed_precision_on_cpu(make_cfg):
    summary = train(
        make_cfg(
            "backbone.name=test_convnext",
            "trainer.precision=bf16-mixed",
            "test=false",
            "trainer.accumulate_grad_batches=2",
            "trainer.gradient_clip_val=1.0",
        )
    )
    assert summary["final"]["val/acc"] > 0.8  # one bf16 epoch learns 3 digits (chance: 0.33)


@pytest.mark.slow
def test_quickstart_at_reduced_size(tmp_path):
    """The quickstart script, one epoch per run: three target runs that share the source backbone."""
    env = {
        **os.environ,
        "QUICKSTART_DIR": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", REPO / "scripts/quickstart.sh", "trainer.max_epochs=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.strip().splitlines()[-3:]
    assert [row.split("|")[2].strip() for row in table] == [
        f"experiment={e} ++source_run={tmp_path}/source trainer.max_epochs=1"
        for e in ("digits_scratch", "digits_frozen", "digits_finetune")
    ]
    assert all("| completed |" in row for row in table)
    for job in ("1", "2"):  # the transfer runs loaded the source run's backbone
        summary = json.loads((tmp_path / "transfer" / job / "summary.json").read_text())
        assert summary["weights_report"].startswith(f"weights {tmp_path}/source/checkpoints/last.ckpt")
