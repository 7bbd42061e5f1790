"""Shared test fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from tinyhd.paths import official_fixtures_dir


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """The authors' released checkpoint, video and reference maps (``../shared/fixtures/official``)."""
    path = official_fixtures_dir()
    if path is None:
        pytest.skip("../shared/fixtures/official is absent (set TINYHD_OFFICIAL_FIXTURES to point at it)")
    return path
