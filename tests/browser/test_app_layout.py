"""End to end: the app's shell on a phone and on a desktop, who sees which side of a request to
connect, and the chat as one screen (Enter sends, new messages come into view, the composer and
an emergency banner leave the conversation on screen).

The header is one row on a phone; the five tabs along the bottom each show an icon and a
one-line label, the current one marked with aria-current. A request to connect reads "Request
sent" to the patient who asked and "Wants to connect", with Accept and Decline, to the other.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.support import (
    HTTP_TIMEOUT,
    PHONE,
    Node,
    Phone,
    bearer,
    doctor_token,
    fits_the_phone,
    heading,
    open_phone,
    register_patient,
)
from tests.browser.test_pwa_chat import (
    PASSWORD,
    SEND_MANY,
    findable_pair,
    log_in,
    matched_pair,
    open_chat_on_both,
    open_tab,
)

DESKTOP = {"width": 1366, "height": 768}
ONE_ROW = 72  # pixels: a row of 48 px tap targets with its padding; two rows need 100 or more
LONG_NAME = "Paula Evangelina Okonkwo-Henderson"
TABS = ["My records", "Access", "Access log", "Symptoms", "Matches"]
ASK_SYMPTOMS = ["HP:0002321", "HP:0000822"]  # Vertigo and hypertension: the request test's own match
CHAT_SYMPTOMS = ["HP:0002076", "HP:0002829"]  # Migraine and arthralgia: the chat test's own match
EMERGENCY_REASON = "Found unconscious; checking for known conditions and medication before treatment today."
SENT = "Request sent: waiting for an answer"
WANTS = "Wants to connect"
LABEL_LINES = """(label) => ({
  height: label.getBoundingClientRect().height,
  line: parseFloat(getComputedStyle(label).lineHeight),
  cut: label.scrollWidth > label.clientWidth,
})"""
SOFT_KEYBOARD_SEND = """(input) => input.dispatchEvent(
  new InputEvent('beforeinput', { inputType: 'insertLineBreak', bubbles: true, cancelable: true }))"""
PHONE_SCREENSHOT = Path("/tmp/pwa-shell-phone.png")
DESKTOP_SCREENSHOT = Path("/tmp/pwa-shell-desktop.png")
CHAT_SCREENSHOT = Path("/tmp/pwa-chat-emergency.png")


@pytest.fixture
def other_phone(browser: Browser, node: Node) -> Iterator[Phone]:
    with open_phone(browser, node) as phone:
        yield phone


# ---- helpers


def box(locator: Locator) -> dict[str, float]:
    found = locator.bounding_box()
    assert found, f"{locator} is not shown"
    return found


def inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    return (
        inner["x"] >= outer["x"] - 0.5
        and inner["y"] >= outer["y"] - 0.5
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 0.5
    )


def current_tabs(page: Page) -> list[str]:
    return page.locator('.nav-link[aria-current="page"] .nav-label').all_inner_texts()


def ask_to_connect(node: Node, token: str) -> None:
    found = requests.get(node.api("/matches"), params={"mode": "exact"}, headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert found.status_code == 200 and len(found.json()["matches"]) == 1, found.text
    pseudonym = found.json()["matches"][0]["pseudonym"]
    asked = requests.post(node.api(f"/matches/{pseudonym}/connect"), headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert asked.status_code == 201, asked.text


def declare_emergency(node: Node, patient_token: str, patient_id: str) -> None:
    """The patient opts in to emergency access; the doctor breaks the glass."""
    opted = requests.put(
        node.api("/emergency-access"), json={"enabled": True}, headers=bearer(patient_token), timeout=HTTP_TIMEOUT
    )
    assert opted.status_code == 200, opted.text
    declared = requests.post(
        node.api(f"/patients/{patient_id}/emergency"),
        json={"reason": EMERGENCY_REASON},
        headers=bearer(doctor_token(node)),
        timeout=HTTP_TIMEOUT,
    )
    assert declared.status_code == 201, declared.text


def below_the_composer_nothing_hides(page: Page) -> None:
    """The newest message ends above the composer, which ends above the tab bar."""
    last, composer, tabs = (box(page.locator(s)) for s in (".message-list > li:last-child", ".composer", ".nav"))
    assert last["y"] + last["height"] <= composer["y"] + 0.5, (last, composer)
    assert composer["y"] + composer["height"] <= tabs["y"] + 0.5, (composer, tabs)


# ---- tests


def test_the_header_is_one_row_and_every_tab_has_an_icon_and_a_one_line_label(node: Node, phone: Phone) -> None:
    username = f"pat.shell.{secrets.token_hex(3)}"
    register_patient(node, username, PASSWORD, LONG_NAME)
    page = phone.page
    log_in(page, username)

    # One row at 390 px, with a long name cut short: the name, My ID and Log out are in it.
    header = box(page.locator(".topbar"))
    assert header["height"] <= ONE_ROW, header
    for part in ("#session-bar .user-name", "#session-bar .my-id-link", "#session-bar button"):
        assert inside(box(page.locator(part)), header), part
    expect(page.locator("#session-bar .user-name")).to_have_text(LONG_NAME)
    expect(page.get_by_role("link", name="MedLedger")).to_be_visible()

    # Five tabs along the bottom of the screen, each an icon over a label on one line.
    tabs = page.locator(".nav-link")
    expect(tabs).to_have_count(len(TABS))
    expect(tabs.locator(".nav-label")).to_have_text(TABS)
    for name in TABS:
        tab = page.get_by_role("link", name=name, exact=True)
        tab_box = box(tab)
        assert abs(tab_box["y"] + tab_box["height"] - PHONE["height"]) < 1, (name, tab_box)
        expect(tab.locator("svg.nav-icon")).to_have_count(1)
        expect(tab.locator("svg.nav-icon")).to_have_attribute("aria-hidden", "true")
        assert tab.locator("svg.nav-icon path").count() >= 1
        icon, label = box(tab.locator("svg.nav-icon")), box(tab.locator(".nav-label"))
        assert icon["width"] >= 20 and inside(icon, tab_box) and inside(label, tab_box), (name, icon, label)
        assert icon["y"] + icon["height"] <= label["y"] + 0.5, (name, icon, label)
        lines = tab.locator(".nav-label").evaluate(LABEL_LINES)
        assert lines["height"] < 1.5 * lines["line"] and not lines["cut"], (name, lines)
    assert current_tabs(page) == ["My records"]
    assert fits_the_phone(page)
    page.screenshot(path=str(PHONE_SCREENSHOT))

    open_tab(page, "Access")
    assert current_tabs(page) == ["Access"]
    page.goto("/app/#/my-id")
    expect(page.locator("#session-bar .my-id-link")).to_have_attribute("aria-current", "page")
    assert current_tabs(page) == []

    # On a desktop: the tabs move into the header, still one row, and the page is centred.
    page.set_viewport_size(DESKTOP)
    open_tab(page, "Symptoms")
    header = box(page.locator(".topbar"))
    assert header["height"] <= ONE_ROW, header
    for name in TABS:
        assert inside(box(page.get_by_role("link", name=name, exact=True)), header), name
    assert current_tabs(page) == ["Symptoms"]
    main = box(page.locator("#app"))
    assert abs(main["x"] - (DESKTOP["width"] - main["x"] - main["width"])) <= 1, main
    assert page.evaluate("() => document.documentElement.scrollWidth") <= DESKTOP["width"]
    page.screenshot(path=str(DESKTOP_SCREENSHOT))
    phone.assert_clean()


def test_a_request_reads_as_sent_to_the_asker_and_as_one_to_answer_to_the_other(
    node: Node, phone: Phone, other_phone: Phone
) -> None:
    pair = findable_pair(node, "pat.ask", ASK_SYMPTOMS)
    ask_to_connect(node, pair.tokens["asking"])
    asker, answerer = phone.page, other_phone.page

    log_in(asker, pair.names["asking"])
    open_tab(asker, "Matches")
    sent_card = asker.locator(".match-card")
    expect(sent_card.locator(".request-state")).to_have_text(SENT)
    expect(sent_card.get_by_role("button", name="Accept")).to_have_count(0)
    expect(asker.locator(".match-request")).to_have_count(0)

    log_in(answerer, pair.names["answering"])
    open_tab(answerer, "Matches")
    card = answerer.locator(".match-card")
    expect(card.locator(".request-state")).to_have_text(WANTS)
    expect(card).not_to_contain_text("Request sent")
    expect(card.get_by_role("button", name="Accept")).to_be_visible()
    expect(answerer.locator(".match-request")).to_have_count(1)
    assert fits_the_phone(answerer)

    # Declined on the card itself: the request goes, the card says who declined.
    card.get_by_role("button", name="Decline").click()
    expect(card.locator(".request-state")).to_have_text("You declined")
    expect(answerer.locator(".match-request")).to_have_count(0)
    asker.reload()
    expect(heading(asker)).to_have_text("Matches")
    expect(sent_card.locator(".request-state")).to_have_text("They declined")
    for device in (phone, other_phone):
        device.assert_clean()


def test_enter_sends_and_new_messages_come_into_view_above_the_composer_and_below_a_banner(
    node: Node, phone: Phone, other_phone: Phone
) -> None:
    pair = matched_pair(node, "pat.enter", CHAT_SYMPTOMS)
    declare_emergency(node, pair.tokens["asking"], pair.ids["asking"])
    a, b = phone.page, other_phone.page
    open_chat_on_both(a, b, pair.names["asking"], pair.names["answering"], pair.conversation)
    banner = a.locator("#emergency-banner .emergency-banner")
    expect(banner).to_contain_text(EMERGENCY_REASON)
    composer = a.locator(".composer")
    expect(composer).to_be_in_viewport(ratio=1)

    # Shift+Enter is a new line, Enter sends, and so does the keyboard's Send key.
    message = a.locator("#chat-message")
    expect(message).to_have_attribute("enterkeyhint", "send")
    message.fill("First line")
    message.press("Shift+Enter")
    message.press_sequentially("second line")
    expect(message).to_have_value("First line\nsecond line")
    expect(a.locator(".message-mine")).to_have_count(0)
    message.press("Enter")
    expect(a.locator(".message-mine .message-text")).to_have_text(["First line\nsecond line"])
    expect(message).to_have_value("")
    expect(b.locator(".message-theirs .message-text")).to_have_text(["First line\nsecond line"])
    message.fill("Sent from the keyboard")
    message.evaluate(SOFT_KEYBOARD_SEND)
    expect(a.locator(".message-mine .message-text").last).to_have_text("Sent from the keyboard")
    expect(message).to_have_value("")

    # Messages arriving while the conversation is open come into view, above the composer.
    texts = [f"Reply {n:02d} {secrets.token_hex(2)}" for n in range(15)]
    b.evaluate(SEND_MANY, texts)
    last = a.locator(".message-list > li").last
    expect(last.locator(".message-text")).to_have_text(texts[-1])
    expect(last).to_be_in_viewport(ratio=1)
    expect(banner).to_be_in_viewport()
    expect(composer).to_be_in_viewport(ratio=1)
    below_the_composer_nothing_hides(a)
    a.screenshot(path=str(CHAT_SCREENSHOT))

    # Scrolled up to read, the patient is offered the new message rather than moved to it.
    a.locator(".chat-scroll").evaluate("(list) => { list.scrollTop = 0; }")
    expect(a.locator(".message-list > li").first).to_be_in_viewport()
    later = f"Are you still there? {secrets.token_hex(2)}"
    b.evaluate(SEND_MANY, [later])
    jump = a.get_by_role("button", name="New message")
    expect(jump).to_be_visible()
    newest = a.locator(".message-theirs .message-text").last
    expect(newest).to_have_text(later)
    expect(newest).not_to_be_in_viewport()
    jump.click()
    expect(newest).to_be_in_viewport(ratio=1)
    expect(jump).to_be_hidden()
    below_the_composer_nothing_hides(a)
    assert fits_the_phone(a)

    # On a desktop the conversation fills the window under the header, the composer at its foot.
    a.set_viewport_size(DESKTOP)
    expect(composer).to_be_in_viewport(ratio=1)
    expect(newest).to_be_in_viewport(ratio=1)
    last, composer_box = box(a.locator(".message-list > li:last-child")), box(composer)
    assert last["y"] + last["height"] <= composer_box["y"] + 0.5, (last, composer_box)
    assert composer_box["y"] + composer_box["height"] <= DESKTOP["height"], composer_box
    for device in (phone, other_phone):
        device.assert_clean()
