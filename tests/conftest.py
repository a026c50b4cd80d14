"""Shared paths and small builders for the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = REPO_ROOT / "tests" / "fixtures" / "parity"
DEMO_DATA_DIR = REPO_ROOT / "pipeline" / "demo_data"


@pytest.fixture
def parity_dir() -> Path:
    return PARITY_DIR


@pytest.fixture
def demo_data_dir() -> Path:
    return DEMO_DATA_DIR
