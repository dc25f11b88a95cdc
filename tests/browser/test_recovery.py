"""End to end in the app: a patient makes a recovery key (password again, 12 numbered words with
their QR code, a print page that holds only the key, two words typed back), forgets the password,
sets a new one with the words, and still opens the record a doctor wrote; the sign-in says so
once and the access log keeps it."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import Page, expect

from tests.browser.support import (
    HTTP_TIMEOUT,
    UI_TIMEOUT,
    Node,
    Phone,
    doctor_token,
    heading,
    register_patient,
    write_record,
)

USERNAME = "rk.e2e"
PASSWORD = "patient-password-rk1"
NEW_PASSWORD = "violet-lantern-orchard-47"
TITLE = "Allergy clinic letter (e2e)"


def log_in(page: Page, password: str) -> None:
    page.goto("/app/#/login")
    expect(heading(page)).to_have_text("Log in")
    page.fill("#login-username", USERNAME)
    page.fill("#login-password", password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/app/#/records$"), timeout=UI_TIMEOUT)


def tab_to(page: Page, name: str, presses: int = 10) -> None:
    """Press Tab until the control named `name` has focus (it must be reachable by keyboard)."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement?.textContent?.trim()") == name:
            return
    raise AssertionError(f"{name!r} not reached with {presses} presses of Tab")


def test_recovery_key_then_forgot_password_keeps_the_records(node: Node, phone: Phone) -> None:
    page = phone.page
    register_patient(node, USERNAME, PASSWORD, "Rhea Kowalczyk")
    record_id = write_record(node, doctor_token(node), USERNAME, TITLE)
    log_in(page, PASSWORD)

    # From My ID: the recovery key, with the password again.
    page.locator("#session-bar").get_by_role("link", name="My ID").click()
    page.get_by_role("link", name="Recovery key").click()
    expect(heading(page)).to_have_text("Recovery key")
    expect(page.locator(".recovery-status")).to_have_text("You have no recovery key yet.")
    page.get_by_role("button", name="Make my recovery key").click()
    expect(page.locator("#recovery-password-error")).to_have_text("Please enter your password.")
    expect(page.locator("#recovery-password")).to_be_focused()
    page.get_by_label("Your password").fill("not-my-password-at-all")
    page.get_by_role("button", name="Make my recovery key").click()
    expect(page.get_by_role("alert")).to_have_text("The password is not right.")
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Make my recovery key").click()

    expect(page.get_by_role("heading", name="Your 12 words")).to_be_focused()
    words = page.locator(".recovery-words li").all_inner_texts()
    assert len(words) == 12 and all(re.fullmatch(r"[a-z]{3,8}", w) for w in words), words
    qr = page.get_by_role("img", name="QR code of your 12 recovery words")
    assert (qr.get_attribute("src") or "").startswith("data:image/svg+xml,")
    assert page.evaluate("() => document.querySelector('.recovery-qr').naturalWidth") > 0  # CSP let it draw

    # Printing puts the key on paper and nothing else.
    page.emulate_media(media="print")
    expect(page.locator(".recovery-print")).to_be_visible()
    expect(page.locator(".recovery-print-title")).to_have_text("MedLedger recovery key")
    for other in ("#session-bar", "#app h1", ".recovery-actions"):
        expect(page.locator(other).first).to_be_hidden()
    page.emulate_media(media="screen")
    expect(page.locator(".recovery-print-title")).to_be_hidden()
    expect(page.get_by_role("button", name="Print")).to_be_visible()

    # Two of the words, typed back (a wrong one first); the steps work with the keyboard alone.
    tab_to(page, "I have written them down")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Check your copy")).to_be_focused()
    labels = page.locator(".recovery label").all_inner_texts()
    first, second = (int(re.fullmatch(r"Word (\d+)", label).group(1)) for label in labels)  # type: ignore[union-attr]
    page.get_by_label(f"Word {first}", exact=True).fill(words[second - 1])
    page.get_by_label(f"Word {second}", exact=True).fill(words[first - 1])
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("alert")).to_contain_text(f"Those are not word {first} and word {second}")
    expect(page.get_by_label(f"Word {first}", exact=True)).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type(words[first - 1].upper())
    page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type(words[second - 1])
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/app/#/records$"), timeout=UI_TIMEOUT)
    expect(page.locator("#app .notice-info")).to_contain_text("Your recovery key is ready")
    phrase = " ".join(words)
    stored = page.evaluate("() => JSON.stringify({...localStorage, ...sessionStorage})")
    assert phrase not in stored and words[0] + " " + words[1] not in stored  # the words live in the screen only

    # Forgot password: log out, and set a new one with the words.
    page.locator("#session-bar").get_by_role("button", name="Log out").click()
    expect(heading(page)).to_have_text("Log in")
    page.get_by_role("link", name="Forgot password?").click()
    expect(heading(page)).to_have_text("Forgot password")
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Recovery key").fill(" ".join(words[:11]))
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Repeat the new password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set new password").click()
    expect(page.locator("#forgot-words-error")).to_have_text(
        "Please type all 12 words of your recovery key (you typed 11)."
    )
    expect(page.get_by_label("Recovery key")).to_be_focused()
    swapped = [*words[:10], words[11], words[10]]
    page.get_by_label("Recovery key").fill(" ".join(swapped))
    page.get_by_role("button", name="Set new password").click()
    expect(page.get_by_role("alert")).to_have_text(
        "That username and recovery key or front-desk code do not match (a code works once, for one hour). "
        "Check them and try again."
    )
    page.get_by_label("Recovery key").fill("\n".join(f"{n}. {w}" for n, w in enumerate(words, start=1)))
    page.get_by_role("button", name="Set new password").click()
    expect(page).to_have_url(re.compile(r"/app/#/login$"), timeout=UI_TIMEOUT)
    expect(page.locator("#app .notice-info")).to_contain_text("Your password was changed")

    old = requests.post(
        node.api("/auth/token"), json={"username": USERNAME, "password": PASSWORD}, timeout=HTTP_TIMEOUT
    )
    assert old.status_code == 401
    log_in(page, NEW_PASSWORD)
    expect(page.locator("#app .notice-info")).to_contain_text("Your password was reset with your recovery key")

    # The same keys: the doctor's record still opens, and the access log keeps the reset.
    page.goto(f"/app/#/records/{record_id}")
    expect(heading(page)).to_have_text(TITLE, timeout=UI_TIMEOUT)
    page.get_by_role("link", name="Access log").click()
    expect(page.locator(".log-entry", has_text="Password reset with your recovery key")).to_be_visible()
    phone.assert_clean()
    # Only the refusals above (wrong password, wrong words), as Chromium logs every 4xx answer.
    refused = re.compile(r"^Failed to load resource: .* status of (401|422) ")
    assert [e for e in phone.console_errors if not refused.match(e)] == [], phone.console_errors
    assert len(phone.console_errors) == 3  # the wrong password, the wrong two words, the swapped words
