import os
from pathlib import Path

import pytest

SHARED_ENV = "TRANSFERLAB_SHARED_DATA"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, from $TRANSFERLAB_SHARED_DATA (set by .ci/run); skip when absent."""
    root = os.environ.get(SHARED_ENV)
    if not root or not Path(root).is_dir():
        pytest.skip(f"{SHARED_ENV} is not set to the shared data folder (../shared/data)")
    return Path(root)
