"""End to end: two patients find each other by their symptoms and talk, end-to-end encrypted (issue 6).

Two phone-sized Chromium contexts, one per patient. Both choose the same symptoms on the Symptoms
screen (search as you type) and opt in to being found; each sees the other on Matches with the
shared symptoms; one asks to connect, the other accepts; the browsers run the handshake over
Socket.IO and the two exchange messages both ways. Then the node's own database is read: the chat
rows hold ciphertext only, and neither a message nor a symptom appears anywhere in it.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import socketio
from playwright.sync_api import Browser, Page, Route, WebSocketRoute, expect

from core.chat import IdentityKey
from tests.browser.support import (
    HTTP_TIMEOUT,
    UI_TIMEOUT,
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

PASSWORD = "patient-chat-password"
SYMPTOMS = {"HP:0000613": ("photoph", "Photophobia"), "HP:0000360": ("tinnit", "Tinnitus")}
OTHER_SYMPTOMS = ["HP:0010780", "HP:0030828"]  # Hyperacusis, Wheezing: the second test's own match
LONE_SYMPTOM = "HP:0010780"  # Hyperacusis alone: the profile tests' own match
BLOCK_SYMPTOM = "HP:0030828"  # Wheezing alone: the blocking test's own match
OPT_IN = "Let others with the same symptoms find me"
SAVED_FINDABLE = "Saved. Patients with the same symptoms can now find you."
TYPING_DELAY = 40  # milliseconds between keys: faster than the app's search debounce
HANDSHAKE_TIMEOUT = 30_000  # milliseconds: identity keys, the ledger check and three relayed messages
MATCHES_SCREENSHOT = Path("/tmp/pwa-matches.png")
CHAT_SCREENSHOT = Path("/tmp/pwa-chat.png")
KEY_WARNING_SCREENSHOT = Path("/tmp/pwa-key-warning.png")
NAMESPACE = "/chat"
STORAGE_POLL_MS = 100
COUNT_CHAT_STORES = """async (userId) => {
  const db = await new Promise((resolve, reject) => {
    const opening = indexedDB.open(`medledger-chat-${userId}`);
    opening.onsuccess = () => resolve(opening.result);
    opening.onerror = () => reject(opening.error);
  });
  const counts = {};
  for (const name of db.objectStoreNames) {
    counts[name] = await new Promise((resolve) => {
      const counting = db.transaction(name).objectStore(name).count();
      counting.onsuccess = () => resolve(counting.result);
    });
  }
  db.close();
  return counts;
}"""
TAMPERED_TEXT = "A message could not be decrypted: it was altered or is not for this session."
REPLAYED_TEXT = "A message that was already received arrived again and was ignored."
PROFILE_SCREENSHOT = Path("/tmp/pwa-profile.png")


@pytest.fixture
def other_phone(browser: Browser, node: Node) -> Iterator[Phone]:
    """A second patient's phone."""
    with open_phone(browser, node) as phone:
        yield phone


# ---- helpers


def log_in(page: Page, username: str) -> None:
    log_in_app(page, username, PASSWORD)


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    expect(heading(page)).to_have_text(name)


def describe_symptoms_and_opt_in(page: Page) -> None:
    """On the Symptoms screen: find each symptom by typing, add it, give an age band, opt in, save."""
    open_tab(page, "Symptoms")
    search = page.locator("#symptom-search")
    for term_id, (typed, name) in SYMPTOMS.items():
        search.press_sequentially(typed, delay=TYPING_DELAY)
        page.locator(".symptom-option", has_text=term_id).click()
        expect(page.locator(".term-chip-name", has_text=name)).to_be_visible()
        expect(search).to_have_value("")
    page.select_option("#profile-age-band", "30-44")
    opt_in = page.get_by_role("switch", name=OPT_IN)
    expect(opt_in).to_have_attribute("aria-checked", "false")
    opt_in.click()
    expect(opt_in).to_have_attribute("aria-checked", "true")
    assert fits_the_phone(page)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_have_text(SAVED_FINDABLE)
    # What the node gives back is what was chosen.
    expect(page.locator(".term-chip-name")).to_have_text(sorted(name for _, name in SYMPTOMS.values()))
    expect(page.get_by_role("switch", name=OPT_IN)).to_have_attribute("aria-checked", "true")


def the_one_match(page: Page, shared: list[str]) -> str:
    """On Matches: exactly one match, showing the shared symptoms only; answers its pseudonym."""
    open_tab(page, "Matches")
    card = page.locator(".match-card")
    expect(card).to_have_count(1)
    expect(card.locator(".shared-symptoms .chip")).to_have_text(shared)
    return card.locator(".pseudonym").inner_text().strip()


def chat_ready(page: Page, peer: str) -> None:
    expect(heading(page)).to_have_text(f"Chat with {peer}")
    expect(page.locator(".chat-status")).to_contain_text("end-to-end encrypted", timeout=HANDSHAKE_TIMEOUT)
    expect(page.locator("#chat-message")).to_be_enabled()


def open_chat_on_both(a: Page, b: Page, alice: str, bob: str, conversation: str) -> tuple[str, str]:
    """Alice and Bob sign in on their phones and open their conversation until both are ready;
    answers how each sees the other (Bob as Alice sees him, Alice as Bob sees her)."""
    log_in(a, alice)
    log_in(b, bob)
    a.goto(f"/app/#/chat/{conversation}")
    b.goto(f"/app/#/chat/{conversation}")
    bob_seen_as, alice_seen_as = peer_in_heading(a), peer_in_heading(b)
    chat_ready(a, bob_seen_as)
    chat_ready(b, alice_seen_as)
    return bob_seen_as, alice_seen_as


def send(page: Page, text: str) -> None:
    page.fill("#chat-message", text)
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".message-mine .message-text").last).to_have_text(text)
    expect(page.locator("#chat-message")).to_have_value("")


def connect_through_the_api(node: Node, asking: str, answering: str) -> str:
    """The first patient finds the second among their exact matches and asks; the second accepts."""
    found = requests.get(node.api("/matches"), params={"mode": "exact"}, headers=bearer(asking), timeout=HTTP_TIMEOUT)
    assert found.status_code == 200 and len(found.json()["matches"]) == 1, found.text
    pseudonym = found.json()["matches"][0]["pseudonym"]
    asked = requests.post(node.api(f"/matches/{pseudonym}/connect"), headers=bearer(asking), timeout=HTTP_TIMEOUT)
    assert asked.status_code == 201, asked.text
    connection = asked.json()["connection"]["id"]
    accepted = requests.post(
        node.api(f"/connections/{connection}/accept"), headers=bearer(answering), timeout=HTTP_TIMEOUT
    )
    assert accepted.status_code == 200, accepted.text
    return str(connection)


