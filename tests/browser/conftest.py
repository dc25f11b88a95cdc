"""Browser tests: a real node (gunicorn + block producer) in a subprocess, driven by headless Chromium.

One node serves the whole browser session (each test uses its own accounts), one Chromium too;
every test gets a fresh phone-sized browser context.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.browser.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DOCTOR_HOSPITAL,
    DOCTOR_NAME,
    DOCTOR_PASSWORD,
    DOCTOR_USERNAME,
    Node,
    Phone,
    open_phone,
    serving,
)


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """The node runs in its own process: the suite's pooled-keys monkeypatch cannot reach it."""


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    doctor = (DOCTOR_USERNAME, DOCTOR_PASSWORD, DOCTOR_NAME, DOCTOR_HOSPITAL, "LIC-E2E")
    with serving(tmp_path_factory.mktemp("node"), [doctor]) as node:
        yield node


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing (`make test` installs Debian's chromium when run as root or with sudo)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the browser tests, never skip them
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def phone(browser: Browser, node: Node) -> Iterator[Phone]:
    with open_phone(browser, node) as phone:
        yield phone
