import pickle

import pytest
import torch

from transferlab.checkpoint_io import LocalCheckpointIO
from transferlab.cli import instantiate
from transferlab.train import train, trainer_config


def test_configured_trainer_saves_through_it_and_a_run_resumes(make_cfg):
    cfg = make_cfg()
    assert isinstance(instantiate(trainer_config(cfg)).strategy.checkpoint_io, LocalCheckpointIO)

    first = train(cfg)
    last = first["checkpoints"]["last"]
    assert torch.load(last, weights_only=True)["epoch"] == 0
    resumed = train(make_cfg("trainer.max_epochs=2", f"ckpt_path={last}", run="resumed"))
    assert resumed["status"] == "completed" and resumed["epochs"] == 2


def test_save_load_round_trip(tmp_path):
    checkpoint = {"state_dict": {"w": torch.randn(4, 3)}, "epoch": 3}
    io = LocalCheckpointIO()
    io.save_checkpoint(checkpoint, tmp_path / "sub" / "last.ckpt")
    loaded = io.load_checkpoint(tmp_path / "sub" / "last.ckpt", weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], checkpoint["state_dict"]["w"])


def test_a_failed_save_keeps_the_previous_checkpoint_whole(tmp_path):
    io, path = LocalCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    # Fails after the tensor has been written: the checkpoint file must not be touched, nothing left beside it.
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        io.save_checkpoint({"w": torch.zeros(1000, 1000), "hook": lambda: None}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