def peer_in_heading(page: Page) -> str:
    expect(heading(page)).to_have_text(re.compile(r"^Chat with \S+$"))
    return heading(page).inner_text().removeprefix("Chat with ").strip()


@contextmanager
def chat_client(node: Node, token: str, device: str | None = None) -> Iterator[socketio.Client]:
    """A Python Socket.IO client of the chat, signed in with `token` (on `device`, if named)."""
    client = socketio.Client()
    auth = {"token": token, "device": device} if device else {"token": token}
    client.connect(node.url, namespaces=[NAMESPACE], auth=auth, transports=["websocket"], wait_timeout=10)
    try:
        yield client
    finally:
        client.disconnect()


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


def device_id(page: Page, user_id: object) -> str:
    """The id the app made for this device, once its chat has started."""
    for _ in range(HANDSHAKE_TIMEOUT // STORAGE_POLL_MS):
        device = page.evaluate(DEVICE_OF, str(user_id))
        if device:
            return device
        page.wait_for_timeout(STORAGE_POLL_MS)
    pytest.fail("the app never made a device id")


def wait_until_in_a_block(node: Node, token: str, pseudonym: str) -> None:
    """Until every current chat key of `pseudonym`'s devices is in a block."""
    for _ in range(HANDSHAKE_TIMEOUT // STORAGE_POLL_MS):
        keys = requests.get(node.api(f"/chat/keys/{pseudonym}"), headers=bearer(token), timeout=HTTP_TIMEOUT)
        if keys.status_code == 200 and all(d["height"] is not None for d in keys.json()["key"]["devices"]):
            return
        time.sleep(STORAGE_POLL_MS / 1000)
    pytest.fail("the chat keys never reached a block")


def chat_storage(page: Page, user_id: object, *, until_empty: bool = False) -> dict[str, int]:
    """How many entries each store of the user's chat database holds (waiting, if asked, for
    the conversation to be forgotten: logout does that in the background)."""
    for _ in range(UI_TIMEOUT // STORAGE_POLL_MS):
        counts = page.evaluate(COUNT_CHAT_STORES, str(user_id))
        if not until_empty or counts["messages"] == counts["sessions"] == 0:
            break
        page.wait_for_timeout(STORAGE_POLL_MS)
    return counts


def grouped(fingerprint: str) -> str:
    """A fingerprint as the app shows it: groups of four hex digits."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))


def flip_a_bit(text: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    raw[0] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


def database_dump(node: Node, conversation: str) -> tuple[str, list[tuple[str, str]]]:
    """The node's whole SQLite database as SQL text, and one conversation's stored rows (kind, body); read-only."""
    path = node.env["DATABASE_URL"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        dump = "\n".join(db.iterdump())
        rows = db.execute(
            "SELECT kind, body FROM chat_messages WHERE connection_id = ? ORDER BY id", (int(conversation),)
        ).fetchall()
    return dump, rows


# ---- the test


def test_two_patients_match_connect_and_chat(node: Node, phone: Phone, other_phone: Phone) -> None:
    suffix = secrets.token_hex(3)
    alice, bob = f"pat.chat.a{suffix}", f"pat.chat.b{suffix}"
    alice_id = register_patient(node, alice, PASSWORD, "Alice Chat")
    register_patient(node, bob, PASSWORD, "Bob Chat")
    hello = f"Hello from Alice {secrets.token_hex(4)}: does light hurt your eyes too?"
    answer = f"Bob here {secrets.token_hex(4)}: yes, and the ringing never stops."
    a, b = phone.page, other_phone.page

    # Both describe the same symptoms and opt in, each on their own phone.
    log_in(a, alice)
    describe_symptoms_and_opt_in(a)
    a.screenshot(path=str(PROFILE_SCREENSHOT), full_page=True)
    log_in(b, bob)
    describe_symptoms_and_opt_in(b)

    # Each sees the other, by pseudonym and shared symptoms only, in both modes.
    shared = sorted(name for _, name in SYMPTOMS.values())
    bob_seen_as = the_one_match(a, shared)
    alice_seen_as = the_one_match(b, shared)
    assert bob_seen_as and alice_seen_as and bob_seen_as != alice_seen_as
    for page in (a, b):  # neither name nor username is shown to the other
        for revealing in (alice, bob, "Alice Chat", "Bob Chat"):
            expect(page.locator("#app")).not_to_contain_text(revealing)
    # No score (it would say more about the other patient than the shared symptoms): a kind only.
    expect(a.locator(".match-card", has_text=bob_seen_as).locator(".match-kind")).to_have_text("Exact match")
    a.get_by_role("button", name="Similar").click()
    ranked = a.locator(".match-card", has_text=bob_seen_as)
    expect(ranked.locator(".match-kind")).to_have_text("Similar symptoms")
    expect(a.locator(".match-card")).not_to_contain_text("%")
    a.get_by_role("button", name="Exact").click()

    # Alice asks to connect; Bob sees the request and accepts, which opens the chat.
    card = a.locator(".match-card", has_text=bob_seen_as)
    card.get_by_role("button", name="Connect").click()
    expect(card.locator(".request-state")).to_contain_text("Request sent")
    assert fits_the_phone(a)
    a.screenshot(path=str(MATCHES_SCREENSHOT), full_page=True)
    b.goto("/app/#/records")
    open_tab(b, "Matches")
    request_card = b.locator(".match-request", has_text=alice_seen_as)
    request_card.get_by_role("button", name="Accept").click()
    expect(b).to_have_url(re.compile(r"/app/#/chat/[^/]+$"))
    conversation = b.url.rsplit("/", 1)[-1]

    # Alice learns of the answer live, and opens the conversation.
    link = a.locator("a.conversation", has_text=bob_seen_as)
    expect(link).to_be_visible()
    link.click()
    expect(a).to_have_url(re.compile(rf"/app/#/chat/{re.escape(conversation)}$"))

    # The handshake runs between the two browsers; then messages go both ways.
    chat_ready(a, bob_seen_as)
    chat_ready(b, alice_seen_as)
    expect(a.get_by_role("link", name="Matches", exact=True)).to_have_attribute("aria-current", "page")
    send(a, hello)
    expect(b.locator(".message-theirs .message-text")).to_have_text([hello])
    send(b, answer)
    expect(a.locator(".message-theirs .message-text")).to_have_text([answer])
    expect(a.locator(".message-text")).to_have_text([hello, answer])
    assert fits_the_phone(a) and fits_the_phone(b)
    a.screenshot(path=str(CHAT_SCREENSHOT), full_page=True)

    # The conversation survives a reload: the session and the messages are kept on the device.
    b.reload()
    chat_ready(b, alice_seen_as)
    expect(b.locator(".message-text")).to_have_text([hello, answer])
    expect(b.locator(".chat-errors li")).to_have_count(0)
    expect(a.locator(".chat-errors li")).to_have_count(0)

    # Away from the conversation, a new message shows as unread on Matches; reading it clears that.
    open_tab(b, "Matches")
    later = f"One more thing {secrets.token_hex(4)}"
    send(a, later)
    alices = b.locator("a.conversation", has_text=alice_seen_as)
    expect(alices.locator(".badge")).to_have_text("1")
    alices.click()
    expect(b.locator(".message-theirs .message-text").last).to_have_text(later)
    open_tab(b, "Matches")
    expect(alices).to_contain_text("Open chat")
    expect(alices.locator(".badge")).to_have_count(0)

    # The node stored ciphertext only: no message, no symptom, anywhere in its database.
    dump, rows = database_dump(node, conversation)
    for secret in (hello, answer, later, *SYMPTOMS, *(name for _, name in SYMPTOMS.values())):
        assert secret not in dump
    kinds = [kind for kind, _ in rows]
    # hello, reply, confirm; and a second hello when both apps opened at the same moment (the
    # hello of the patient who asked to connect wins: docs/chat-protocol.md, "Several devices").
    assert kinds.count("message") == 3 and kinds.count("handshake") in (3, 4), kinds
    assert kinds[: kinds.count("handshake")] == ["handshake"] * kinds.count("handshake"), kinds
    for kind, body in rows:
        stored = json.loads(body)
        if kind == "message":
            assert set(stored) == {"type", "v", "sid", "seq", "ct"} and stored["type"] == "msg", stored
        else:
            assert stored["type"] in ("hello", "reply", "confirm"), stored

    # Logging out deletes the conversation and its keys from the device; the identity key, the
    # device id and the peer's public keys (pin, devices) stay for this user's next login
    # (pwa/chat-store.js).
    assert chat_storage(a, alice_id)["messages"] == 3
    a.get_by_role("button", name="Log out").click()
    expect(heading(a)).to_have_text("Log in")
    assert chat_storage(a, alice_id, until_empty=True) == {
        "identity": 2, "peers": 2, "sessions": 0, "handshakes": 0, "messages": 0, "outbox": 0, "cursors": 0,
    }  # fmt: skip

    for device in (phone, other_phone):
        device.assert_clean()


def test_bad_messages_are_refused_and_a_new_device_key_warns_the_peer(
    node: Node, browser: Browser, phone: Phone, other_phone: Phone
) -> None:
    """Set up through the API, then: a tampered and a replayed message (sent with Alice's token
    from a Python Socket.IO client, as a compromised or buggy client could) are refused with a
    clear message and do not break the conversation; Bob on a new phone gets a new identity key,
    the browsers run a new handshake, and Alice is warned that his key changed."""
    suffix = secrets.token_hex(3)
    alice, bob = f"pat.keys.a{suffix}", f"pat.keys.b{suffix}"
    tokens, ids = {}, {}
    for username in (alice, bob):
        ids[username] = register_patient(node, username, PASSWORD, username)
        tokens[username] = token_for(node, username, PASSWORD)
        saved = requests.put(
            node.api("/profile"),
            json={"terms": OTHER_SYMPTOMS, "diagnosis": None, "age_band": None, "sex": None, "discoverable": True},
            headers=bearer(tokens[username]),
            timeout=HTTP_TIMEOUT,
        )
        assert saved.status_code == 200, saved.text
    conversation = connect_through_the_api(node, tokens[alice], tokens[bob])
    first, second, offline, from_new_phone = (
        f"{what} {secrets.token_hex(4)}" for what in ("First", "Second", "Offline", "New phone")
    )
    a, b = phone.page, other_phone.page

    bob_seen_as, alice_seen_as = open_chat_on_both(a, b, alice, bob, conversation)
    send(a, first)
    expect(b.locator(".message-theirs .message-text")).to_have_text([first])

    # A tampered copy of the next message, then a replay of the first one: both refused, each
    # with its own message; the next genuine message is read as usual.
    _, rows = database_dump(node, conversation)
    envelope = json.loads(next(body for kind, body in rows if kind == "message"))
    tampered = {**envelope, "seq": 1, "ct": flip_a_bit(envelope["ct"])}
    alice_device, bob_device = device_id(a, ids[alice]), device_id(b, ids[bob])
    with chat_client(node, tokens[alice], alice_device) as client:  # as if from Alice's phone
        for bad in (tampered, envelope):
            sent = client.call("send", {"conversation": conversation, "envelope": bad, "to_device": bob_device},
                               namespace=NAMESPACE)  # fmt: skip
            assert sent.get("ok") is True, sent
    errors = b.locator(".chat-errors li")
    expect(errors).to_have_text([TAMPERED_TEXT, REPLAYED_TEXT])
    send(a, second)
    expect(b.locator(".message-theirs .message-text")).to_have_text([first, second])
    assert fits_the_phone(b)

    # Offline, a message is kept on the phone, marked as not sent, and goes out once back online.
    a.context.set_offline(True)
    expect(a.locator(".chat-status")).to_contain_text("Offline", timeout=HANDSHAKE_TIMEOUT)
    a.fill("#chat-message", offline)
    a.get_by_role("button", name="Send").click()
    expect(a.locator(".message-pending")).to_contain_text("Not sent yet")
    expect(a.locator(".composer .notice-error")).to_contain_text("sent as soon as the connection is back")
    a.context.set_offline(False)
    expect(b.locator(".message-theirs .message-text")).to_have_text([first, second, offline], timeout=HANDSHAKE_TIMEOUT)
    expect(a.locator(".message-pending")).to_have_count(0)

    # Bob's old phone is gone; on a new one he has a new device, with its own key on the ledger.
    b.goto("about:blank")
    with open_phone(browser, node) as new:
        log_in(new.page, bob)
        new.page.goto(f"/app/#/chat/{conversation}")
        chat_ready(new.page, alice_seen_as)
        # The new phone shows the conversation from the time it joined, and says so.
        expect(new.page.locator(".joined-note")).to_contain_text("This device joined the conversation on")
        expect(new.page.locator(".message-text")).to_have_count(0)
        expect(a.locator(".joined-note")).to_be_hidden()
        send(new.page, from_new_phone)
        expect(a.locator(".message-theirs .message-text").last).to_have_text(from_new_phone)
        # The same device with another key (its key store was lost, or someone swapped it): Alice's
        # app warns, shows both fingerprints in full to compare with Bob another way, and nothing
        # can be sent meanwhile.
        new_device = device_id(new.page, ids[bob])
        new_token = new.page.evaluate("() => localStorage.getItem('medledger.token')")
        swapped = requests.put(node.api("/chat/key"), json={"key": IdentityKey.generate().public.b64,
                               "device": new_device}, headers=bearer(new_token), timeout=HTTP_TIMEOUT)  # fmt: skip
        assert swapped.status_code == 200, swapped.text
        keys = requests.get(
            node.api(f"/chat/keys/{bob_seen_as}"), headers=bearer(tokens[alice]), timeout=HTTP_TIMEOUT
        ).json()["key"]
        previous = next(k for k in keys["previous"] if k["device"] == new_device)
        current = next(k for k in keys["devices"] if k["device"] == new_device)
        wait_until_in_a_block(node, tokens[alice], bob_seen_as)
        a.reload()
        warning = a.locator(".key-warning")
        expect(warning).to_contain_text(f"{bob_seen_as}\u2019s chat key has changed", timeout=HANDSHAKE_TIMEOUT)
        expect(warning.locator(".fingerprint-previous")).to_have_text(grouped(previous["fingerprint"]))
        expect(warning.locator(".fingerprint-current")).to_have_text(grouped(current["fingerprint"]))
        expect(a.locator("#chat-message")).to_be_disabled()
        assert fits_the_phone(a)
        a.screenshot(path=str(KEY_WARNING_SCREENSHOT), full_page=True)
        # The warning is kept on the device: a reload does not make it go away.
        a.reload()
        expect(warning).to_contain_text(f"{bob_seen_as}\u2019s chat key has changed")
        expect(a.locator(".chat-status")).to_contain_text("matches the ledger", timeout=HANDSHAKE_TIMEOUT)
        expect(a.locator("#chat-message")).to_be_disabled()
        a.get_by_role("button", name="I trust the new key").click()
        expect(warning).to_be_hidden()
        expect(a.locator("#chat-message")).to_be_enabled()
        new.assert_clean()

    # One tab at a time runs the chat: a second tab waits, and takes over when the first closes.
    other_tab = a.context.new_page()
    other_tab.on("pageerror", lambda error: phone.errors.append(str(error)))
    other_tab.goto(f"/app/#/chat/{conversation}")
    expect(other_tab.locator(".chat-status")).to_contain_text("open in another tab")
    a.close()
    chat_ready(other_tab, bob_seen_as)
    expect(other_tab.locator(".message-text")).to_have_text([first, second, offline, from_new_phone])

    keys = requests.get(node.api(f"/chat/keys/{bob_seen_as}"), headers=bearer(tokens[alice]), timeout=HTTP_TIMEOUT)
    assert keys.status_code == 200 and len(keys.json()["key"]["previous"]) == 1, keys.text
    assert len(keys.json()["key"]["devices"]) == 2, keys.text  # the old phone and the new one
    for device in (phone, other_phone):
        device.assert_clean()


def test_invalid_profile_input_is_explained_beside_its_field(node: Node, phone: Phone) -> None:
    username = f"pat.form.{secrets.token_hex(3)}"
    register_patient(node, username, PASSWORD, username)
    page = phone.page
    log_in(page, username)
    open_tab(page, "Symptoms")
    save = page.get_by_role("button", name="Save")

    # No symptom chosen: nothing is sent.
    save.click()
    expect(page.locator("#profile-terms-error")).to_have_text("Please choose at least one symptom.")
    expect(page.locator("#symptom-search")).to_be_focused()

    # A search that finds nothing says so.
    page.locator("#symptom-search").press_sequentially("qqzzx", delay=TYPING_DELAY)
    expect(page.locator(".search-note")).to_contain_text("No symptom matches")
    expect(page.locator(".symptom-option")).to_have_count(0)
    page.fill("#symptom-search", "")
    page.locator("#symptom-search").press_sequentially("hyperacus", delay=TYPING_DELAY)
    page.locator(".symptom-option", has_text=LONE_SYMPTOM).click()
    expect(page.locator("#profile-terms-error")).to_be_hidden()

    # Not shaped like an ICD-10-CM code: refused in the app.
    page.fill("#profile-diagnosis", "12345")
    save.click()
    expect(page.locator("#profile-diagnosis-error")).to_contain_text("This is not an ICD-10-CM code")
    expect(page.locator("#profile-diagnosis")).to_have_attribute("aria-invalid", "true")

    # Shaped like one but not in ICD-10-CM: the node refuses, and the app says so beside the field.
    page.fill("#profile-diagnosis", "Z99.999")
    save.click()
    expect(page.locator("#profile-diagnosis-error")).to_contain_text("This diagnosis code was not accepted")
    expect(page.locator("#profile-diagnosis-error")).to_contain_text("Z99.999")
    assert fits_the_phone(page)

    # A real one is saved and named.
    page.fill("#profile-diagnosis", "j45.909")
    save.click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_contain_text("Saved.")
    expect(page.locator("#profile-diagnosis")).to_have_value("J45.909")
    expect(page.locator("#app form")).to_contain_text("Unspecified asthma, uncomplicated")
    phone.assert_clean()


def test_withdrawing_takes_effect_at_once(node: Node, phone: Phone) -> None:
    suffix = secrets.token_hex(3)
    username, other = f"pat.gone.{suffix}", f"pat.stay.{suffix}"
    register_patient(node, username, PASSWORD, username)
    register_patient(node, other, PASSWORD, other)
    others_token = token_for(node, other, PASSWORD)
    profile = {"terms": [LONE_SYMPTOM], "diagnosis": None, "age_band": None, "sex": None, "discoverable": True}
    saved = requests.put(node.api("/profile"), json=profile, headers=bearer(others_token), timeout=HTTP_TIMEOUT)
    assert saved.status_code == 200, saved.text
    page = phone.page
    log_in(page, username)
    open_tab(page, "Symptoms")
    page.locator("#symptom-search").press_sequentially("hyperacus", delay=TYPING_DELAY)
    page.locator(".symptom-option", has_text=LONE_SYMPTOM).click()
    page.get_by_role("switch", name=OPT_IN).click()
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_have_text(SAVED_FINDABLE)
    assert len(exact_matches(node, others_token)) == 1

    page.get_by_role("button", name="Withdraw").click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_contain_text("Nobody can find you any more")
    assert exact_matches(node, others_token) == []  # at once: no delay, no background job
    expect(page.locator(".term-chip-name")).to_have_count(0)
    expect(page.get_by_role("switch", name=OPT_IN)).to_have_attribute("aria-checked", "false")
    expect(page.get_by_role("button", name="Withdraw")).to_have_count(0)
    phone.assert_clean()


def exact_matches(node: Node, token: str) -> list[dict[str, object]]:
    found = requests.get(node.api("/matches"), params={"mode": "exact"}, headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert found.status_code == 200, found.text
    return found.json()["matches"]


def test_blocking_hides_both_from_each_other(node: Node, phone: Phone) -> None:
    suffix = secrets.token_hex(3)
    username, other = f"pat.blocks.{suffix}", f"pat.blocked.{suffix}"
    tokens = {}
    for name in (username, other):
        register_patient(node, name, PASSWORD, name)
        tokens[name] = token_for(node, name, PASSWORD)
        profile = {"terms": [BLOCK_SYMPTOM], "diagnosis": None, "age_band": None, "sex": None, "discoverable": True}
        saved = requests.put(node.api("/profile"), json=profile, headers=bearer(tokens[name]), timeout=HTTP_TIMEOUT)
        assert saved.status_code == 200, saved.text
    page = phone.page
    log_in(page, username)
    pseudonym = the_one_match(page, ["Wheezing"])

    card = page.locator(".match-card", has_text=pseudonym)
    card.get_by_role("button", name="Block").click()
    expect(card.get_by_role("group", name=f"Block {pseudonym}?")).to_be_visible()
    assert fits_the_phone(page)
    card.get_by_role("button", name="Block", exact=True).click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_have_text(f"You blocked {pseudonym}.")
    expect(page.locator(".match-card")).to_have_count(0)
    assert exact_matches(node, tokens[other]) == []
    phone.assert_clean()


# ---- delivery in order, gaps, a shared phone, Web Locks, blocking

GAP_SYMPTOMS = ["HP:0002315"]  # Headache alone: the gap test's own match
LOCKS_SYMPTOMS = ["HP:0012378"]  # Fatigue alone: the Web Locks test's own match
REQUEST_BLOCK_SYMPTOMS = ["HP:0002018"]  # Nausea alone
CONVERSATION_BLOCK_SYMPTOMS = ["HP:0001945"]  # Fever alone
LOST_TEXT = "Some messages could not be read"
EVENT_FRAME = "42/chat,"
ACK_FRAME = re.compile(r"^43/chat,(\d+)(.*)$", re.DOTALL)
SEND_FRAME = re.compile(r'^42/chat,(\d+)\["send",')
LEDGER_SYMPTOMS = ["HP:0001250"]  # Seizure alone: the ledger test's own match
LEDGER_MISMATCH_TEXT = "does not match the public ledger"
WAITING_FOR_LEDGER = "waiting for the ledger"
RESEND_SYMPTOMS = ["HP:0002017"]  # Nausea and vomiting: the resend test's own match
ACK_TIMEOUT = 30_000  # milliseconds: more than the app's 15 s wait for an answer
OUTBOX_AND_SESSION = """async ([userId, conversation]) => {
  const db = await new Promise((resolve, reject) => {
    const opening = indexedDB.open(`medledger-chat-${userId}`);
    opening.onsuccess = () => resolve(opening.result);
    opening.onerror = () => reject(opening.error);
  });
  const read = (store, how) => new Promise((resolve) => {
    const request = how(db.transaction(store).objectStore(store));
    request.onsuccess = () => resolve(request.result);
  });
  const outbox = await read('outbox', (store) => store.getAll());
  // The session of the lane with the peer's (one) device.
  const keys = await read('sessions', (store) => store.getAllKeys());
  const lane = keys.find((key) => String(key).startsWith(`${conversation}|peer|`) && !String(key).includes('#'));
  const session = lane ? await read('sessions', (store) => store.get(lane)) : null;
  db.close();
  return {
    outbox: outbox.map((item) => ({ cid: item.cid, seq: item.envelope?.seq ?? null })),
    sendSeq: session?.sendSeq ?? null,
  };
}"""
CURSOR_OF = """async ([userId, conversation]) => {
  const db = await new Promise((resolve, reject) => {
    const opening = indexedDB.open(`medledger-chat-${userId}`);
    opening.onsuccess = () => resolve(opening.result);
    opening.onerror = () => reject(opening.error);
  });
  // The cursor of the lane with the peer's (one) device.
  const cursor = await new Promise((resolve) => {
    const reading = db.transaction('cursors').objectStore('cursors').openCursor();
    let found = 0;
    reading.onsuccess = () => {
      const at = reading.result;
      if (!at) {
        resolve(found);
        return;
      }
      if (String(at.key).startsWith(`${conversation}|peer|`)) {
        found = at.value;
      }
      at.continue();
    };
  });
  db.close();
  return cursor;
}"""


class LossyRelay:
    """Sits between one page and the node's Socket.IO endpoint (Playwright's WebSocket routing):
    passes every frame, except that it can lose the next chat message the node relays to the
    page (as a relay that drops one would), hide the lost ones from "history" answers too, and
    lose the node's answer to the page's next "send" (the message itself gets through)."""

    def __init__(self, page: Page) -> None:
        self.lose_next = False
        self.hide_from_history = False
        self.lose_send_answer = False
        self.lost: list[int] = []
        self.lost_answers: set[str] = set()
        page.route_web_socket(re.compile(r"/socket\.io/"), self._route)

    def _route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(frame: str | bytes) -> None:
            send = SEND_FRAME.match(frame) if isinstance(frame, str) else None
            if send and self.lose_send_answer:
                self.lose_send_answer = False
                self.lost_answers.add(send.group(1))
            server.send(frame)

        ws.on_message(from_page)

        def from_server(frame: str | bytes) -> None:
            passed = self._pass(frame) if isinstance(frame, str) else frame
            if passed is not None:
                ws.send(passed)

        server.on_message(from_server)

    def _pass(self, frame: str) -> str | None:
        if frame.startswith(EVENT_FRAME):
            event, payload = json.loads(frame.removeprefix(EVENT_FRAME))[:2]
            if event == "message" and self.lose_next:
                self.lose_next = False
                self.lost.append(payload["id"])
                return None
        ack = ACK_FRAME.match(frame)
        if ack and ack.group(1) in self.lost_answers:
            self.lost_answers.discard(ack.group(1))
            return None
        if ack and self.hide_from_history and self.lost:
            answer = json.loads(ack.group(2))
            if isinstance(answer[0], dict) and "messages" in answer[0]:
                answer[0]["messages"] = [item for item in answer[0]["messages"] if item["id"] not in self.lost]
                return f"43/chat,{ack.group(1)}{json.dumps(answer)}"
        return frame


@dataclass
class Pair:
    """Two patients with the same symptoms, connected through the API; each dict by "asking"/"answering"."""

    names: dict[str, str]
    ids: dict[str, str]
    tokens: dict[str, str]
    conversation: str


def findable_pair(node: Node, prefix: str, terms: list[str]) -> Pair:
    """Two patients with the same symptoms, both findable, not connected (no conversation yet)."""
    suffix = secrets.token_hex(3)
    names = {"asking": f"{prefix}.a{suffix}", "answering": f"{prefix}.b{suffix}"}
    ids, tokens = {}, {}
    for role, username in names.items():
        ids[role] = register_patient(node, username, PASSWORD, username)
        tokens[role] = token_for(node, username, PASSWORD)
        profile = {"terms": terms, "diagnosis": None, "age_band": None, "sex": None, "discoverable": True}
        saved = requests.put(node.api("/profile"), json=profile, headers=bearer(tokens[role]), timeout=HTTP_TIMEOUT)
        assert saved.status_code == 200, saved.text
    return Pair(names, ids, tokens, "")


def matched_pair(node: Node, prefix: str, terms: list[str]) -> Pair:
    pair = findable_pair(node, prefix, terms)
    pair.conversation = connect_through_the_api(node, pair.tokens["asking"], pair.tokens["answering"])
    return pair


def wait_for_cursor(page: Page, user_id: object, conversation: str, at_least: int) -> None:
    """Until the page has handled (and stored its cursor past) the item `at_least`."""
    for _ in range(HANDSHAKE_TIMEOUT // STORAGE_POLL_MS):
        if page.evaluate(CURSOR_OF, [str(user_id), conversation]) >= at_least:
            return
        page.wait_for_timeout(STORAGE_POLL_MS)
    pytest.fail(f"the page never handled item {at_least}")


def test_a_lost_message_is_fetched_again_and_a_hole_starts_a_new_session(
    node: Node, phone: Phone, other_phone: Phone
) -> None:
    """The relay loses a message on its way to Bob: the next one is ahead of its counter, so Bob's
    app fetches what is missing and shows both, in order. Then one is lost for good (the node's
    history hides it too): Bob is told that some messages could not be read, the browsers run a
    fresh handshake on their own, and the conversation goes on under the new session. Last, Bob's
    session expires while the app is closed: the next start wipes his conversation off the phone."""
    pair = matched_pair(node, "pat.gap", GAP_SYMPTOMS)
    names, conversation = pair.names, pair.conversation
    alice_id, bob_id = pair.ids["asking"], pair.ids["answering"]
    texts = [f"{what} {secrets.token_hex(4)}" for what in ("One", "Two", "Three", "Four", "Five", "Six")]
    a, b = phone.page, other_phone.page
    relay = LossyRelay(b)

    _, alice_seen_as = open_chat_on_both(a, b, names["asking"], names["answering"], conversation)
    bobs = b.locator(".message-theirs .message-text")

    # Lost once: found again through "history", and read in order.
    relay.lose_next = True
    send(a, texts[0])
    send(a, texts[1])
    expect(bobs).to_have_text(texts[:2])
    assert len(relay.lost) == 1
    expect(b.locator(".chat-errors li")).to_have_count(0)

    # Lost for good: told once, and a new session is set up without anyone doing anything.
    _, rows = database_dump(node, conversation)
    handshakes_before = [kind for kind, _ in rows].count("handshake")
    relay.lose_next = relay.hide_from_history = True
    send(a, texts[2])
    send(a, texts[3])
    expect(b.locator(".chat-errors li")).to_have_count(1)
    expect(b.locator(".chat-errors li")).to_contain_text(LOST_TEXT)
    chat_ready(b, alice_seen_as)
    path = node.env["DATABASE_URL"].removeprefix("sqlite:///")
    for _ in range(HANDSHAKE_TIMEOUT // STORAGE_POLL_MS):
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            handshake_ids = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM chat_messages WHERE connection_id = ? AND kind = 'handshake' ORDER BY id",
                    (int(conversation),),
                )
            ]
        if len(handshake_ids) == handshakes_before + 3:
            break
        a.wait_for_timeout(STORAGE_POLL_MS)
    assert len(handshake_ids) == handshakes_before + 3, handshake_ids
    wait_for_cursor(a, alice_id, conversation, handshake_ids[-1])  # Alice took the confirm: new session
    send(a, texts[4])
    expect(bobs).to_have_text([*texts[:2], texts[4]])
    send(b, texts[5])
    expect(a.locator(".message-theirs .message-text")).to_have_text([texts[5]])
    expect(a.locator(".chat-errors li")).to_have_count(0)
    expect(b.locator(".chat-errors li")).to_have_count(1)

    # A shared phone: Bob's session expires while the app is closed; the next start wipes his chat.
    assert chat_storage(b, bob_id)["messages"] == 4
    b.evaluate("() => localStorage.setItem('medledger.expires_at', '2000-01-01T00:00:00Z')")
    b.reload()
    expect(heading(b)).to_have_text("Log in")
    assert chat_storage(b, bob_id, until_empty=True) == {
        "identity": 2, "peers": 2, "sessions": 0, "handshakes": 0, "messages": 0, "outbox": 0, "cursors": 0,
    }  # fmt: skip
    assert b.evaluate("() => localStorage.getItem('medledger-chat-users')") is None
    for device in (phone, other_phone):
        device.assert_clean()


def test_the_chat_refuses_to_run_without_web_locks(node: Node, phone: Phone) -> None:
    """Without navigator.locks two tabs could seal with copies of one session (one counter, one
    nonce, twice): the chat says so and does nothing, not even make a key."""
    pair = matched_pair(node, "pat.locks", LOCKS_SYMPTOMS)
    names, tokens, conversation = pair.names, pair.tokens, pair.conversation
    page = phone.page
    page.context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined, configurable: true });"
    )
    log_in(page, names["asking"])
    page.goto(f"/app/#/chat/{conversation}")
    expect(page.locator(".chat-problem")).to_contain_text("lacks Web Locks")
    expect(page.locator(".chat-status")).to_contain_text("cannot run in this browser")
    expect(page.locator("#chat-message")).to_be_disabled()
    own = requests.get(node.api("/chat/key"), headers=bearer(tokens["asking"]), timeout=HTTP_TIMEOUT)
    assert own.status_code == 200 and own.json()["key"] is None, own.text
    phone.assert_clean()


def test_blocking_from_a_request_and_from_a_conversation(node: Node, phone: Phone, other_phone: Phone) -> None:
    # A request waiting for an answer: blocked (after a confirmation) instead of answered.
    suffix = secrets.token_hex(3)
    asking, answering = f"pat.rqb.a{suffix}", f"pat.rqb.b{suffix}"
    tokens = {}
    for username in (asking, answering):
        register_patient(node, username, PASSWORD, username)
        tokens[username] = token_for(node, username, PASSWORD)
        profile = {
            "terms": REQUEST_BLOCK_SYMPTOMS, "diagnosis": None, "age_band": None, "sex": None, "discoverable": True,
        }  # fmt: skip
        saved = requests.put(node.api("/profile"), json=profile, headers=bearer(tokens[username]), timeout=HTTP_TIMEOUT)
        assert saved.status_code == 200, saved.text
    [found] = exact_matches(node, tokens[asking])
    asked = requests.post(
        node.api(f"/matches/{found['pseudonym']}/connect"), headers=bearer(tokens[asking]), timeout=HTTP_TIMEOUT
    )
    assert asked.status_code == 201, asked.text
    page = phone.page
    log_in(page, answering)
    open_tab(page, "Matches")
    request_card = page.locator(".match-request")
    expect(request_card).to_have_count(1)
    request_card.get_by_role("button", name="Block").click()
    expect(request_card.get_by_role("group", name=re.compile(r"^Block \S+\?$"))).to_be_visible()
    request_card.get_by_role("button", name="Block", exact=True).click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_have_text(re.compile(r"^You blocked \S+\.$"))
    expect(page.locator(".match-request")).to_have_count(0)
    assert exact_matches(node, tokens[asking]) == []

    # An open conversation: the Block action ends it and goes back to Matches.
    pair = matched_pair(node, "pat.cvb", CONVERSATION_BLOCK_SYMPTOMS)
    names, pair_tokens, conversation = pair.names, pair.tokens, pair.conversation
    other = other_phone.page
    log_in(other, names["answering"])
    other.goto(f"/app/#/chat/{conversation}")
    peer = peer_in_heading(other)
    other.locator(".chat-head").get_by_role("button", name="Block").click()
    expect(other.get_by_role("group", name=f"Block {peer}?")).to_be_visible()
    assert fits_the_phone(other)
    other.get_by_role("group", name=f"Block {peer}?").get_by_role("button", name="Block", exact=True).click()
    expect(heading(other)).to_have_text("Matches")
    expect(other.locator("#app .view")).to_contain_text(f"You blocked {peer}.")
    assert exact_matches(node, pair_tokens["asking"]) == []
    for device in (phone, other_phone):
        device.assert_clean()


def test_a_message_whose_answer_was_lost_is_sent_again_once(node: Node, phone: Phone, other_phone: Phone) -> None:
    """The node stores Alice's message but its answer never reaches her: the message stays in her
    outbox, sealed, with its counter already stored; sent again later with the same cid, the node
    recognises it, so Bob reads it once, and the next one follows in order."""
    pair = matched_pair(node, "pat.resend", RESEND_SYMPTOMS)
    first, second = (f"{what} {secrets.token_hex(4)}" for what in ("Once", "Then"))
    a, b = phone.page, other_phone.page
    relay = LossyRelay(a)
    open_chat_on_both(a, b, pair.names["asking"], pair.names["answering"], pair.conversation)

    relay.lose_send_answer = True
    a.fill("#chat-message", first)
    a.get_by_role("button", name="Send").click()
    expect(b.locator(".message-theirs .message-text")).to_have_text([first])
    # Before any answer: the sealed message and the advanced counter are both stored.
    kept = a.evaluate(OUTBOX_AND_SESSION, [str(pair.ids["asking"]), pair.conversation])
    assert len(kept["outbox"]) == 1 and kept["outbox"][0]["cid"], kept
    assert kept["sendSeq"] == kept["outbox"][0]["seq"] + 1, kept
    expect(a.locator(".composer .notice-error")).to_contain_text("did not answer in time", timeout=ACK_TIMEOUT)
    expect(a.locator(".message-pending")).to_have_count(1)

    send(a, second)
    expect(b.locator(".message-theirs .message-text")).to_have_text([first, second])
    expect(a.locator(".message-pending")).to_have_count(0)
    expect(a.locator(".message-mine .message-text")).to_have_text([first, second])
    _, rows = database_dump(node, pair.conversation)
    assert [kind for kind, _ in rows].count("message") == 2, rows
    assert a.evaluate(OUTBOX_AND_SESSION, [str(pair.ids["asking"]), pair.conversation])["outbox"] == []
    expect(b.locator(".chat-errors li")).to_have_count(0)
    for device in (phone, other_phone):
        device.assert_clean()


def test_the_peers_key_is_checked_on_the_public_ledger(node: Node, phone: Phone, other_phone: Phone) -> None:
    """Alice's node first says Bob's key is in no block yet: her app waits for the ledger (and says
    so) before trusting it. Bob's node serves a block whose chat_key transaction does not name
    Alice: his app refuses her key with a clear message and answers no handshake."""
    pair = matched_pair(node, "pat.ledger", LEDGER_SYMPTOMS)
    a, b = phone.page, other_phone.page
    not_in_a_block = {"left": 2}

    def key_not_in_a_block_yet(route: Route) -> None:
        answer = route.fetch()
        if answer.status != 200 or not_in_a_block["left"] == 0:
            route.fulfill(response=answer)
            return
        not_in_a_block["left"] -= 1
        body = answer.json()
        for key in (body["key"], *body["key"]["devices"]):
            key["height"] = None
        route.fulfill(response=answer, json=body)

    def another_subject(route: Route) -> None:
        answer = route.fetch()
        body = answer.json()
        for tx in body.get("transactions", []):
            if tx.get("kind") == "chat_key":
                tx["payload"]["subject"] = "0" * 64
        route.fulfill(response=answer, json=body)

    a.route(re.compile(r"/api/v1/chat/keys/"), key_not_in_a_block_yet)
    b.route(re.compile(r"/api/v1/chain/blocks/\d+$"), another_subject)
    log_in(b, pair.names["answering"])
    b.goto(f"/app/#/chat/{pair.conversation}")
    alice_seen_as = peer_in_heading(b)
    log_in(a, pair.names["asking"])
    a.goto(f"/app/#/chat/{pair.conversation}")
    bob_seen_as = peer_in_heading(a)

    # Alice: "waiting for the ledger" while the key is in no block, then on with the handshake.
    expect(a.locator(".chat-status")).to_contain_text(WAITING_FOR_LEDGER, timeout=HANDSHAKE_TIMEOUT)
    expect(a.locator(".chat-status")).to_contain_text("waiting for the other side", timeout=HANDSHAKE_TIMEOUT)
    assert not_in_a_block["left"] == 0

    # Bob: Alice's key is not what the ledger says; no reply goes out, nothing can be sent.
    expect(b.locator(".chat-problem")).to_contain_text(LEDGER_MISMATCH_TEXT, timeout=HANDSHAKE_TIMEOUT)
    expect(b.locator(".chat-status")).not_to_contain_text("matches the ledger")
    expect(b.locator("#chat-message")).to_be_disabled()
    b.wait_for_timeout(1_000)
    _, rows = database_dump(node, pair.conversation)
    assert [json.loads(body)["type"] for _, body in rows] == ["hello"], rows
    expect(a.locator(".chat-status")).not_to_contain_text("end-to-end encrypted")
    assert bob_seen_as and alice_seen_as
    for device in (phone, other_phone):
        device.assert_clean()


# ---- unblocking, and a long conversation shown a page at a time

UNBLOCK_SYMPTOMS = ["HP:0000989"]  # Pruritus alone: the unblocking test's own match
PAGING_SYMPTOMS = ["HP:0002019"]  # Constipation alone: the paging test's own match
NOT_BLOCKED = "You have not blocked this patient."
NOBODY_BLOCKED = "You have not blocked anyone."
SHOW_OLDER = "Show older messages"
MESSAGES_PAGE = 100  # messages the chat shows at first, and again each time older ones are asked for
MESSAGES_EACH = 110  # sent by each patient: more than a page, less than the node's 120 a minute
SEND_MANY = """async (texts) => {
  const input = document.querySelector('#chat-message');
  const sendButton = input.form.querySelector('button[type=submit]');
  const problem = input.form.querySelector('.notice-error');
  const sent = () => new Promise((resolve, reject) => {
    const check = () => {
      if (!problem.hidden) {
        reject(new Error(problem.textContent));
      } else if (input.value === '' && !sendButton.disabled) {
        resolve();
      } else {
        setTimeout(check, 5);
      }
    };
    check();
  });
  for (const text of texts) {
    input.value = text;
    input.form.requestSubmit();
    await sent();
  }
}"""


def test_a_blocked_patient_is_listed_on_matches_and_can_be_unblocked(node: Node, phone: Phone) -> None:
    """Matches lists the patients one blocked, at the bottom. Unblocking asks first; one already
    unblocked elsewhere is explained; once unblocked, the two are each other's match again."""
    pair = findable_pair(node, "pat.unblock", UNBLOCK_SYMPTOMS)
    token = pair.tokens["asking"]
    page = phone.page
    log_in(page, pair.names["asking"])
    pseudonym = the_one_match(page, ["Pruritus"])
    blocked_section = page.get_by_role("region", name="Blocked patients")
    expect(blocked_section).to_contain_text(NOBODY_BLOCKED)

    page.locator(".match-card", has_text=pseudonym).get_by_role("button", name="Block").click()
    page.locator(".match-card").get_by_role("button", name="Block", exact=True).click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_have_text(f"You blocked {pseudonym}.")
    expect(page.locator(".match-card")).to_have_count(0)
    card = blocked_section.locator(".blocked-card")
    expect(card).to_have_count(1)
    expect(card.locator(".pseudonym")).to_have_text(pseudonym)

    # Asked first; cancelling changes nothing.
    card.get_by_role("button", name="Unblock").click()
    question = card.get_by_role("group", name=f"Unblock {pseudonym}?")
    expect(question).to_be_visible()
    assert fits_the_phone(page)
    question.get_by_role("button", name="Cancel").click()
    expect(question).to_have_count(0)
    expect(card.get_by_role("button", name="Unblock")).to_be_focused()

    # Unblocked behind the app's back: the node's answer is shown on the card.
    lifted = requests.delete(node.api(f"/blocks/{pseudonym}"), headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert lifted.status_code == 204, lifted.text
    card.get_by_role("button", name="Unblock").click()
    card.get_by_role("group", name=f"Unblock {pseudonym}?").get_by_role("button", name="Unblock").click()
    expect(card.locator(".notice-error")).to_have_text(NOT_BLOCKED)

    blocked = requests.post(
        node.api("/blocks"), json={"pseudonym": pseudonym}, headers=bearer(token), timeout=HTTP_TIMEOUT
    )
    assert blocked.status_code == 201, blocked.text
    page.reload()
    expect(heading(page)).to_have_text("Matches")
    expect(card).to_have_count(1)
    expect(page.locator(".match-card")).to_have_count(0)
    card.get_by_role("button", name="Unblock").click()
    card.get_by_role("group", name=f"Unblock {pseudonym}?").get_by_role("button", name="Unblock").click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_have_text(f"You unblocked {pseudonym}.")
    expect(blocked_section).to_contain_text(NOBODY_BLOCKED)
    expect(page.locator(".match-card .pseudonym")).to_have_text([pseudonym])
    assert len(exact_matches(node, pair.tokens["answering"])) == 1
    phone.assert_clean()


def test_a_long_conversation_shows_the_newest_messages_first(node: Node, phone: Phone, other_phone: Phone) -> None:
    """Both patients write more than a page of messages. Opened again, Alice's chat shows the
    newest hundred; "Show older messages" reveals a hundred more each time, from the phone's own
    store (no request), leaving the message that was on top where it was; new ones still come in."""
    pair = matched_pair(node, "pat.page", PAGING_SYMPTOMS)
    a, b = phone.page, other_phone.page
    bob_seen_as, _ = open_chat_on_both(a, b, pair.names["asking"], pair.names["answering"], pair.conversation)
    alices = [f"Alice {n:03d}" for n in range(MESSAGES_EACH)]
    bobs = [f"Bob {n:03d}" for n in range(MESSAGES_EACH)]
    texts = alices + bobs
    a.evaluate(SEND_MANY, alices)
    expect(b.locator(".message-theirs")).to_have_count(MESSAGES_EACH)
    b.evaluate(SEND_MANY, bobs)
    shown = a.locator(".message-list .message-text")
    # On screen while they arrive: every one of them is added.
    expect(shown).to_have_count(len(texts))
    older = a.get_by_role("button", name=SHOW_OLDER)
    expect(older).to_be_hidden()

    a.reload()
    chat_ready(a, bob_seen_as)
    expect(shown).to_have_text(texts[-MESSAGES_PAGE:])
    requested: list[str] = []
    a.on("request", lambda request: requested.append(request.url))
    older.scroll_into_view_if_needed()
    top = shown.first.bounding_box()
    older.click()
    expect(shown).to_have_text(texts[-2 * MESSAGES_PAGE :])
    moved = shown.nth(MESSAGES_PAGE).bounding_box()
    assert top and moved and abs(moved["y"] - top["y"]) <= 1, (top, moved)
    older.click()
    expect(shown).to_have_text(texts)
    expect(older).to_be_hidden()
    assert requested == []
    assert fits_the_phone(a)

    live = f"Still here {secrets.token_hex(4)}"
    send(b, live)
    expect(shown).to_have_count(len(texts) + 1)
    expect(shown.last).to_have_text(live)
    for device in (phone, other_phone):
        device.assert_clean()
