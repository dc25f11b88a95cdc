"""End to end: the patient app (/app/) in headless Chromium against a real node.

The node is started the way `make run` starts one (migrations, node key and genesis,
gunicorn with its block producer), on 127.0.0.1 and a free port, in a temporary
instance folder. A patient registers in the browser, a doctor writes a record for
them through the JSON API, and the patient reads it once it is sealed in a block.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Request, expect, sync_playwright

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
SCREENSHOT = Path("/tmp/pwa-record.png")

START_TIMEOUT = 30.0  # seconds until the node answers
LEDGER_TIMEOUT = 15.0  # seconds until a record is sealed (the producer runs every second)
HTTP_TIMEOUT = 10.0  # seconds per request from the test
UI_TIMEOUT = 10_000  # milliseconds per browser wait

DOCTOR_USERNAME = "dr.e2e"
DOCTOR_PASSWORD = "doctor-password-1"
PATIENT_USERNAME = "pat.e2e"
PATIENT_NAME = "Paula Evangelina Okonkwo-Henderson"  # long: the header must cut it short
PATIENT_PASSWORD = "patient-password-1"
XSS = "<img src=x onerror=alert(1)>"
LEDGER_CHIP = re.compile(r"On ledger · block (\d+)")


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

    def api(self, path: str) -> str:
        return f"{self.url}/api/v1{path}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


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
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
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


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    instance = tmp_path_factory.mktemp("node")
    port = free_port()
    env = node_env(instance, port)
    flask_cli(["db", "upgrade"], env)
    flask_cli(["medledger", "node", "init"], env)
    flask_cli(
        ["medledger", "create-user", "--role", "doctor", "--username", DOCTOR_USERNAME, "--password", DOCTOR_PASSWORD,
         "--display-name", "Dr. Eve Tester", "--hospital", "E2E General", "--licence-number", "LIC-E2E"],
        env,
    )  # fmt: skip
    node = Node(f"http://{HOST}:{port}", instance / "gunicorn.log")
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


@pytest.fixture(scope="module")
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


# ---- helpers


def heading(page: Page) -> Any:
    return page.locator("#app h1")


def our_storage_keys(page: Page) -> list[str]:
    return page.evaluate(
        "() => [...Object.keys(localStorage), ...Object.keys(sessionStorage)].filter((k) => k.startsWith('medledger.'))"
    )


def doctor_token(node: Node) -> str:
    answer = requests.post(
        node.api("/auth/token"), json={"username": DOCTOR_USERNAME, "password": DOCTOR_PASSWORD}, timeout=HTTP_TIMEOUT
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


def write_record(node: Node, token: str, patient_username: str, title: str) -> str:
    """As the doctor: find the patient and write them a record; answers the record's id."""
    headers = {"Authorization": f"Bearer {token}"}
    found = requests.get(node.api("/patients"), params={"q": patient_username}, headers=headers, timeout=HTTP_TIMEOUT)
    assert found.status_code == 200, found.text
    matches = [p for p in found.json()["patients"] if p["username"] == patient_username]
    assert len(matches) == 1, found.json()
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
        node.api(f"/patients/{matches[0]['id']}/records"), json=record, headers=headers, timeout=HTTP_TIMEOUT
    )
    assert written.status_code == 201, written.text
    return written.json()["id"]


def refresh_until_on_ledger(page: Page, card: Any) -> int:
    """Press Refresh until the card's chip says the record is in a block; answers the height."""
    refresh = page.locator("#app .view-header button")
    deadline = time.monotonic() + LEDGER_TIMEOUT
    while True:
        expect(refresh).to_be_enabled(timeout=UI_TIMEOUT)
        found = LEDGER_CHIP.fullmatch(card.locator(".chip-ledger, .chip-pending").inner_text().strip())
        if found:
            return int(found.group(1))
        if time.monotonic() > deadline:
            pytest.fail(f"the record was not on the ledger after {LEDGER_TIMEOUT:.0f} s")
        page.wait_for_timeout(500)
        refresh.click()


# ---- tests


def test_manifest_is_installable(node: Node) -> None:
    index = requests.get(f"{node.url}/app/", timeout=HTTP_TIMEOUT)
    assert index.status_code == 200
    assert '<link rel="manifest" href="/app/manifest.webmanifest">' in index.text
    answer = requests.get(f"{node.url}/app/manifest.webmanifest", timeout=HTTP_TIMEOUT)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/manifest+json")
    manifest = answer.json()
    assert manifest["name"] and manifest["short_name"]
    assert manifest["start_url"] == "/app/" and manifest["scope"] == "/app/"
    assert manifest["display"] in ("standalone", "fullscreen", "minimal-ui")
    icons = {icon["sizes"]: icon for icon in manifest["icons"]}
    assert {"192x192", "512x512"} <= set(icons)
    for size in (192, 512):
        icon = icons[f"{size}x{size}"]
        got = requests.get(node.url + icon["src"], timeout=HTTP_TIMEOUT)
        assert got.status_code == 200 and got.headers["Content-Type"] == icon["type"] == "image/png"
        assert got.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert struct.unpack(">II", got.content[16:24]) == (size, size), f"{icon['src']} is not {size}x{size}"


