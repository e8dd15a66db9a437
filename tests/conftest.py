import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from transferlab.cli import conf_dir

SHARED_ENV = "TRANSFERLAB_SHARED_DATA"
BIN = Path(sys.executable).parent  # the console scripts of this environment
# A run small enough for a unit test: a 0.4M-parameter timm test model, 3 digit classes at 32 px, one epoch.
TINY = [
    "backbone.name=test_resnet",
    "data.classes=[0,1,2]",
    "data.input_size=32",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "logger=none",
]


@pytest.fixture(scope="session", autouse=True)
def feature_cache_dir(tmp_path_factory) -> Path:
    """Runs started by the tests (in-process or not) cache features here, not in ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["TRANSFERLAB_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, from $TRANSFERLAB_SHARED_DATA (set by .ci/run); skip when absent."""
    root = os.environ.get(SHARED_ENV)
    if not root or not Path(root).is_dir():
        pytest.skip(f"{SHARED_ENV} is not set to the shared data folder (../shared/data)")
    return Path(root)


def compose_config(*overrides: str, config_name: str = "train"):
    """Compose a config as the CLI would (real Hydra); pass paths.output_dir, which the CLI takes from Hydra."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(conf_dir(), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides, run="run") -> a TINY train config writing into tmp_path/run."""

    def make(*overrides: str, run: str = "run", config_name: str = "train"):
        base = TINY if config_name == "train" else []
        return compose_config(*base, f"paths.output_dir={tmp_path / run}", *overrides, config_name=config_name)

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One real training run shared by the tests that only read it: test_convnext (no BatchNorm, so 2 epochs
    reach about 99% val accuracy), 2 epochs, with a test split."""
    from transferlab.train import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(compose_config(*TINY, "backbone.name=test_convnext", "trainer.max_epochs=2", f"paths.output_dir={run_dir}"))
    return run_dir


def run_cli(command: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """Run a console script of this environment (transferlab-train, -eval, -predict, -report) with ``args``;
    the result has its exit code and its stdout and stderr as text."""
    return subprocess.run([BIN / command, *map(str, args)], capture_output=True, text=True, **kwargs)
