"""The portal's layout on a laptop (1366x768) and a phone (390x844): the admin's header is one row
on the laptop, the current page is marked, emergencies wait with a count, and the emergencies
table keeps names readable (it scrolls sideways on a phone instead of squeezing them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Browser, Page

from tests.browser.support import (
    DOCTOR_HOSPITAL,
    DOCTOR_NAME,
    DOCTOR_PASSWORD,
    DOCTOR_USERNAME,
    HTTP_TIMEOUT,
    UI_TIMEOUT,
    Node,
    bearer,
    doctor_token,
    flask_cli,
    register_patient,
    serving,
    token_for,
)

ADMIN, ADMIN_PASSWORD = "admin.layout", "correct-horse-battery-admin"
ADMIN_NAME = "Administrator Josephine Okonkwo-Lindqvist"
PATIENT, PATIENT_PASSWORD = "layout.patient", "correct-horse-battery-layout"
PATIENT_NAME = "Maria-Fernanda Castellanos de la Vega"
SIZES = {"laptop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """This module's own node, with an admin, and an emergency access waiting for their review."""
    doctor = (DOCTOR_USERNAME, DOCTOR_PASSWORD, DOCTOR_NAME, DOCTOR_HOSPITAL, "LIC-LAYOUT")
    with serving(tmp_path_factory.mktemp("layout-node"), [doctor]) as node:
        yield node


@pytest.fixture(scope="module")
def emergency(node: Node) -> None:
    """An admin, and an emergency access waiting for their review, declared by the doctor."""
    flask_cli(
        ["medledger", "create-user", "--role", "admin", "--username", ADMIN, "--password", ADMIN_PASSWORD,
         "--display-name", ADMIN_NAME],
        node.env,
    )  # fmt: skip
    patient_id = register_patient(node, PATIENT, PATIENT_PASSWORD, PATIENT_NAME)
    patient = bearer(token_for(node, PATIENT, PATIENT_PASSWORD))
    opted = requests.put(node.api("/emergency-access"), json={"enabled": True}, headers=patient, timeout=HTTP_TIMEOUT)
    assert opted.status_code == 200, opted.text
    declared = requests.post(
        node.api(f"/patients/{patient_id}/emergency"),
        json={"reason": "Found unconscious in the car park"},
        headers=bearer(doctor_token(node)),
        timeout=HTTP_TIMEOUT,
    )
    assert declared.status_code == 201, declared.text


@pytest.fixture(params=list(SIZES))
def admin_page(request: pytest.FixtureRequest, browser: Browser, node: Node, emergency: None) -> Iterator[Page]:
    context = browser.new_context(base_url=node.url, viewport=SIZES[request.param], locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(UI_TIMEOUT)
    page = context.new_page()
    page.goto("/login")
    page.get_by_label("Username").fill(ADMIN)
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/admin/users")
    page.goto("/admin/emergencies")
    try:
        yield page
    finally:
        context.close()


def lines(page: Page, selector: str) -> list[int]:
    """How many lines of text each matching element takes."""
    return page.evaluate(
        """(selector) => [...document.querySelectorAll(selector)].map((el) => {
             const range = document.createRange();
             range.selectNodeContents(el);
             const tolerance = parseFloat(getComputedStyle(el).fontSize) / 2;
             const tops = [...range.getClientRects()]
               .filter((r) => r.width > 1 && r.height > 1)  // not what only a screen reader reads
               .map((r) => r.top + r.height / 2)
               .sort((a, b) => a - b);
             return tops.filter((t, i) => i === 0 || t - tops[i - 1] > tolerance).length;
           })""",
        selector,
    )


def header_rows(page: Page) -> int:
    """The rows the header's parts (brand, navigation, account links) are laid out in."""
    return page.evaluate(
        """() => {
             const parts = [...document.querySelectorAll('header.top > *')].map((el) => el.getBoundingClientRect());
             const rows = [];
             for (const r of parts.sort((a, b) => a.top - b.top)) {
               const last = rows[rows.length - 1];
               if (last && r.top < last.bottom - 4) last.bottom = Math.max(last.bottom, r.bottom);
               else rows.push({ top: r.top, bottom: r.bottom });
             }
             return rows.length;
           }"""
    )


def test_admin_header_and_emergencies_table(admin_page: Page) -> None:
    page = admin_page
    width = page.viewport_size["width"]
    current = page.locator('header.top nav a[aria-current="page"]')
    assert current.count() == 1 and current.inner_text().startswith("Emergencies")
    assert page.locator("#emergencies-waiting").inner_text() == "1"
    assert current.evaluate("(a) => getComputedStyle(a).fontWeight") == "700"  # marked for the eye too

    assert max(lines(page, "header.top nav a")) == 1  # no link breaks inside
    if width >= 1366:
        assert max(lines(page, "header.top .who > *")) == 1
        assert header_rows(page) == 1

    row = page.locator("tr.unreviewed", has_text=PATIENT_NAME)
    assert row.count() == 1
    assert max(lines(page, "table.emergencies td.name")) <= 2  # never squeezed to four lines
    assert (
        page.evaluate("() => document.documentElement.scrollWidth") <= width
    )  # the page itself never scrolls sideways
    if width < 600:
        wrap = page.locator(".table-wrap", has=page.locator("table.emergencies"))
        assert wrap.evaluate("(el) => el.scrollWidth > el.clientWidth")  # the table scrolls instead
