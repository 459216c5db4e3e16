"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.runtime import configure_tensorflow

configure_tensorflow()  # before any test imports TensorFlow: the kernels main.py runs with

HAND_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hand_xray_real"


@pytest.fixture(scope="session")
def hand_data_dir() -> Path:
    """The real hand radiographs in ../shared beside the checkout; skips the test when they are absent."""
    if not (HAND_DATA_DIR / "images").is_dir() or not (HAND_DATA_DIR / "setup" / "all.csv").is_file():
        pytest.skip(f"real hand radiographs not found at {HAND_DATA_DIR}")
    return HAND_DATA_DIR
