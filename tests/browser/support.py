"""What the browser tests share: the node under test, a phone-sized browser context and API helpers.

The fixtures built on these live in conftest.py.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Request, expect

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"  # Debian's package; `make test` installs it. Never `playwright install`.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the suite may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOST = "127.0.0.1"
PHONE = {"width": 390, "height": 844}

START_TIMEOUT = 120.0  # seconds until the node answers (a busy machine boots its first worker slowly)
HTTP_TIMEOUT = 10.0  # seconds per request from the test
CLI_TIMEOUT = 120  # seconds per `flask` command
UI_TIMEOUT = 10_000  # milliseconds per browser wait

DOCTOR_USERNAME = "dr.e2e"
DOCTOR_PASSWORD = "doctor-password-1"
DOCTOR_NAME = "Dr. Eve Tester"
DOCTOR_HOSPITAL = "E2E General"
XSS = "<img src=x onerror=alert(1)>"


def tiny_png() -> bytes:
    """A valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x0f\x76\x6e")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG = tiny_png()


# ---- the node


@dataclass
class Node:
    url: str
    log: Path
    env: dict[str, str]

    def api(self, path: str) -> str:
        return f"{self.url}/api/v1{path}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def create_doctor(self, username: str, password: str, display_name: str, hospital: str, licence: str) -> None:
        """Through the CLI, as an operator does (the API has no way to create doctors)."""
        flask_cli(
            ["medledger", "create-user", "--role", "doctor", "--username", username, "--password", password,
             "--display-name", display_name, "--hospital", hospital, "--licence-number", licence],
            self.env,
        )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def node_env(instance: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GUNICORN_BIND", "NODE_KEY_PASSPHRASE", "SECRET_KEY")}
    env.update(
        MEDLEDGER_CONFIG="development",
        MEDLEDGER_INSTANCE=str(instance),
        NODE_KEY_PATH=str(instance / "node.key"),
        PORT=str(port),
        WEB_CONCURRENCY="1",
        BLOCK_INTERVAL_SECONDS="1",
        MEDLEDGER_PRODUCER="1",
        # Always SQLite, also on the PostgreSQL run of the suite (TEST_DATABASE_URL): this node is
        # a separate process with its own migrated database, and the other tests drop and recreate
        # the tables of TEST_DATABASE_URL for every test.
        DATABASE_URL=f"sqlite:///{instance / 'node.db'}",
    )
    return env


def flask_cli(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"flask {' '.join(args)} failed:\n{result.stdout}{result.stderr}"


def wait_until_serving(node: Node, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the node exited with {process.returncode}:\n{node.log_tail()}")
        try:
            if requests.get(node.api("/chain/blocks"), timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    pytest.fail(f"the node did not answer within {START_TIMEOUT:.0f} s:\n{node.log_tail()}")


@contextmanager
def serving(instance: Path, doctors: list[tuple[str, str, str, str, str]], **settings: str) -> Iterator[Node]:
    """A real node as `make run` starts it (gunicorn.conf.py: master, worker, block producer) on a
    free loopback port, its data in `instance`, `settings` over node_env's, with `doctors`
    (username, password, name, hospital, licence) made first; stopped, whole, on the way out."""
    port = free_port()
    env = {**node_env(instance, port), **settings}
    node = Node(f"http://{HOST}:{port}", instance / "gunicorn.log", env)
    flask_cli(["db", "upgrade"], env)
    flask_cli(["medledger", "node", "init"], env)
    for doctor in doctors:
        node.create_doctor(*doctor)
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


def stop(process: subprocess.Popen[bytes]) -> None:
    """gunicorn, its worker and its block producer share one process group: end all of it."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


# ---- the browser


@dataclass
class Phone:
    """One browser context at a phone's size, and what went wrong in it."""

    page: Page
    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.errors == [], "uncaught errors in the page"
        assert self.dialogs == [], "the page opened dialogs"
        assert self.foreign_requests == [], "the page talked to something other than the node"


def heading(page: Page) -> Any:
    return page.locator("#app h1")


def log_in_app(page: Page, username: str, password: str) -> None:
    """Sign in to the patient app and wait for the first screen (the records)."""
    page.goto("/app/#/login")
    expect(heading(page)).to_have_text("Log in")
    page.fill("#login-username", username)
    page.fill("#login-password", password)
    page.get_by_role("button", name="Log in").click()
    expect(heading(page)).to_have_text("My records")


def our_storage_keys(page: Page) -> list[str]:
    return page.evaluate(
        "() => [...Object.keys(localStorage), ...Object.keys(sessionStorage)].filter((k) => k.startsWith('medledger.'))"
    )


def fits_the_phone(page: Page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]


# ---- the API, as the test's other actors


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_for(node: Node, username: str, password: str) -> str:
    answer = requests.post(
        node.api("/auth/token"), json={"username": username, "password": password}, timeout=HTTP_TIMEOUT
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


def doctor_token(node: Node) -> str:
    return token_for(node, DOCTOR_USERNAME, DOCTOR_PASSWORD)


def register_patient(
    node: Node, username: str, password: str, display_name: str, date_of_birth: str = "1984-03-21"
) -> str:
    """A patient account made through the API; answers its id."""
    answer = requests.post(
        node.api("/auth/register"),
        json={"username": username, "password": password, "display_name": display_name, "date_of_birth": date_of_birth},
        timeout=HTTP_TIMEOUT,
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["user"]["id"]


def find_patient(node: Node, token: str, username: str) -> str:
    """As a doctor: the id of the patient with this username."""
    found = requests.get(node.api("/patients"), params={"q": username}, headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert found.status_code == 200, found.text
    matches = [p for p in found.json()["patients"] if p["username"] == username]
    assert len(matches) == 1, found.json()
    return matches[0]["id"]


def write_record(node: Node, token: str, patient_username: str, title: str) -> str:
    """As the doctor: find the patient and write them a record; answers the record's id."""
    patient_id = find_patient(node, token, patient_username)
    record = {
        "title": title,
        "category": "respiratory",
        "diagnoses": ["J45.909"],
        "symptoms": ["HP:0002094"],
        "notes": f"Wheeze on exertion.\nPasted from an e-mail: {XSS}",
        "prescriptions": [{"drug": "Salbutamol", "dose": "100 mcg", "frequency": "as needed", "duration": "30 days"}],
        "attachments": [
            {"filename": "peak-flow.png", "content_type": "image/png", "data": base64.b64encode(PNG).decode()}
        ],
    }
    written = requests.post(
        node.api(f"/patients/{patient_id}/records"), json=record, headers=bearer(token), timeout=HTTP_TIMEOUT
    )
    assert written.status_code == 201, written.text
    return written.json()["id"]


@contextmanager
def open_phone(browser: Browser, node: Node) -> Iterator[Phone]:
    """A phone: its own browser context at a phone's size (so its own storage and IndexedDB),
    recording what goes wrong in it."""
    context = browser.new_context(
        base_url=node.url,
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale="en-GB",
        timezone_id="UTC",
        service_workers="allow",
        accept_downloads=True,
    )
    context.set_default_timeout(UI_TIMEOUT)
    context.set_default_navigation_timeout(UI_TIMEOUT)
    page = context.new_page()
    phone = Phone(page)

    def on_request(request: Request) -> None:
        if request.url.startswith(("http:", "https:", "ws:", "wss:")) and urlsplit(request.url).hostname != HOST:
            phone.foreign_requests.append(request.url)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            phone.console_errors.append(message.text)

    def on_dialog(dialog: Dialog) -> None:
        phone.dialogs.append(dialog.message)
        dialog.dismiss()

    context.on("request", on_request)
    page.on("pageerror", lambda error: phone.errors.append(str(error)))
    page.on("console", on_console)
    page.on("dialog", on_dialog)
    try:
        yield phone
    finally:
        context.close()
