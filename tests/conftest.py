"""Shared test fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from tinyhd.paths import official_fixtures_dir


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Run the suite's torch work on one intra-op thread.

    The CI machine has 2 cores; the tiny models in these tests gain nothing from a second thread, and
    oversubscribed threads (a DataLoader worker, a subprocess) make them several times slower.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """The authors' released checkpoint, video and reference maps (``../shared/fixtures/official``)."""
    path = official_fixtures_dir()
    if path is None:
        pytest.skip("../shared/fixtures/official is absent (set TINYHD_OFFICIAL_FIXTURES to point at it)")
    return path
