"""Browser tests: a real node (gunicorn + block producer) in a subprocess, driven by headless Chromium."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """The node runs in its own process: the suite's pooled-keys monkeypatch cannot reach it."""
