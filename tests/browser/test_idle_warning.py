"""The warning before sign-out for inactivity, in a real browser against a node whose limits are
seconds long: the portal's banner and the app's, "Stay signed in" keeping the session, and the
sign-in screen with the reason once the time is up (portal/idle.py, static/idle.js, pwa/idle.js)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.support import (
    DOCTOR_HOSPITAL,
    DOCTOR_NAME,
    DOCTOR_PASSWORD,
    DOCTOR_USERNAME,
    Node,
    Phone,
    open_phone,
    register_patient,
    serving,
)

IDLE_MINUTES = "0.25"  # 15 s
WARNING_SECONDS = "10"
PATIENT, PASSWORD = "idle.patient", "correct-horse-battery-idle"


@pytest.fixture(scope="module")
def quick_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    doctor = (DOCTOR_USERNAME, DOCTOR_PASSWORD, DOCTOR_NAME, DOCTOR_HOSPITAL, "LIC-IDLE")
    limits = {
        "PORTAL_IDLE_MINUTES": IDLE_MINUTES,
        "APP_IDLE_MINUTES": IDLE_MINUTES,
        "IDLE_WARNING_SECONDS": WARNING_SECONDS,
    }
    with serving(tmp_path_factory.mktemp("idle-node"), [doctor], **limits) as node:
        register_patient(node, PATIENT, PASSWORD, "Idle Patient")
        yield node


@pytest.fixture
def quick_phone(browser: Browser, quick_node: Node) -> Iterator[Phone]:
    with open_phone(browser, quick_node) as phone:
        yield phone


def test_the_portal_warns_keeps_the_session_on_request_and_signs_out_with_the_reason(quick_phone: Phone) -> None:
    page = quick_phone.page
    page.goto("/login")
    page.fill("input[name=username]", DOCTOR_USERNAME)
    page.fill("input[name=password]", DOCTOR_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Find a patient")).to_be_visible()
    warning = page.locator("#idle-warning")
    expect(warning).to_be_hidden()
    expect(warning).to_be_visible(timeout=15_000)
    expect(warning).to_contain_text(re.compile(r"You will be signed out in 0:0\d because of inactivity"))
    with page.expect_response(lambda r: r.url.endswith("/session/keep-alive")) as kept:
        page.get_by_role("button", name="Stay signed in").click()
    assert kept.value.status == 200
    expect(warning).to_be_hidden()
    expect(page).to_have_url(re.compile(r"/doctor/patients$"))  # still here, still signed in
    expect(warning).to_be_visible(timeout=15_000)
    expect(page).to_have_url(re.compile(r"/login$"), timeout=20_000)
    expect(page.locator(".flash")).to_have_text(
        "You were signed out after 0.25 minutes without activity. Sign in again."
    )
    quick_phone.assert_clean()


def test_the_app_warns_keeps_the_session_on_request_and_signs_out_with_the_reason(quick_phone: Phone) -> None:
    page = quick_phone.page
    page.goto("/app/#/login")
    page.fill("#login-username", PATIENT)
    page.fill("#login-password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/app/#/records$"))
    warning = page.locator("#idle-warning")
    expect(warning).to_be_empty()
    expect(warning).to_contain_text(
        re.compile(r"You will be signed out in 0:0\d because of inactivity"), timeout=15_000
    )
    with page.expect_response(lambda r: r.url.endswith("/api/v1/me")) as kept:
        page.get_by_role("button", name="Stay signed in").click()
    assert kept.value.status == 200
    expect(warning).to_be_empty()
    expect(page).to_have_url(re.compile(r"/app/#/records$"))
    expect(warning).not_to_be_empty(timeout=15_000)
    expect(page).to_have_url(re.compile(r"/app/#/login$"), timeout=20_000)
    expect(page.locator("#app")).to_contain_text("You were signed out because of inactivity. Please log in again.")
    assert page.evaluate("() => localStorage.getItem('medledger.token')") is None
    quick_phone.assert_clean()