def test_patient_registers_reads_a_record_and_logs_out(node: Node, phone: Phone) -> None:
    page = phone.page
    page.goto("/app/")
    expect(page).to_have_url(re.compile(r"/app/#/login$"))
    expect(heading(page)).to_have_text("Log in")

    # Register through the UI.
    page.get_by_role("link", name="Create an account").click()
    expect(heading(page)).to_have_text("Create an account")
    page.fill("#register-username", PATIENT_USERNAME)
    page.fill("#register-display-name", PATIENT_NAME)
    page.fill("#register-password", PATIENT_PASSWORD)
    page.fill("#register-confirm", PATIENT_PASSWORD)
    page.get_by_role("button", name="Create account").click()

    # Signed in, on "My records", with nothing there yet.
    expect(page).to_have_url(re.compile(r"/app/#/records$"), timeout=UI_TIMEOUT)
    expect(heading(page)).to_have_text("My records")
    expect(page.locator("#app .empty-state")).to_contain_text("No records yet")
    expect(page.locator("#session-bar .user-name")).to_have_text(PATIENT_NAME)
    # On a phone the session bar keeps to one row under the brand, even with a long name.
    nav, log_out = (page.locator(f"#session-bar {s}").bounding_box() for s in (".nav-link", "button"))
    assert nav and log_out and abs(nav["y"] - log_out["y"]) < nav["height"], (nav, log_out)
    assert log_out["x"] + log_out["width"] <= PHONE["width"]

    # A doctor writes a record for this patient (API), the patient refreshes.
    token = doctor_token(node)
    title = "Asthma review (e2e)"
    record_id = write_record(node, token, PATIENT_USERNAME, title)
    written = requests.get(
        node.api(f"/records/{record_id}"), headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT
    ).json()
    page.locator("#app .view-header button").click()
    card = page.locator("#app .record-card", has_text=title)
    expect(card).to_be_visible(timeout=UI_TIMEOUT)
    height = refresh_until_on_ledger(page, card)
    assert height >= 1

    # The record itself.
    card.click()
    expect(page).to_have_url(re.compile(rf"/app/#/records/{re.escape(record_id)}$"))
    expect(heading(page)).to_have_text(title)
    expect(page.locator("#app .record .chip-ledger")).to_have_text(f"On ledger · block {height}")
    notes = page.locator("#app .notes")
    expect(notes).to_contain_text(XSS)  # shown as text ...
    assert notes.locator("img").count() == 0  # ... never parsed as HTML
    assert page.locator("#app img").count() == 0
    description = written["diagnoses"][0]["description"]
    assert description
    expect(page.locator("#app .record-section", has_text="Diagnoses")).to_contain_text(description)
    expect(page.locator("#app .record-section", has_text="Symptoms")).to_contain_text(written["symptoms"][0]["name"])
    expect(page.locator("#app .prescription-drug")).to_have_text("Salbutamol")
    # Fits a phone: nothing wider than the screen.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    download = page.get_by_role("button", name="Download peak-flow.png")
    expect(download).to_be_visible()
    with page.expect_download(timeout=UI_TIMEOUT) as downloaded:
        download.click()
    assert downloaded.value.suggested_filename == "peak-flow.png"
    assert Path(downloaded.value.path()).read_bytes() == PNG

    # The service worker controls /app/ and caches the app shell, never API answers.
    scope = page.evaluate(
        """() => Promise.race([
            navigator.serviceWorker.ready.then((registration) => registration.scope),
            new Promise((_, reject) => setTimeout(() => reject(new Error('no service worker after 10 s')), 10000)),
        ])"""
    )
    assert scope == f"{node.url}/app/"
    cached = page.evaluate(
        """async () => {
            const out = {};
            for (const name of await caches.keys()) {
                const cache = await caches.open(name);
                out[name] = (await cache.keys()).map((request) => request.url);
            }
            return out;
        }"""
    )
    urls = [url for names in cached.values() for url in names]
    assert urls, "the service worker cached nothing"
    assert all(name.startswith("medledger-shell-") for name in cached), cached
    assert not [url for url in urls if "/api/" in url], cached
    assert all(urlsplit(url).path.startswith("/app/") for url in urls), cached
    assert {f"{node.url}/app/", f"{node.url}/app/app.js"} <= set(urls)
    page.reload()
    expect(heading(page)).to_have_text(title)
    assert page.evaluate("() => navigator.serviceWorker.controller !== null")

    # Log out: nothing of the session stays in the browser, and the token is dead.
    token_in_page = page.evaluate("() => localStorage.getItem('medledger.token')")
    assert token_in_page
    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/auth/token") and r.request.method == "DELETE", timeout=UI_TIMEOUT
    ) as revoked:
        page.get_by_role("button", name="Log out").click()
    assert revoked.value.status == 204
    expect(heading(page)).to_have_text("Log in")
    expect(page.locator("#app .notice-info")).to_have_text("You have logged out.")
    assert our_storage_keys(page) == []
    me = requests.get(node.api("/me"), headers={"Authorization": f"Bearer {token_in_page}"}, timeout=HTTP_TIMEOUT)
    assert me.status_code == 401
    page.goto(f"/app/#/records/{record_id}")
    expect(page).to_have_url(re.compile(r"/app/#/login$"))
    expect(page.locator("#app")).not_to_contain_text(title)

    phone.assert_clean()
    assert phone.console_errors == []


def test_wrong_password_shows_the_servers_message(node: Node, phone: Phone) -> None:
    page = phone.page
    page.goto("/app/#/login")
    expect(heading(page)).to_have_text("Log in")
    page.fill("#login-username", DOCTOR_USERNAME)
    page.fill("#login-password", "not-the-password")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/auth/token"), timeout=UI_TIMEOUT) as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 401
    expect(page.locator("#app .notice-error")).to_have_text("Wrong username or password.")
    expect(page.get_by_role("button", name="Log in")).to_be_enabled()
    expect(page).to_have_url(re.compile(r"/app/#/login$"))
    assert our_storage_keys(page) == []
    assert page.locator("#session-bar").inner_text() == ""
    phone.assert_clean()
