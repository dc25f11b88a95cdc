"""End to end in the patient app: "Help from your hospital" from My ID says what hospital-assisted
recovery is and what turning it off means, turns it off (only after the box is ticked) and on
again; "Code from the front desk" refuses a code that does not work with a clear sentence. A
whole recovery with a real code is in tests/multinode/test_escrow_across.py (it needs two nodes)."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.support import Node, Phone, heading, register_patient

USERNAME = "pat.escrow"
PASSWORD = "patient-password-es1"


def test_patient_turns_hospital_help_off_and_on(node: Node, phone: Phone) -> None:
    register_patient(node, USERNAME, PASSWORD, "Esme Scrowcroft")
    page = phone.page
    page.goto("/app/#/login")
    page.fill("#login-username", USERNAME)
    page.fill("#login-password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(heading(page)).to_have_text("My records")
    page.get_by_role("link", name="My ID").click()
    page.get_by_role("link", name=re.compile("Help from your hospital")).click()
    expect(heading(page)).to_have_text("Help from your hospital")
    status = page.locator("#app .escrow [role=status]")
    expect(status).to_contain_text("On:")  # one node alone: made once a second hospital joins

    page.get_by_role("button", name="Turn off help from my hospital").click()
    expect(page.locator("#app .notice-error")).to_contain_text("Tick the box first")
    expect(status).to_contain_text("On:")
    page.get_by_label(re.compile("nobody can give me back my records")).check()
    page.get_by_role("button", name="Turn off help from my hospital").click()
    expect(status).to_have_text(re.compile("^Off: no hospital keeps your key"))
    page.get_by_role("button", name="Turn on help from my hospital").click()
    expect(status).to_contain_text("On:")


def test_a_wrong_front_desk_code_gets_a_clear_answer(node: Node, phone: Phone) -> None:
    page = phone.page
    page.goto("/app/#/recover-with-code")
    expect(heading(page)).to_have_text("Code from the front desk")
    page.get_by_role("button", name="Set new password").click()
    expect(page.locator("#code-code-error")).to_contain_text("The code has 20 letters and digits")
    page.fill("#code-username", "nobody.here")
    page.fill("#code-code", "ABCD-EFGH-JKLM-NPQR-STUV")
    page.fill("#code-password", "violet-canyon-orbit-lantern")
    page.fill("#code-confirm", "violet-canyon-orbit-lantern")
    page.get_by_role("button", name="Set new password").click()
    expect(page.locator("#app .notice-error")).to_contain_text("recovery key or front-desk code do not match")
