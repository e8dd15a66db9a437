import os
from pathlib import Path

import pytest
from PIL import Image

from helpers import TINY, compose_config

SHARED_ENV = "TRANSFERLAB_SHARED_DATA"


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


def _write(folder: Path, split, class_names=None):
    """Write a Split's arrays as PNG files: in class folders, or flat when ``class_names`` is None."""
    for i, (item, label) in enumerate(zip(split.items, split.labels)):
        where = folder / class_names[label] if class_names else folder
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(item).save(where / f"{i:04d}.png")


@pytest.fixture(scope="session")
def domain_folders(tmp_path_factory):
    """digits 0-2 as a labelled source folder; digits-M 0-2 labelled and flat (unlabelled)."""
    root = tmp_path_factory.mktemp("domains")
    from transferlab.data.digits import load_digits, load_digits_m

    source, names = load_digits([0, 1, 2])
    target, _ = load_digits_m([0, 1, 2])
    _write(root / "digits", source, names)
    _write(root / "digits_m", target, names)
    flat = target.subset(range(0, len(target), 3))
    _write(root / "unlabelled", flat)
    return root
