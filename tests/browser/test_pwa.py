"""End to end: the patient app (/app/) in headless Chromium against a real node.

The node (conftest.py) is started the way `make run` starts one (migrations, node key
and genesis, gunicorn with its block producer), on 127.0.0.1 and a free port, in a
temporary instance folder. A patient registers in the browser, a doctor writes a record for
them through the JSON API, and the patient reads it once it is sealed in a block.
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.browser.support import (
    DOCTOR_USERNAME,
    HTTP_TIMEOUT,
    PHONE,
    PNG,
    UI_TIMEOUT,
    XSS,
    Node,
    Phone,
    bearer,
    doctor_token,
    fits_the_phone,
    heading,
    our_storage_keys,
    register_patient,
    token_for,
    write_record,
)

SCREENSHOT = Path("/tmp/pwa-record.png")
LEDGER_TIMEOUT = 15.0  # seconds until a record is sealed (the producer runs every second)
HEADER_MAX_HEIGHT = 72  # pixels: one row of 48 px tap targets with its padding
PATIENT_USERNAME = "pat.e2e"
PATIENT_NAME = "Paula Evangelina Okonkwo-Henderson"  # long: the header must cut it short
PATIENT_PASSWORD = "patient-password-1"
LEDGER_CHIP = re.compile(r"On ledger · block (\d+)")


# ---- helpers


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
    page.fill("#register-date-of-birth", "1984-03-21")
    page.fill("#register-password", PATIENT_PASSWORD)
    page.fill("#register-confirm", PATIENT_PASSWORD)
    page.get_by_role("button", name="Create account").click()

    # Signed in and offered a recovery key first (tests/browser/test_recovery.py makes one); "Not now"
    # goes on to "My records", with nothing there yet.
    expect(page).to_have_url(re.compile(r"/app/#/recovery-key$"), timeout=UI_TIMEOUT)
    page.get_by_role("link", name="Not now").click()
    expect(page).to_have_url(re.compile(r"/app/#/records$"), timeout=UI_TIMEOUT)
    expect(heading(page)).to_have_text("My records")
    expect(page.locator("#app .empty-state")).to_contain_text("No records yet")
    expect(page.locator("#session-bar .user-name")).to_have_text(PATIENT_NAME)
    # On a phone the header keeps to one row, even with a long name, and the navigation is a
    # tab bar along the bottom of the screen.
    header, log_out = (page.locator(s).bounding_box() for s in (".topbar", "#session-bar button"))
    assert header and log_out and header["height"] <= HEADER_MAX_HEIGHT, header
    assert log_out["x"] + log_out["width"] <= PHONE["width"]
    tabs = [page.get_by_role("link", name=name, exact=True) for name in ("My records", "Access", "Access log")]
    boxes = [tab.bounding_box() for tab in tabs]
    assert all(box and abs(box["y"] + box["height"] - PHONE["height"]) < 1 for box in boxes), boxes
    assert all(box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] for box in boxes), boxes
    expect(tabs[0]).to_have_attribute("aria-current", "page")

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
    notes = page.locator("#app .notes")
    expect(notes).to_contain_text(XSS)  # shown as text ...
    assert notes.locator("img").count() == 0  # ... never parsed as HTML
    # The only image is the attachment's preview, from an object URL.
    preview = page.locator("#app img")
    expect(preview).to_have_count(1)
    expect(preview).to_have_class("attachment-image")
    assert preview.get_attribute("src").startswith("blob:")
    description = written["diagnoses"][0]["description"]
    assert description
    expect(page.locator("#app .record-section", has_text="Diagnoses")).to_contain_text(description)
    expect(page.locator("#app .record-section", has_text="Symptoms")).to_contain_text(written["symptoms"][0]["name"])
    expect(page.locator("#app .prescription-drug")).to_have_text("Salbutamol")
    expect(page.locator("#app .prescription-words")).to_have_text("100 mcg, as needed, for 30 days.")
    # Codes and the ledger's proof wait behind "Details".
    details = page.locator("#app details.record-technical")
    expect(details.locator(".chip-ledger")).to_be_hidden()
    expect(details.get_by_text(written["diagnoses"][0]["code"])).to_be_hidden()
    details.locator("summary").click()
    expect(details.locator(".chip-ledger")).to_have_text(f"On ledger · block {height}")
    expect(details).to_contain_text(written["diagnoses"][0]["code"])
    expect(details).to_contain_text(written["symptoms"][0]["id"])
    expect(details.locator("code.hash")).to_have_attribute("title", written["tx_hash"])
    # Fits a phone: nothing wider than the screen.
    assert fits_the_phone(page)
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


def test_failed_sign_ins_are_shown_at_the_next_one(node: Node, phone: Phone) -> None:
    register_patient(node, "pat.failed", PATIENT_PASSWORD, "Fay Failed")
    page = phone.page
    page.goto("/app/#/login")
    for password in ("not-the-password", "still-not-it"):
        page.fill("#login-username", "pat.failed")
        page.fill("#login-password", password)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#app .notice-error")).to_have_text("Wrong username or password.")
    page.fill("#login-password", PATIENT_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(heading(page)).to_have_text("My records")
    expect(page.locator("#app .notice-info")).to_contain_text(
        "2 failed sign-in attempts on your account since your last sign-in, the last on"
    )
    phone.assert_clean()


def test_the_access_log_never_holds_what_a_patient_searched_for(node: Node) -> None:
    register_patient(node, "search.privacy", "correct-horse-battery", "Search Privacy")
    token = token_for(node, "search.privacy", "correct-horse-battery")
    answer = requests.get(node.api("/symptoms?q=hyperhidrosis"), headers=bearer(token), timeout=30)
    assert answer.status_code == 200 and answer.json()["symptoms"]
    deadline = time.monotonic() + 10
    while "GET /api/v1/symptoms " not in node.log_tail(400) and time.monotonic() < deadline:
        time.sleep(0.1)  # the access log line is written after the answer
    log = node.log.read_text(errors="replace")
    assert "GET /api/v1/symptoms " in log  # the request is logged, by its path
    assert "hyperhidrosis" not in log.lower()
