"""Fixtures: the in-memory Label Studio (fake_label_studio.py) and an SDK client talking to it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make the fake importable by name
from fake_label_studio import CONFIG, FakeLabelStudio, region  # noqa: F401 (CONFIG and region used by tests)


@pytest.fixture
def fake() -> FakeLabelStudio:
    return FakeLabelStudio()


@pytest.fixture
def client_of():
    """An SDK client (connectors.client.connect) talking to a fake, with no backoff sleeps."""
    from connectors.client import connect

    def make(fake: FakeLabelStudio, retries: int = 2):
        return connect("http://ls.test", fake.token, timeout=5, retries=retries, backoff=0.0, transport=fake.transport())

    return make
