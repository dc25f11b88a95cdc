"""Browser tests: a real node (gunicorn + block producer) in a subprocess, driven by headless Chromium.

One node serves the whole browser session (each test uses its own accounts), one Chromium too;
every test gets a fresh phone-sized browser context.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
    HOST,
    ROOT,
    Node,
    Phone,
    flask_cli,
    free_port,
    node_env,
    open_phone,
    stop,
    wait_until_serving,
)


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """The node runs in its own process: the suite's pooled-keys monkeypatch cannot reach it."""


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    instance = tmp_path_factory.mktemp("node")
    port = free_port()
    env = node_env(instance, port)
    node = Node(f"http://{HOST}:{port}", instance / "gunicorn.log", env)
    flask_cli(["db", "upgrade"], env)
    flask_cli(["medledger", "node", "init"], env)
    node.create_doctor(DOCTOR_USERNAME, DOCTOR_PASSWORD, DOCTOR_NAME, DOCTOR_HOSPITAL, "LIC-E2E")
    with node.log.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_serving(node, process)
        yield node
    finally:
        stop(process)


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
