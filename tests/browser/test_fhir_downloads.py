"""End to end: the patient takes copies away from the app (docs/fhir.md): their whole record as a
FHIR R4 Bundle from "My records", their access log as CSV and as FHIR AuditEvents from "Access
log". Each is fetched with the token, saved under the server's file name, and said to be saved;
a failed download says so, and the app keeps working.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import requests
from playwright.sync_api import Download, Page, Route, expect

from tests.browser.support import (
    DOCTOR_NAME,
    HTTP_TIMEOUT,
    UI_TIMEOUT,
    Node,
    Phone,
    bearer,
    doctor_token,
    fits_the_phone,
    heading,
    log_in_app,
    register_patient,
    write_record,
)

PATIENT_USERNAME = "pat.fhir"
PATIENT_PASSWORD = "patient-password-fhir"
PATIENT_NAME = "Farah Fhir-Download"
TITLE = "Asthma review (FHIR e2e)"
RECORD_FILE = re.compile(r"medledger-record-\d{4}-\d{2}-\d{2}\.json")
LOG_FILE = re.compile(r"medledger-access-log-\d{4}-\d{2}-\d{2}\.(csv|json)")
SCREENSHOT = Path("/tmp/pwa-fhir-downloads.png")


def log_in(page: Page, username: str) -> None:
    log_in_app(page, username, PATIENT_PASSWORD)


def download(page: Page, button_name: str) -> Download:
    with page.expect_download(timeout=UI_TIMEOUT) as started:
        page.get_by_role("button", name=button_name).click()
    return started.value


def read_json(saved: Download) -> dict[str, Any]:
    return json.loads(Path(saved.path()).read_text(encoding="utf-8"))


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == kind]


def test_patient_downloads_record_and_access_log(node: Node, phone: Phone) -> None:
    register_patient(node, PATIENT_USERNAME, PATIENT_PASSWORD, PATIENT_NAME)
    token = doctor_token(node)
    record_id = write_record(node, token, PATIENT_USERNAME, TITLE)
    # The author opens it again: a read in the patient's access log.
    read = requests.get(node.api(f"/records/{record_id}"), headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert read.status_code == 200, read.text

    page = phone.page
    log_in(page, PATIENT_USERNAME)
    expect(page.get_by_role("link", name=re.compile(re.escape(TITLE)))).to_be_visible()

    # The whole record, as one FHIR Bundle.
    panel = page.get_by_role("region", name="A copy of your record")
    saved = download(page, "Download my record (FHIR)")
    assert RECORD_FILE.fullmatch(saved.suggested_filename), saved.suggested_filename
    bundle = read_json(saved)
    assert bundle["resourceType"] == "Bundle"
    assert [c["title"] for c in resources(bundle, "Composition")] == [TITLE]
    assert [c["code"]["coding"][0]["code"] for c in resources(bundle, "Condition")] == ["J45.909"]
    assert any(p.get("name") for p in resources(bundle, "Patient"))
    expect(panel.get_by_role("status")).to_contain_text(f"Saved {saved.suggested_filename}")
    expect(page.get_by_role("button", name="Download my record (FHIR)")).to_be_enabled()
    assert fits_the_phone(page)
    page.screenshot(path=str(SCREENSHOT))

    # The access log, as CSV and as FHIR AuditEvents, matching what the screen lists.
    page.get_by_role("link", name="Access log", exact=True).click()
    expect(heading(page)).to_have_text("Access log")
    entries = page.locator("#app .log-entry", has_text=DOCTOR_NAME)
    expect(entries).to_have_count(1)
    log_panel = page.get_by_role("region", name="A copy of your access log")

    saved = download(page, "Download as CSV")
    assert LOG_FILE.fullmatch(saved.suggested_filename) and saved.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(Path(saved.path()).read_text(encoding="utf-8"))))
    assert [(row["reader"], row["mode"], row["record_id"], row["part"]) for row in rows] == [
        (DOCTOR_NAME, "author", record_id, "record")
    ]
    expect(log_panel.get_by_role("status")).to_contain_text(f"Saved {saved.suggested_filename}")

    saved = download(page, "Download as FHIR")
    assert LOG_FILE.fullmatch(saved.suggested_filename) and saved.suggested_filename.endswith(".json")
    bundle = read_json(saved)
    assert bundle["resourceType"] == "Bundle"
    events = resources(bundle, "AuditEvent")
    assert len(events) == 1
    assert record_id in json.dumps(events[0]) and DOCTOR_NAME in json.dumps(events[0])
    assert fits_the_phone(page)
    phone.assert_clean()


def test_a_failed_download_says_so(node: Node, phone: Phone) -> None:
    username = "pat.fhir.fail"
    register_patient(node, username, PATIENT_PASSWORD, "Fay Failed-Download")
    page = phone.page
    log_in(page, username)

    def refuse(route: Route) -> None:
        route.fulfill(status=503, content_type="application/json", body='{"error": {"code": "internal"}}')

    page.route("**/api/v1/records/fhir", refuse)
    button = page.get_by_role("button", name="Download my record (FHIR)")
    button.click()
    panel = page.get_by_role("region", name="A copy of your record")
    expect(panel.get_by_role("alert")).to_contain_text("Your record could not be downloaded.")
    expect(panel.get_by_role("alert")).to_contain_text("Something went wrong on the server")
    expect(button).to_be_enabled()
    expect(button).to_be_focused()

    # Once the server answers again, the same button works.
    page.unroute("**/api/v1/records/fhir")
    saved = download(page, "Download my record (FHIR)")
    assert RECORD_FILE.fullmatch(saved.suggested_filename)
    assert resources(read_json(saved), "Composition") == []
    expect(panel.get_by_role("alert")).to_be_hidden()
    phone.assert_clean()
