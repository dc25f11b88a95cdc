"""End to end: the patient's record list and record screens in the app (/app/) against a real node.

More records than one page: "Load more" fetches the next page and no record shows twice, even
when a new one arrives between two pages. Without a network a refresh keeps what was loaded and
says so, for the list and for a record. A failure the server explains with a code reads as a
plain sentence, and so does a refused field. A PDF attachment is shown in the record: in the app
from an object URL in a frame, in the portal in a frame of its own inline answer, read (and logged)
like a download.
"""

from __future__ import annotations

import base64
import json
import re
import time

import requests
from playwright.sync_api import Browser, Frame, Locator, Page, Route, expect

from tests.browser.support import (
    DOCTOR_NAME,
    DOCTOR_PASSWORD,
    DOCTOR_USERNAME,
    HTTP_TIMEOUT,
    UI_TIMEOUT,
    Node,
    Phone,
    bearer,
    doctor_token,
    find_patient,
    heading,
    log_in_app,
    register_patient,
)

PASSWORD = "patient-password-3"
PAGE_SIZE = 50  # the app's page (pwa/views.js PAGE_SIZE)
OFFLINE_NOTICE = re.compile(r"^Offline — showing what was loaded at \d{1,2}:\d{2}")


# ---- helpers


def log_in(page: Page, username: str) -> None:
    log_in_app(page, username, PASSWORD)


def write_short_record(node: Node, token: str, patient_id: str, title: str) -> str:
    written = requests.post(
        node.api(f"/patients/{patient_id}/records"),
        json={"title": title, "category": "general", "diagnoses": ["J45.909"], "notes": "Seen in clinic."},
        headers=bearer(token),
        timeout=HTTP_TIMEOUT,
    )
    assert written.status_code == 201, written.text
    return written.json()["id"]


def one_page_pdf(text: str) -> bytes:
    """A valid one-page PDF showing `text` (ASCII), so that a viewer has something to draw."""
    content = f"BT /F1 18 Tf 24 150 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 300] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    pdf, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return pdf + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def write_record_with_pdf(node: Node, token: str, patient_id: str, title: str, filename: str) -> str:
    data = base64.b64encode(one_page_pdf(title)).decode()
    pdf = {"filename": filename, "content_type": "application/pdf", "data": data}
    written = requests.post(
        node.api(f"/patients/{patient_id}/records"),
        json={"title": title, "category": "respiratory", "diagnoses": ["J45.909"], "attachments": [pdf]},
        headers=bearer(token),
        timeout=HTTP_TIMEOUT,
    )
    assert written.status_code == 201, written.text
    return written.json()["id"]


def framed_document(frame: Locator) -> Frame:
    """The document in `frame` once it has navigated away from about:blank."""
    deadline = time.monotonic() + UI_TIMEOUT / 1000
    while True:
        content = frame.element_handle().content_frame()
        if content is not None and content.url not in ("", "about:blank"):
            return content
        assert time.monotonic() < deadline, "the frame never loaded"
        frame.page.wait_for_timeout(100)


def card_titles(page: Page) -> list[str]:
    return page.locator("#app .record-card .record-card-title").all_inner_texts()


def answer_with_error(status: int, error: dict[str, object]):  # type: ignore[no-untyped-def]
    def fulfil(route: Route) -> None:
        route.fulfill(status=status, content_type="application/json", body=json.dumps({"error": error}))

    return fulfil


# ---- tests


def test_load_more_shows_every_record_once_and_offline_keeps_them(node: Node, phone: Phone) -> None:
    username = "pat.pages"
    register_patient(node, username, PASSWORD, "Pia Pages")
    token = doctor_token(node)
    patient_id = find_patient(node, token, username)
    count = PAGE_SIZE + 2
    for i in range(1, count + 1):
        write_short_record(node, token, patient_id, f"Visit {i:02d}")

    page = phone.page
    log_in(page, username)
    cards = page.locator("#app .record-card")
    expect(cards).to_have_count(PAGE_SIZE)
    assert card_titles(page)[0] == f"Visit {count:02d}"  # newest first
    more = page.get_by_role("button", name="Load more")
    expect(more).to_be_visible()
    first_page = requests.get(node.api("/records?limit=1"), headers=bearer(token), timeout=HTTP_TIMEOUT).json()
    counted = "total" in first_page

    # A record arrives between the two pages: every offset moves by one, and the record that
    # ends the first page comes again at the start of the second.
    write_short_record(node, token, patient_id, "Visit late")
    more.click()
    expect(cards).to_have_count(count)
    titles = card_titles(page)
    assert len(titles) == len(set(titles)) == count, titles
    assert set(titles) == {f"Visit {i:02d}" for i in range(1, count + 1)}
    expect(more).to_be_hidden()  # the last page
    count_line = page.locator("#app .list-count")
    if counted:
        expect(count_line).to_have_text(f"Showing {count} of {count + 1}")
    else:
        expect(count_line).to_be_hidden()

    # Offline: Refresh keeps the list and says since when.
    page.context.set_offline(True)
    try:
        page.get_by_role("button", name="Refresh").click()
        notice = page.locator("#app .notice-offline")
        expect(notice).to_have_text(OFFLINE_NOTICE)
        expect(cards).to_have_count(count)
        expect(page.get_by_role("button", name="Refresh")).to_be_enabled()
    finally:
        page.context.set_offline(False)

    # Back online, Refresh starts again from the newest, the late record first.
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#app .notice-offline")).to_be_hidden()
    expect(cards.first).to_contain_text("Visit late")
    expect(cards).to_have_count(PAGE_SIZE)
    phone.assert_clean()


