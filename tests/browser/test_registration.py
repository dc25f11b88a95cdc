"""The app's registration asks for a date of birth, says plainly what is wrong with it before
anything is sent, and the account it makes carries it: a doctor searching sees it, with the
patient marked as not verified in person."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import expect

from tests.browser.support import HTTP_TIMEOUT, UI_TIMEOUT, Node, Phone, bearer, doctor_token, heading

USERNAME = "dob.e2e"
PASSWORD = "patient-password-1"


def test_patient_registers_with_a_date_of_birth(node: Node, phone: Phone) -> None:
    page = phone.page
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if "/auth/register" in request.url else None)
    page.goto("/app/#/register")
    expect(heading(page)).to_have_text("Create an account")
    page.fill("#register-username", USERNAME)
    page.fill("#register-display-name", "Dora Oyelaran-Birch")
    page.fill("#register-password", PASSWORD)
    page.fill("#register-confirm", PASSWORD)
    field, error = page.locator("#register-date-of-birth"), page.locator("#register-date-of-birth-error")
    expect(field).to_have_attribute("type", "date")
    expect(page.get_by_label("Date of birth")).to_be_visible()

    create = page.get_by_role("button", name="Create account")
    for typed, message in [
        ("", "Please enter your date of birth."),
        ("2999-01-01", "Your date of birth cannot be in the future."),
        ("1899-12-31", "Please check the year: it must be 1900 or later."),
    ]:
        field.fill(typed)
        create.click()
        expect(error).to_have_text(message)
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_be_focused()
    assert sent == [], "nothing is sent while the date of birth is wrong"

    field.fill("1991-09-30")
    create.click()
    expect(page).to_have_url(re.compile(r"/app/#/recovery-key$"), timeout=UI_TIMEOUT)  # signed in, next step
    expect(error).to_be_hidden()

    found = requests.get(
        node.api("/patients"), params={"q": USERNAME}, headers=bearer(doctor_token(node)), timeout=HTTP_TIMEOUT
    )
    assert found.status_code == 200, found.text
    [patient] = [p for p in found.json()["patients"] if p["username"] == USERNAME]
    assert (patient["date_of_birth"], patient["verified"], patient["mrn"]) == ("1991-09-30", False, None)
    assert phone.errors == [] and phone.console_errors == []
