"""One real Label Studio 1.23.2 for the whole test session, on 127.0.0.1.

Installed into its own virtual environment on first use (the same code `alc demo` uses) and started
headless in a fresh data directory. If it cannot be installed or started, every integration test
fails with the reason: integration tests are never skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from backend.demo.services import LabelStudioAccount, Services, ensure_label_studio, free_port


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> LabelStudioAccount:
    """url, email, password and the admin's API token of a running Label Studio."""
    home: Path = tmp_path_factory.mktemp("label-studio-session")
    try:
        exe = ensure_label_studio(Console(stderr=True))
    except Exception as exc:  # a failed install must fail the tests, with pip's reason
        pytest.fail(f"could not install Label Studio for the integration tests: {exc}")
    with Services(home) as services:
        try:
            account = services.start_label_studio(exe, free_port(), timeout=400)
        except Exception as exc:
            pytest.fail(f"Label Studio did not start: {exc}")
        yield account