def test_a_record_seen_once_stays_readable_offline(node: Node, phone: Phone) -> None:
    username = "pat.offline"
    register_patient(node, username, PASSWORD, "Otto Offline")
    token = doctor_token(node)
    record_id = write_short_record(node, token, find_patient(node, token, username), "Clinic visit")

    page = phone.page
    log_in(page, username)
    page.locator("#app .record-card", has_text="Clinic visit").click()
    expect(heading(page)).to_have_text("Clinic visit")
    expect(page.locator("#app .record-section", has_text="Notes")).to_contain_text("Seen in clinic.")
    page.get_by_role("link", name="← My records").click()
    expect(heading(page)).to_have_text("My records")

    page.context.set_offline(True)
    try:
        # The list screen opens on what was loaded, then says the refresh failed.
        page.get_by_role("button", name="Refresh").click()
        expect(page.locator("#app .notice-offline")).to_have_text(OFFLINE_NOTICE)
        page.locator("#app .record-card", has_text="Clinic visit").click()
        expect(page).to_have_url(re.compile(rf"#/records/{record_id}$"))
        expect(heading(page)).to_have_text("Clinic visit")
        expect(page.locator("#app .notice-offline")).to_have_text(OFFLINE_NOTICE)
        expect(page.locator("#app .record-section", has_text="Notes")).to_contain_text("Seen in clinic.")
        # A screen never loaded has nothing to keep: it says the app is offline.
        page.get_by_role("link", name="Access log", exact=True).click()
        expect(page.locator("#app .access-log .notice-error")).to_have_text(re.compile(r"^You are offline"))
    finally:
        page.context.set_offline(False)
    phone.assert_clean()


def test_server_errors_read_as_plain_sentences(node: Node, phone: Phone) -> None:
    username = "pat.errors"
    register_patient(node, username, PASSWORD, "Erin Errors")
    page = phone.page
    # The emergency check above every screen: a failure reads as a sentence too, never raw.
    page.route("**/api/v1/emergency-access*", answer_with_error(500, {"code": "internal", "message": "KeyError: 'x'"}))
    log_in(page, username)
    expect(page.locator("#emergency-banner .banner-check-failed")).to_have_text(
        "Could not check for emergency access: Something went wrong on the server. Please try again in a moment."
    )
    page.unroute("**/api/v1/emergency-access*")

    # A code with a fixed meaning: its sentence, not the server's wording.
    page.route(
        "**/api/v1/records?*",
        answer_with_error(409, {"code": "record_unreadable", "message": "`envelope` failed to open (kfrag 3)"}),
    )
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#app .records .notice-error")).to_have_text(
        "This record cannot be opened right now. Please try again later; if it keeps happening, tell the "
        "hospital that wrote it."
    )
    page.unroute("**/api/v1/records?*")

    # A server failure never shows its internals.
    page.route("**/api/v1/records?*", answer_with_error(500, {"code": "internal", "message": "Traceback: KeyError"}))
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#app .records .notice-error")).to_have_text(
        "Something went wrong on the server. Please try again in a moment."
    )
    page.unroute("**/api/v1/records?*")

    # A refused field: the sentence for that field.
    page.get_by_role("link", name="Access", exact=True).click()
    expect(heading(page)).to_have_text("Access")
    page.route(
        "**/api/v1/doctors?*",
        answer_with_error(
            422, {"code": "validation_failed", "message": "`q`: Shorter than minimum length 2.", "fields": {"q": "x"}}
        ),
    )
    page.locator("#doctor-search").fill("Eve")
    expect(page.locator("#doctor-search-error")).to_have_text("Please check what you typed in the search.")
    phone.assert_clean()


