"""Shared fixtures: where the real data lives (ALC_DATA_DIR, default ../shared/data); no deployment profile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# A running `alc demo` / `alc serve` writes a deployment profile that load_settings() reads: the tests
# must not pick up the developer's deployment (tests that check the profile point ALC_PROFILE at a tmp file).
os.environ["ALC_PROFILE"] = "none"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder. Missing data fails the test loudly: no silent skips."""
    path = Path(os.environ.get("ALC_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "cifar10h_tiny300.npz").is_file():
        pytest.fail(f"real test data not found in {path}: set ALC_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def tiny300(data_dir: Path) -> dict:
    """300 CIFAR-10 test images with exact pixels, their CIFAR-10H counts and probabilities."""
    import numpy as np

    with np.load(data_dir / "cifar10h_tiny300.npz") as f:
        return {k: f[k] for k in f.files}
