"""End to end in the patient app: two-factor sign-in turned on from "Sign-in security" (QR code
and key, first code, ten recovery codes), then a log-in that asks for the code, and turning it off."""

from __future__ import annotations

import re

import pyotp
from playwright.sync_api import expect

from tests.browser.support import Node, Phone, heading, register_patient

PASSWORD = "patient-password-4"


def log_in(phone: Phone, username: str) -> None:
    page = phone.page
    page.goto("/app/#/login")
    expect(heading(page)).to_have_text("Log in")
    page.fill("#login-username", username)
    page.fill("#login-password", PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_patient_turns_on_two_factor_and_logs_in_with_a_code(node: Node, phone: Phone) -> None:
    register_patient(node, "pat.twofactor", PASSWORD, "Tove Twofactor")
    page = phone.page
    log_in(phone, "pat.twofactor")
    expect(heading(page)).to_have_text("My records")
    page.get_by_role("link", name="My ID").click()
    page.get_by_role("link", name=re.compile("Sign-in security")).click()
    expect(heading(page)).to_have_text("Sign-in security")
    page.get_by_role("button", name="Set up two-factor sign-in").click()
    expect(page.get_by_role("img", name="QR code to scan with your authenticator app")).to_be_visible()
    secret = page.locator(".two-factor-key").inner_text()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)

    page.fill("#two-factor-code", "000000")
    page.get_by_role("button", name="Turn on").click()
    expect(page.locator("#app .notice-error")).to_contain_text("That code is not right")
    page.fill("#two-factor-code", pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on").click()
    codes = page.get_by_role("list", name="Recovery codes").locator("li")
    expect(codes).to_have_count(10)
    recovery = codes.nth(0).inner_text()
    page.get_by_role("button", name="I have saved them").click()
    expect(page.locator("#app")).to_contain_text("Two-factor sign-in is on. 10 recovery codes left.")

    # Logging in again asks for the code, after the password.
    page.get_by_role("button", name="Log out").click()
    log_in(phone, "pat.twofactor")
    expect(page.locator("#app .notice-error")).to_contain_text("Enter the 6-digit code from your authenticator app")
    expect(page.locator("#login-otp")).to_be_focused()
    page.fill("#login-otp", recovery)
    page.get_by_role("button", name="Log in").click()
    expect(heading(page)).to_have_text("My records")

    # Turning it off asks for a code.
    page.goto("/app/#/security")
    expect(page.locator("#app")).to_contain_text("9 recovery codes left.")
    page.fill("#two-factor-off-code", codes_left_placeholder := "123456")
    page.get_by_role("button", name="Turn off").click()
    expect(page.locator("#app .notice-error")).to_contain_text("That code is not right")
    assert codes_left_placeholder
    phone.assert_clean()
