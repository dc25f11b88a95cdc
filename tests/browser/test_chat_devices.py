"""A patient on two devices: each app has its own device id and chat key, every message is sealed
for every device (the peer's and one's own other ones), the peer is told of the new device, and a
lost device removed from the other one is cut off: its sign-in ends, nothing more is sealed or
delivered for it, and signed in again it is refused by the chat server (docs/chat-protocol.md,
"Devices")."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from core.chat import IdentityKey
from core.encoding import b64e
from tests.browser.support import HTTP_TIMEOUT, Node, Phone, bearer, heading, open_phone
from tests.browser.test_pwa_chat import (
    HANDSHAKE_TIMEOUT,
    chat_ready,
    device_id,
    grouped,
    log_in,
    matched_pair,
    open_chat_on_both,
    send,
    wait_until_in_a_block,
)

TERMS = ["HP:0001945", "HP:0002018"]  # Fever, Nausea: this module's own match
REMOVED = "This device was removed from your account: it cannot use the chat any more."


@pytest.fixture
def tablet(browser: Browser, node: Node) -> Iterator[Phone]:
    """The same patient's second device."""
    with open_phone(browser, node) as device:
        yield device


@pytest.fixture
def other_phone(browser: Browser, node: Node) -> Iterator[Phone]:
    """The other patient's phone."""
    with open_phone(browser, node) as device:
        yield device


def token_of(page: Page) -> str:
    return page.evaluate("() => localStorage.getItem('medledger.token')")


def copies_for(node: Node, device: str) -> int:
    """How many chat items the node holds addressed to `device`."""
    path = node.env["DATABASE_URL"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT count(*) FROM chat_messages WHERE recipient_device = ?", (device,)).fetchone()[0]


def theirs(page: Page):
    return page.locator(".message-theirs .message-text")


def mine(page: Page):
    return page.locator(".message-mine .message-text")


def test_two_devices_both_send_and_receive_and_a_removed_one_is_cut_off(
    node: Node, phone: Phone, tablet: Phone, other_phone: Phone
) -> None:
    pair = matched_pair(node, "pat.devices", TERMS)
    alice, bob = pair.names["asking"], pair.names["answering"]
    alice_id, conversation = pair.ids["asking"], pair.conversation
    a, t, b = phone.page, tablet.page, other_phone.page

    # Alice opens the conversation on her phone, Bob on his: the chat runs as before.
    bob_seen_as, alice_seen_as = open_chat_on_both(a, b, alice, bob, conversation)
    send(a, "Hello from the phone")
    expect(theirs(b)).to_have_text(["Hello from the phone"])
    phone_device = device_id(a, alice_id)

    # Her tablet signs in too: its app makes its own device id and key, and joins the conversation
    # from now on (it says so). Bob's app tells him, at once, that Alice uses another device.
    log_in(t, alice)
    t.goto(f"/app/#/chat/{conversation}")
    chat_ready(t, bob_seen_as)
    tablet_device = device_id(t, alice_id)
    assert tablet_device != phone_device and len(tablet_device) == 22
    expect(t.locator(".joined-note")).to_contain_text("This device joined the conversation on")
    wait_until_in_a_block(node, pair.tokens["answering"], alice_seen_as)
    seen = requests.get(node.api(f"/chat/keys/{alice_seen_as}"), headers=bearer(pair.tokens["answering"]),
                        timeout=HTTP_TIMEOUT).json()["key"]  # fmt: skip
    tablet_key = next(d for d in seen["devices"] if d["device"] == tablet_device)
    notice = b.locator(".device-notice")
    expect(notice).to_contain_text(f"{alice_seen_as} started using the chat on another device.",
                                   timeout=HANDSHAKE_TIMEOUT)  # fmt: skip
    expect(notice.locator("li")).to_have_text([grouped(tablet_key["fingerprint"])])
    notice.get_by_role("button", name="OK").click()
    expect(notice).to_be_hidden()

    # Every message reaches every device: Bob's reaches both of Alice's; each of Alice's devices
    # reaches Bob and shows on her other device as her own.
    send(b, "Hi both")
    expect(theirs(a)).to_have_text(["Hi both"], timeout=HANDSHAKE_TIMEOUT)
    expect(theirs(t)).to_have_text(["Hi both"], timeout=HANDSHAKE_TIMEOUT)
    send(t, "Written on the tablet")
    expect(theirs(b)).to_have_text(["Hello from the phone", "Written on the tablet"])
    expect(mine(a)).to_have_text(["Hello from the phone", "Written on the tablet"], timeout=HANDSHAKE_TIMEOUT)
    send(a, "And on the phone")
    expect(theirs(b).last).to_have_text("And on the phone")
    expect(mine(t)).to_have_text(["Written on the tablet", "And on the phone"], timeout=HANDSHAKE_TIMEOUT)
    expect(b.locator(".message-text")).to_have_count(4)  # one copy each, never two

    # A sign-in runs on one device: the tablet's cannot register a key for the phone.
    phone_token, tablet_token = token_of(a), token_of(t)
    posing = requests.put(
        node.api("/chat/key"),
        json={"key": IdentityKey.generate().public.b64, "device": phone_device},
        headers=bearer(tablet_token),
        timeout=HTTP_TIMEOUT,
    )
    assert posing.status_code == 403, posing.text

    # The tablet is lost: Alice removes it with her phone. The phone cannot remove itself.
    itself = requests.delete(
        node.api(f"/chat/devices/{phone_device}"), headers=bearer(phone_token), timeout=HTTP_TIMEOUT
    )
    assert itself.status_code == 409, itself.text
    removed = requests.delete(
        node.api(f"/chat/devices/{tablet_device}"), headers=bearer(phone_token), timeout=HTTP_TIMEOUT
    )
    assert removed.status_code == 200, removed.text
    seen = requests.get(node.api(f"/chat/keys/{alice_seen_as}"), headers=bearer(pair.tokens["answering"]),
                        timeout=HTTP_TIMEOUT).json()["key"]  # fmt: skip
    assert [d["device"] for d in seen["devices"]] == [phone_device]
    assert [d["device"] for d in seen["revoked"]] == [tablet_device]

    # Nothing more goes to the tablet: Bob's and the phone's messages reach only the phone and Bob.
    before = copies_for(node, tablet_device)
    send(b, "Still there?")
    expect(theirs(a).last).to_have_text("Still there?")
    send(a, "Yes, on the phone")
    expect(theirs(b).last).to_have_text("Yes, on the phone")
    assert copies_for(node, tablet_device) == before
    expect(mine(t)).to_have_text(["Written on the tablet", "And on the phone"])

    # The tablet's sign-in has ended: the app sends it to the sign-in page.
    assert (
        requests.get(node.api("/chat/devices"), headers=bearer(tablet_token), timeout=HTTP_TIMEOUT).status_code == 401
    )
    t.reload()
    expect(heading(t)).to_have_text("Log in")
    # Signed in again, its chat is refused by the node, and the app says why.
    log_in(t, alice)
    t.goto(f"/app/#/chat/{conversation}")
    expect(t.locator(".chat-status")).to_contain_text(REMOVED, timeout=HANDSHAKE_TIMEOUT)

    # The phone and Bob still talk, both ways.
    text = f"Still here {b64e(os.urandom(4))}"
    send(a, text)
    expect(theirs(b).last).to_have_text(text)
    send(b, "Good to hear")
    expect(theirs(a).last).to_have_text("Good to hear")
    for device in (phone, other_phone):
        device.assert_clean()
