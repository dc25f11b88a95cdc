"""A patient on two devices: each app names its device when it opens the chat, and a lost device
removed from the other one is cut off: its sign-in ends, its chat link closes, and signed in
again it is refused by the chat server (docs/chat-protocol.md, "The keys on the ledger")."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from core.chat import IdentityKey
from core.encoding import b64e
from tests.browser.support import HTTP_TIMEOUT, Node, Phone, bearer, heading, open_phone
from tests.browser.test_pwa_chat import HANDSHAKE_TIMEOUT, grouped, log_in, matched_pair, open_chat_on_both, send

TERMS = ["HP:0001945", "HP:0002018"]  # Fever, Nausea: this module's own match
REMOVED = "This device was removed from your account: it cannot use the chat any more."
DEVICE_OF = """async (userId) => {
  const db = await new Promise((resolve, reject) => {
    const opening = indexedDB.open(`medledger-chat-${userId}`);
    opening.onsuccess = () => resolve(opening.result);
    opening.onerror = () => reject(opening.error);
  });
  const device = await new Promise((resolve) => {
    const reading = db.transaction('identity').objectStore('identity').get('device');
    reading.onsuccess = () => resolve(reading.result ?? null);
  });
  db.close();
  return device;
}"""


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


def device_id(page: Page, user_id: str) -> str:
    """The id the app made for this device, once its chat has started."""
    for _ in range(HANDSHAKE_TIMEOUT // 100):
        device = page.evaluate(DEVICE_OF, user_id)
        if device:
            return device
        page.wait_for_timeout(100)
    pytest.fail("the app never made a device id")


def token_of(page: Page) -> str:
    return page.evaluate("() => localStorage.getItem('medledger.token')")


def register_device_key(node: Node, token: str, device: str) -> None:
    """A key for `device` on the ledger, registered with that device's sign-in."""
    answer = requests.put(
        node.api("/chat/key"),
        json={"key": IdentityKey.generate().public.b64, "device": device},
        headers=bearer(token),
        timeout=HTTP_TIMEOUT,
    )
    assert answer.status_code == 200, answer.text


def test_a_removed_device_is_cut_off_and_the_other_one_chats_on(
    node: Node, phone: Phone, tablet: Phone, other_phone: Phone
) -> None:
    pair = matched_pair(node, "pat.devices", TERMS)
    alice, bob = pair.names["asking"], pair.names["answering"]
    alice_id, conversation = pair.ids["asking"], pair.conversation

    # Alice opens the conversation on her phone, Bob on his: the chat runs as before.
    _, alice_seen_as = open_chat_on_both(phone.page, other_phone.page, alice, bob, conversation)
    phone_device = device_id(phone.page, alice_id)

    # Her tablet signs in too: its app makes its own device id.
    log_in(tablet.page, alice)
    tablet.page.goto("/app/#/matches")
    tablet_device = device_id(tablet.page, alice_id)
    assert tablet_device != phone_device and len(tablet_device) == 22
    phone_token, tablet_token = token_of(phone.page), token_of(tablet.page)
    register_device_key(node, phone_token, phone_device)
    register_device_key(node, tablet_token, tablet_device)
    # A sign-in runs on one device: the tablet's cannot register a key for the phone.
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

    # The tablet's sign-in has ended: the app sends it to the sign-in page.
    assert (
        requests.get(node.api("/chat/devices"), headers=bearer(tablet_token), timeout=HTTP_TIMEOUT).status_code == 401
    )
    tablet.page.reload()
    expect(heading(tablet.page)).to_have_text("Log in")
    # Signed in again, its chat is refused by the node, and the app says why.
    log_in(tablet.page, alice)
    tablet.page.goto(f"/app/#/chat/{conversation}")
    expect(tablet.page.locator(".chat-status")).to_contain_text(REMOVED, timeout=HANDSHAKE_TIMEOUT)

    # The phone's sign-in is untouched: Alice and Bob still talk, both ways.
    text = f"Still here {b64e(os.urandom(4))}"
    send(phone.page, text)
    expect(other_phone.page.locator(".message-theirs .message-text").last).to_have_text(text)
    send(other_phone.page, "Good to hear")
    expect(phone.page.locator(".message-theirs .message-text").last).to_have_text("Good to hear")

    # Bob's app tells him, once, that Alice uses a device it had not seen (found on the ledger).
    for _ in range(HANDSHAKE_TIMEOUT // 100):
        seen = requests.get(node.api(f"/chat/keys/{alice_seen_as}"), headers=bearer(pair.tokens["answering"]),
                            timeout=HTTP_TIMEOUT).json()["key"]  # fmt: skip
        if all(d["height"] is not None for d in seen["devices"]):
            break
        other_phone.page.wait_for_timeout(100)
    [phone_key] = seen["devices"]
    other_phone.page.reload()
    notice = other_phone.page.locator(".device-notice")
    expect(notice).to_contain_text(f"{alice_seen_as} started using the chat on another device.")
    expect(notice.locator("li")).to_have_text([grouped(phone_key["fingerprint"])])
    notice.get_by_role("button", name="OK").click()
    expect(notice).to_be_hidden()
    other_phone.page.reload()
    expect(heading(other_phone.page)).to_have_text(f"Chat with {alice_seen_as}")
    expect(other_phone.page.locator(".chat-status")).to_contain_text("matches the ledger", timeout=HANDSHAKE_TIMEOUT)
    expect(notice).to_be_hidden()
    for device in (phone, other_phone):
        device.assert_clean()