def test_a_busy_server_is_asked_again_when_it_says(node: Node, phone: Phone) -> None:
    """503 `busy` with Retry-After (no database connection came free, nothing was done): the app
    asks again after the time the server gives, and shows the answer; past its retries, the error."""
    username = "pat.busy"
    register_patient(node, username, PASSWORD, "Bea Busy")
    page = phone.page
    log_in(page, username)
    busy = {"code": "busy", "message": "The server is busy; nothing was changed. Try again in a few seconds."}
    refused: list[float] = []

    def busy_once(route: Route) -> None:
        if refused:
            route.continue_()
            return
        refused.append(time.monotonic())
        route.fulfill(status=503, headers={"Retry-After": "1"}, content_type="application/json",
                      body=json.dumps({"error": busy}))  # fmt: skip

    page.route("**/api/v1/records?*", busy_once)
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#app .records .empty-state, #app .records .record-card").first).to_be_visible()
    expect(page.locator("#app .records .notice-error")).to_have_count(0)
    assert len(refused) == 1
    page.unroute("**/api/v1/records?*")

    calls: list[float] = []

    def always_busy(route: Route) -> None:
        if "limit=5&" in route.request.url + "&":  # this call's, not the app's own (limit=50)
            calls.append(time.monotonic())
        route.fulfill(status=503, headers={"Retry-After": "1"}, content_type="application/json",
                      body=json.dumps({"error": busy}))  # fmt: skip

    page.route("**/api/v1/records?*", always_busy)
    code = page.evaluate(
        """async () => {
            const api = await import('/app/api.js');
            try { await api.listRecords({ limit: 5 }); return 'answered'; } catch (error) { return error.code; }
        }"""
    )
    assert code == "busy"
    # The first try and two more, each after the second the server asked for; then the error.
    assert len(calls) == 3, calls
    assert calls[1] - calls[0] >= 0.9 and calls[2] - calls[1] >= 0.9, calls
    phone.assert_clean()


def test_a_pdf_attachment_is_shown_in_the_app_and_in_the_portal(node: Node, phone: Phone, browser: Browser) -> None:
    username = "pat.pdf"
    register_patient(node, username, PASSWORD, "Petra Pdf")
    token = doctor_token(node)
    title = "Spirometry report"
    record_id = write_record_with_pdf(node, token, find_patient(node, token, username), title, "spirometry.pdf")

    # The app fetches the PDF with the patient's token and shows it in a frame from an object URL:
    # the app's Content-Security-Policy lets blob: frames load (a refused frame is a chrome-error page).
    page = phone.page
    log_in(page, username)
    page.goto(f"/app/#/records/{record_id}")
    expect(heading(page)).to_have_text(title)
    preview = page.get_by_title("Preview of spirometry.pdf (PDF)")
    expect(preview).to_have_count(1)
    expect(preview).to_have_class("attachment-pdf")
    src = preview.get_attribute("src") or ""
    assert src.startswith(f"blob:{node.url}/"), src
    assert framed_document(preview).url == src
    expect(page.get_by_role("button", name="Download spirometry.pdf")).to_be_visible()
    assert not [e for e in phone.console_errors if "Content Security Policy" in e], phone.console_errors
    phone.assert_clean()

    # The portal's record page frames the attachment's inline answer, which allows this site (and only
    # it) to frame it; showing it is a read like a download, so the patient's access log gains it.
    context = browser.new_context(base_url=node.url, viewport={"width": 1366, "height": 900}, locale="en-GB")
    context.set_default_timeout(UI_TIMEOUT)
    try:
        doctor = context.new_page()
        doctor.goto("/login")
        doctor.get_by_label("Username").fill(DOCTOR_USERNAME)
        doctor.get_by_label("Password").fill(DOCTOR_PASSWORD)
        doctor.get_by_role("button", name="Log in").click()
        doctor.wait_for_url("**/doctor/**")
        inline = f"{node.url}/doctor/records/{record_id}/attachments/0?inline=1"
        with doctor.expect_response(inline) as shown:
            doctor.goto(f"/doctor/records/{record_id}")
            frame = doctor.get_by_title("spirometry.pdf (attached PDF)")
            frame.scroll_into_view_if_needed()
        answer = shown.value
        headers = answer.all_headers()
        assert answer.status == 200 and headers["content-type"] == "application/pdf"
        assert headers["content-disposition"].startswith("inline")
        assert headers["x-frame-options"] == "SAMEORIGIN"
        assert "frame-ancestors 'self'" in headers["content-security-policy"]
        assert frame.get_attribute("sandbox") is None
        assert framed_document(frame).url == inline  # not an error page: the frame was allowed
    finally:
        context.close()

    page.get_by_role("link", name="Access log", exact=True).click()
    expect(heading(page)).to_have_text("Access log")
    read = page.locator("#app .log-entry", has_text=f"{title} · attachment 1")
    expect(read).to_have_count(1)
    expect(read).to_contain_text(DOCTOR_NAME)
    expect(read).to_contain_text("Read as the author")
