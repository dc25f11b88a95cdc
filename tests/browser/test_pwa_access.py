"""End to end: the patient decides who reads their records, in the app (/app/#/access).

A doctor asks for access through the API; the patient approves in the browser; the doctor
reads a record another doctor wrote, and the patient's access log shows that read. The
patient revokes and the doctor is refused. The patient switches emergency access on, a
doctor breaks the glass through the API, and the banner appears on the patient's next
screen. A second test grants a doctor found with the app's search.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, Request, Route, expect

from tests.browser.support import (
    HTTP_TIMEOUT,
    PNG,
    Node,
    Phone,
    bearer,
    doctor_token,
    fits_the_phone,
    heading,
    log_in_app,
    register_patient,
    token_for,
    write_record,
)

READER_USERNAME = "dr.reader"
READER_PASSWORD = "reader-password-1"
READER_NAME = "Dr. Rui Reader"
READER_HOSPITAL = "St Access Infirmary"
PATIENT_PASSWORD = "patient-password-2"
REQUEST_REASON = "Referred to me for a second opinion on your asthma."
EMERGENCY_REASON = "Brought in unconscious after a fall; checking for allergies."
ACCESS_SCREENSHOT = Path("/tmp/pwa-access.png")
BANNER_SCREENSHOT = Path("/tmp/pwa-banner.png")
GRANT_FORM_SCREENSHOT = Path("/tmp/pwa-grant-form.png")
TYPING_DELAY = 40  # milliseconds between keys: faster than the app's 300 ms search debounce


@pytest.fixture(scope="module")
def reader(node: Node) -> str:
    """A second doctor, made with the CLI; answers their API token."""
    node.create_doctor(READER_USERNAME, READER_PASSWORD, READER_NAME, READER_HOSPITAL, "LIC-READER")
    return token_for(node, READER_USERNAME, READER_PASSWORD)


# ---- helpers


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    expect(heading(page)).to_have_text(name)


def read_record(node: Node, token: str, record_id: str) -> requests.Response:
    return requests.get(node.api(f"/records/{record_id}"), headers=bearer(token), timeout=HTTP_TIMEOUT)


def status_notice(page: Page) -> object:
    return page.locator("#app .view > .notice-info[role=status]")


def is_emergency_check(request: Request) -> bool:
    return request.method == "GET" and request.url.endswith("/api/v1/emergency-access")


# ---- tests


def test_patient_approves_revokes_and_sees_an_emergency(node: Node, phone: Phone, reader: str) -> None:
    username = "pat.access"
    patient_id = register_patient(node, username, PATIENT_PASSWORD, "Ana Access")
    title = "Asthma review (access e2e)"
    record_id = write_record(node, doctor_token(node), username, title)
    refused = read_record(node, reader, record_id)
    assert refused.status_code == 403, refused.text

    # The reader asks for access (API).
    asked = requests.post(
        node.api("/access-requests"),
        json={"patient_id": patient_id, "reason": REQUEST_REASON, "days": 14},
        headers=bearer(reader),
        timeout=HTTP_TIMEOUT,
    )
    assert asked.status_code == 201, asked.text

    # The patient sees the request, with its reason, and approves it.
    page = phone.page
    log_in_app(page, username, PATIENT_PASSWORD)
    expect(page.locator("#emergency-banner")).to_be_empty()
    open_tab(page, "Access")
    request_card = page.get_by_role("article", name=f"Request from {READER_NAME}")
    expect(request_card).to_contain_text(REQUEST_REASON)
    expect(request_card).to_contain_text(READER_HOSPITAL)
    expect(request_card).to_contain_text("All your records")
    expect(request_card).to_contain_text("14 days")
    assert fits_the_phone(page)
    page.screenshot(path=str(ACCESS_SCREENSHOT))
    request_card.get_by_role("button", name="Approve").click()
    approval = request_card.get_by_role("group", name=re.compile(r"^Give "))
    expect(approval).to_contain_text("for 14 days, until")
    approval.get_by_role("button", name="Approve").click()
    status = status_notice(page)
    expect(status).to_contain_text(f"You approved: {READER_NAME} can read all records until")
    expect(request_card).to_have_count(0)
    expect(page.get_by_text("No doctor is waiting for an answer.")).to_be_visible()
    grant_card = page.get_by_role("article", name=f"Access for {READER_NAME}")
    expect(grant_card).to_contain_text("All records")
    expect(grant_card).to_contain_text("(in 14 days)")

    # The reader can now open a record another doctor wrote ...
    read = read_record(node, reader, record_id)
    assert read.status_code == 200, read.text
    assert read.json()["title"] == title and read.json()["access"]["mode"] == "grant"
    attachment = requests.get(
        node.api(f"/records/{record_id}/attachments/0"), headers=bearer(reader), timeout=HTTP_TIMEOUT
    )
    assert attachment.status_code == 200 and attachment.content == PNG

    # ... and the patient's access log says so, newest first.
    open_tab(page, "Access log")
    entries = page.locator("#app .log-entry", has_text=READER_NAME)
    expect(entries).to_have_count(2)
    for entry, part in zip((entries.nth(0), entries.nth(1)), ("attachment 1", "the record"), strict=True):
        expect(entry).to_contain_text("under your grant")
        expect(entry).to_contain_text(READER_HOSPITAL)
        expect(entry).to_contain_text(f"{title} · {part}")
        expect(entry.get_by_role("link", name=title)).to_have_attribute("href", f"#/records/{record_id}")

    # The patient revokes, after a confirmation that says what revoking cannot do.
    open_tab(page, "Access")
    grant_card.get_by_role("button", name="Revoke access").click()
    confirm = grant_card.get_by_role("group", name=f"Revoke {READER_NAME}'s access?")
    expect(confirm).to_contain_text(
        f"{READER_NAME} will no longer be able to read your records. What they have already read cannot be taken back."
    )
    confirm.get_by_role("button", name="Revoke access").click()
    expect(status).to_have_text(f"{READER_NAME} can no longer read your records.")
    expect(grant_card).to_have_count(0)
    past = page.locator("#app details.past-grants")
    past.locator("summary").click()
    expect(past).to_contain_text(READER_NAME)
    expect(past).to_contain_text("Revoked on")
    refused = read_record(node, reader, record_id)
    assert refused.status_code == 403, refused.text

    # The patient switches emergency access on (after confirming), a doctor breaks the glass.
    switch = page.get_by_role("switch", name="Allow emergency access")
    expect(switch).to_have_attribute("aria-checked", "false")
    switch.click()
    page.get_by_role("group", name="Turn on emergency access?").get_by_role("button", name="Turn on").click()
    expect(page.locator("section[aria-labelledby=access-emergency] > .notice-info")).to_have_text(
        "Emergency access is on."
    )
    expect(switch).to_have_attribute("aria-checked", "true")
    declared = requests.post(
        node.api(f"/patients/{patient_id}/emergency"),
        json={"reason": EMERGENCY_REASON},
        headers=bearer(reader),
        timeout=HTTP_TIMEOUT,
    )
    assert declared.status_code == 201, declared.text

    # The next screen shows the banner.
    with page.expect_request(is_emergency_check):
        open_tab(page, "My records")
    banner = page.locator("#emergency-banner .emergency-banner")
    expect(banner).to_contain_text(
        f"Emergency access in progress: {READER_NAME} ({READER_HOSPITAL}) may read your records until"
    )
    expect(banner).to_contain_text(f"reason: {EMERGENCY_REASON}")
    page.screenshot(path=str(BANNER_SCREENSHOT))
    assert fits_the_phone(page)

    # The emergency read is in the log, highlighted; moving around does not ask the server again
    # within 30 s.
    read = read_record(node, reader, record_id)
    assert read.status_code == 200, read.text
    assert read.json()["access"]["mode"] == "emergency"
    checks: list[str] = []
    page.on("request", lambda request: checks.append(request.url) if is_emergency_check(request) else None)
    banner.get_by_role("link", name=re.compile("access log")).click()
    expect(heading(page)).to_have_text("Access log")
    emergency_entry = page.locator("#app .log-entry", has_text="emergency access")
    expect(emergency_entry).to_have_count(1)
    expect(emergency_entry).to_have_class(re.compile(r"\baccess-card-alert\b"))
    expect(emergency_entry).to_contain_text(READER_NAME)
    open_tab(page, "My records")
    expect(banner).to_contain_text(EMERGENCY_REASON)
    assert checks == []

    # The Access screen lists it under past emergencies, as running.
    open_tab(page, "Access")
    emergency_card = page.locator("#app .emergency-settings .access-card", has_text=EMERGENCY_REASON)
    expect(emergency_card).to_contain_text("In progress")
    expect(emergency_card).to_contain_text(READER_NAME)

    phone.assert_clean()
    assert phone.console_errors == []


def test_patient_gives_a_doctor_access_from_a_search(node: Node, phone: Phone, reader: str) -> None:
    username = "pat.give"
    register_patient(node, username, PATIENT_PASSWORD, "Gil Giver")
    page = phone.page
    log_in_app(page, username, PATIENT_PASSWORD)
    open_tab(page, "Access")
    expect(page.get_by_text("No doctor is waiting for an answer.")).to_be_visible()
    form = page.locator("#app form")
    review = form.get_by_role("button", name="Review")

    # Nothing chosen yet: the form says so.
    review.click()
    expect(page.locator("#doctor-search-error")).to_have_text("Please search for a doctor and choose one.")

    # One search for the whole word typed (debounced), then a choice.
    searches: list[str] = []
    page.on("request", lambda request: searches.append(request.url) if "/api/v1/doctors" in request.url else None)
    page.locator("#doctor-search").press_sequentially("Reader", delay=TYPING_DELAY)
    option = form.get_by_role("button", name=re.compile(re.escape(READER_NAME)))
    option.click()
    assert len(searches) == 1 and searches[0].endswith("/api/v1/doctors?q=Reader"), searches
    expect(form).to_contain_text(f"Chosen: {READER_NAME} ({READER_HOSPITAL})")

    # Some kinds of records, for a week.
    form.get_by_label("Only some kinds of records").check()
    review.click()
    expect(page.locator("#grant-categories-error")).to_have_text("Please tick at least one kind of record.")
    form.get_by_label("Cardiology").check()
    form.get_by_label("Laboratory").check()
    page.fill("#grant-days", "7")
    assert fits_the_phone(page)
    review.click()
    confirm = form.get_by_role("group", name=re.compile(r"^Give "))
    expect(confirm).to_contain_text(
        f"Give {READER_NAME} ({READER_HOSPITAL}) access to only cardiology, laboratory for 7 days, until"
    )
    confirm.scroll_into_view_if_needed()
    page.screenshot(path=str(GRANT_FORM_SCREENSHOT))

    # The connection drops after the node stored the grant: the app sends it again with the same
    # Idempotency-Key, gets the first answer, and the doctor holds one grant.
    keys: list[str] = []

    def drop_first_answer(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        keys.append(route.request.headers.get("idempotency-key", ""))
        if len(keys) == 1:
            route.fetch()  # the node does the work ...
            route.abort("connectionreset")  # ... and its answer never arrives
        else:
            route.continue_()

    page.route("**/api/v1/grants", drop_first_answer)
    confirm.get_by_role("button", name="Give access").click()
    expect(status_notice(page)).to_contain_text(f"{READER_NAME} can now read records in cardiology, laboratory until")
    grant_card = page.get_by_role("article", name=f"Access for {READER_NAME}")
    expect(grant_card).to_contain_text("Records in cardiology, laboratory")
    expect(grant_card).to_contain_text("(in 7 days)")
    expect(form).not_to_contain_text("Chosen:")

    held = requests.get(node.api("/grants"), headers=bearer(reader), timeout=HTTP_TIMEOUT)
    assert held.status_code == 200, held.text
    mine = [g for g in held.json()["grants"] if g["patient"]["display_name"] == "Gil Giver"]
    assert len(mine) == 1 and mine[0]["status"] == "active", mine
    assert mine[0]["scope"] == {"type": "categories", "categories": ["cardiology", "laboratory"]}
    assert len(keys) == 2 and keys[0] == keys[1] != "", keys

    phone.assert_clean()
    assert all("ERR_CONNECTION_RESET" in e or "Failed to load resource" in e for e in phone.console_errors)


def test_patient_approves_a_request_giving_less_than_asked(node: Node, phone: Phone, reader: str) -> None:
    username = "pat.narrow"
    patient_id = register_patient(node, username, PATIENT_PASSWORD, "Nina Narrow")
    asked = requests.post(
        node.api("/access-requests"),
        json={
            "patient_id": patient_id,
            "reason": REQUEST_REASON,
            "days": 14,
            "scope": {"type": "categories", "categories": ["cardiology", "respiratory"]},
        },
        headers=bearer(reader),
        timeout=HTTP_TIMEOUT,
    )
    assert asked.status_code == 201, asked.text

    page = phone.page
    log_in_app(page, username, PATIENT_PASSWORD)
    open_tab(page, "Access")
    card = page.get_by_role("article", name=f"Request from {READER_NAME}")
    card.get_by_role("button", name="Approve").click()
    # The same confirmation as giving access directly: who, what, how long and until when.
    confirm = card.get_by_role("group", name=re.compile(r"^Give "))
    expect(confirm).to_be_visible()
    expect(confirm.locator(".confirm-question")).to_have_text(
        re.compile(
            rf"^Give {re.escape(READER_NAME)} \({re.escape(READER_HOSPITAL)}\) access to only cardiology, "
            r"respiratory for 14 days, until .+\?$"
        )
    )
    expect(card.get_by_role("button", name="Decline")).to_be_hidden()
    # Only what was asked can be ticked; one kind, and a week instead of two.
    expect(confirm.get_by_role("checkbox")).to_have_count(2)
    confirm.get_by_label("Respiratory").uncheck()
    confirm.get_by_label("For how many days").fill("7")
    expect(confirm.locator(".confirm-question")).to_contain_text("access to only cardiology for 7 days")
    confirm.get_by_label("For how many days").fill("30")
    confirm.get_by_role("button", name="Approve").click()
    expect(confirm).to_contain_text("Please enter a whole number of days from 1 to 14.")
    confirm.get_by_label("For how many days").fill("7")
    assert fits_the_phone(page)
    confirm.get_by_role("button", name="Approve").click()
    expect(status_notice(page)).to_contain_text(f"You approved: {READER_NAME} can read")
    expect(card).to_have_count(0)

    held = requests.get(node.api("/grants"), headers=bearer(reader), timeout=HTTP_TIMEOUT)
    assert held.status_code == 200, held.text
    mine = [g for g in held.json()["grants"] if g["patient"]["display_name"] == "Nina Narrow"]
    assert len(mine) == 1 and mine[0]["status"] == "active", mine
    grant = mine[0]
    assert grant["scope"] == {"type": "categories", "categories": ["cardiology"]}
    lasts = datetime.fromisoformat(grant["expires_at"]) - datetime.fromisoformat(grant["created_at"])
    assert lasts == timedelta(days=7), lasts
    phone.assert_clean()


def test_the_grant_forms_dates_fit_a_phone(node: Node, phone: Phone) -> None:
    username = "pat.dates"
    register_patient(node, username, PATIENT_PASSWORD, "Dora Dates")
    page = phone.page
    log_in_app(page, username, PATIENT_PASSWORD)
    open_tab(page, "Access")
    form = page.locator("#app form")
    form.get_by_label("Only records from certain dates").check()
    page.fill("#grant-from", "2025-01-01")
    page.fill("#grant-to", "2026-12-31")
    card = form.bounding_box()
    assert card
    for selector in ("#grant-from", "#grant-to"):
        box = page.locator(selector).bounding_box()
        assert box, selector
        assert box["x"] >= card["x"] and box["x"] + box["width"] <= card["x"] + card["width"], (selector, box, card)
    assert fits_the_phone(page)
    phone.assert_clean()


def test_the_access_log_loads_more_without_repeating_a_read(node: Node, phone: Phone, reader: str) -> None:
    username = "pat.log.pages"
    patient_id = register_patient(node, username, PATIENT_PASSWORD, "Lou Logpages")
    record_id = write_record(node, doctor_token(node), username, "Asthma review (log pages)")
    asked = requests.post(
        node.api("/access-requests"),
        json={"patient_id": patient_id, "reason": REQUEST_REASON, "days": 3},
        headers=bearer(reader),
        timeout=HTTP_TIMEOUT,
    )
    assert asked.status_code == 201, asked.text
    patient = token_for(node, username, PATIENT_PASSWORD)
    approved = requests.post(
        node.api(f"/access-requests/{asked.json()['id']}/approve"), headers=bearer(patient), timeout=HTTP_TIMEOUT
    )
    assert approved.status_code == 201, approved.text
    reads = 52  # more than the app's page of 50
    for _ in range(reads):
        assert read_record(node, reader, record_id).status_code == 200

    page = phone.page
    log_in_app(page, username, PATIENT_PASSWORD)
    open_tab(page, "Access log")
    entries = page.locator("#app .log-entry")
    expect(entries).to_have_count(50)
    # One more read moves every offset by one: the second page starts with a read already shown.
    assert read_record(node, reader, record_id).status_code == 200
    page.get_by_role("button", name="Load more").click()
    expect(entries).to_have_count(reads)
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    counted = "total" in requests.get(node.api("/access-log?limit=1"), headers=bearer(patient), timeout=10).json()
    if counted:
        expect(page.locator("#app .list-count")).to_have_text(f"Showing {reads} of {reads + 1}")
    phone.assert_clean()


def test_past_grants_load_more_without_repeating_one(node: Node, phone: Phone, reader: str) -> None:
    """More grants than a page of 50. A server that pages grants (`next_offset`) gets a "Load more";
    one that answers them all at once shows them all with no button."""
    username = "pat.grant.pages"
    register_patient(node, username, PATIENT_PASSWORD, "Gwen Grantpages")
    patient = token_for(node, username, PATIENT_PASSWORD)
    reader_id = requests.get(node.api("/me"), headers=bearer(reader), timeout=HTTP_TIMEOUT).json()["user"]["id"]
    count = 52
    for _ in range(count):
        given = requests.post(
            node.api("/grants"), json={"doctor_id": reader_id, "days": 1}, headers=bearer(patient), timeout=HTTP_TIMEOUT
        )
        assert given.status_code == 201, given.text
        revoked = requests.delete(node.api(f"/grants/{given.json()['id']}"), headers=bearer(patient), timeout=10)
        assert revoked.status_code == 200, revoked.text
    paged = "next_offset" in requests.get(node.api("/grants?limit=1"), headers=bearer(patient), timeout=10).json()

    page = phone.page
    log_in_app(page, username, PATIENT_PASSWORD)
    open_tab(page, "Access")
    past = page.locator("#app details.past-grants")
    more = page.locator("section[aria-labelledby=access-grants]").get_by_role("button", name="Load more")
    if paged:
        expect(past.locator("summary")).to_have_text("Past access (50)")
        # A grant given between two pages moves every offset by one.
        given = requests.post(
            node.api("/grants"), json={"doctor_id": reader_id, "days": 1}, headers=bearer(patient), timeout=10
        )
        assert given.status_code == 201, given.text
        more.click()
        expect(past.locator("summary")).to_have_text(f"Past access ({count})")
    else:
        expect(past.locator("summary")).to_have_text(f"Past access ({count})")
    expect(more).to_be_hidden()
    past.locator("summary").click()
    expect(past.locator(".past-item")).to_have_count(count)
    phone.assert_clean()
