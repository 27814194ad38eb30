"""Shared fixtures: paths of the checkout and of the genuine data in ../shared when present."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
CIFAR100_ROOT = SHARED_DATASETS


@pytest.fixture(scope="session")
def cifar100_root() -> Path:
    """The folder holding the genuine cifar-100-python/; the test is skipped when it is absent."""
    if not (CIFAR100_ROOT / "cifar-100-python" / "test").is_file():
        pytest.skip("the genuine CIFAR-100 is not in ../shared/datasets")
    return CIFAR100_ROOT
