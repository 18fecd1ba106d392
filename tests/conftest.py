import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("TRACKER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $TRACKER_SHARED_DATA); the test is skipped when it is absent."""
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"real data not found at {SHARED}")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or fill the user's weights cache from tests."""
    monkeypatch.setenv("TRACKER_CACHE", str(tmp_path_factory.mktemp("cache")))
