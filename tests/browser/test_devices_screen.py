"""End to end in the patient app: "Your devices" (from My ID) lists the patient's devices with the
fingerprint of each one's chat key, marks the device in hand, which has no Remove button, and
removes another one only after a confirmation: the list then shows the device gone, and the
removed device's sign-in has ended (docs/chat-protocol.md, "The keys on the ledger").

The devices get their keys through the API, with each device's own sign-in and the id its app
made (as tests/browser/test_chat_devices.py does), so the screen is tested without chatting."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import requests
from playwright.sync_api import Browser, Page, expect

from core.chat import IdentityKey
from core.encoding import b64e
from tests.browser.support import (
    HTTP_TIMEOUT,
    Node,
    Phone,
    bearer,
    fits_the_phone,
    heading,
    log_in_app,
    open_phone,
    register_patient,
    token_for,
)

PASSWORD = "patient-password-dv1"
DEVICE_OF = "async (userId) => (await import('/app/chat-store.js')).deviceOf(userId)"
QUESTION = "Remove this device?"
DETAIL = "It is signed out, and its chat key is revoked: it can no longer read new messages."
REMOVED = "The device was removed. It is signed out and can no longer read new messages."
NOT_FOUND = "No such device of yours."
SCREENSHOT = Path("/tmp/pwa-devices.png")
CONFIRM_SCREENSHOT = Path("/tmp/pwa-devices-confirm.png")


def log_in(page: Page, username: str) -> None:
    log_in_app(page, username, PASSWORD)


def token_of(page: Page) -> str:
    return page.evaluate("() => localStorage.getItem('medledger.token')")


def register_device_key(node: Node, token: str, device: str) -> str:
    """A key for `device` on the ledger, registered with that device's sign-in; answers its fingerprint."""
    answer = requests.put(
        node.api("/chat/key"),
        json={"key": IdentityKey.generate().public.b64, "device": device},
        headers=bearer(token),
        timeout=HTTP_TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["key"]["fingerprint"]


def devices_of(node: Node, token: str) -> requests.Response:
    return requests.get(node.api("/chat/devices"), headers=bearer(token), timeout=HTTP_TIMEOUT)


def grouped(fingerprint: str) -> str:
    """A fingerprint as the app shows it: groups of four hex digits."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))


def named(fingerprint: str) -> str:
    """How the screen names a device other than this one: its fingerprint's first two groups."""
    return f"Device {fingerprint[:4]} {fingerprint[4:8]}"


def test_the_phone_lists_both_devices_and_removes_the_tablet(node: Node, browser: Browser, phone: Phone) -> None:
    username = f"pat.devices.{secrets.token_hex(3)}"
    user_id = register_patient(node, username, PASSWORD, "Dev Ices")
    with open_phone(browser, node) as tablet:
        # The same patient signs in on a phone and a tablet; each app has its own device id.
        log_in(phone.page, username)
        log_in(tablet.page, username)
        phone_device = phone.page.evaluate(DEVICE_OF, user_id)
        tablet_device = tablet.page.evaluate(DEVICE_OF, user_id)
        assert len(phone_device) == len(tablet_device) == 22 and phone_device != tablet_device
        phone_token, tablet_token = token_of(phone.page), token_of(tablet.page)
        phone_print = register_device_key(node, phone_token, phone_device)
        tablet_print = register_device_key(node, tablet_token, tablet_device)
        # A laptop signed in through the API: removed elsewhere while the phone's list still shows it.
        laptop_device = b64e(os.urandom(16))
        laptop_print = register_device_key(node, token_for(node, username, PASSWORD), laptop_device)

        page = phone.page
        page.get_by_role("link", name="My ID", exact=True).click()
        page.get_by_role("link", name="Your devices").click()
        expect(heading(page)).to_have_text("Your devices")
        items = page.locator("#app .device-list > li")
        # This device first, then the others, newest first.
        expect(items.locator("h2")).to_have_text(["This device", named(laptop_print), named(tablet_print)])
        expect(items.locator(".device-fingerprint")).to_have_text(
            [grouped(phone_print), grouped(laptop_print), grouped(tablet_print)]
        )
        expect(items.first.get_by_role("button")).to_have_count(0)
        expect(items.first).to_contain_text("Added")
        assert fits_the_phone(page)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # Cancel leaves the device where it is, and the focus back on its button.
        remove_tablet = page.get_by_role("button", name=f"Remove {named(tablet_print).lower()}")
        remove_tablet.click()
        confirm = page.get_by_role("group", name=QUESTION)
        expect(confirm).to_be_visible()
        expect(confirm).to_contain_text(DETAIL)
        page.screenshot(path=str(CONFIRM_SCREENSHOT), full_page=True)
        confirm.get_by_role("button", name="Cancel").click()
        expect(confirm).to_be_hidden()
        expect(remove_tablet).to_be_focused()
        assert len(devices_of(node, phone_token).json()["devices"]) == 3

        # The laptop is gone already: the screen says so, beside the question.
        requests.delete(
            node.api(f"/chat/devices/{laptop_device}"), headers=bearer(phone_token), timeout=HTTP_TIMEOUT
        ).raise_for_status()
        page.get_by_role("button", name=f"Remove {named(laptop_print).lower()}").click()
        confirm.get_by_role("button", name="Remove", exact=True).click()
        expect(confirm.get_by_role("alert")).to_have_text(NOT_FOUND)

        # The tablet is removed from the phone, after the confirmation.
        page.reload()
        expect(items.locator("h2")).to_have_text(["This device", named(tablet_print)])
        remove_tablet.click()
        confirm.get_by_role("button", name="Remove", exact=True).click()
        expect(page.locator("#app .notice-info[role=status]")).to_have_text(REMOVED)
        expect(items.locator("h2")).to_have_text(["This device"])
        assert [d["device"] for d in devices_of(node, phone_token).json()["devices"]] == [phone_device]

        # The tablet's sign-in has ended: its next page load shows the sign-in screen.
        assert devices_of(node, tablet_token).status_code == 401
        tablet.page.reload()
        expect(heading(tablet.page)).to_have_text("Log in")
        tablet.assert_clean()
    phone.assert_clean()


def test_before_any_chat_the_screen_says_no_devices_yet(node: Node, phone: Phone) -> None:
    username = f"pat.nodevice.{secrets.token_hex(3)}"
    register_patient(node, username, PASSWORD, "Nadia Novice")
    log_in(phone.page, username)
    phone.page.goto("/app/#/devices")
    expect(heading(phone.page)).to_have_text("Your devices")
    expect(phone.page.locator("#app .devices")).to_have_text(
        re.compile("^No devices yet. A device appears here once you use the chat on it.$")
    )
    phone.assert_clean()
