"""Accessibility: axe-core on every portal page and app screen, at a phone's size and a desktop's,
and the doctor's and the patient's main flows done with the keyboard alone.

A node of its own, seeded with the demo data (`make run`'s accounts, records, a pending request,
profiles), so every page shows what it shows to a real user. axe-core is vendored
(tests/browser/vendor/axe-core, from its npm package) and injected by the test only. Any violation
of impact "serious" or "critical" fails its page, named by rule, impact and target selectors.

With SCREENSHOTS_DIR set (`make screenshots`), every page is also saved there as a PNG, one per
size: docs/accessibility.md says which of them the README shows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser import support
from tests.browser.support import (
    HOST,
    HTTP_TIMEOUT,
    PHONE,
    UI_TIMEOUT,
    Node,
    bearer,
    find_patient,
    flask_cli,
    node_env,
    register_patient,
    serving,
    token_for,
)

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
DESKTOP = {"width": 1366, "height": 768}
SIZES = {"phone": PHONE, "desktop": DESKTOP}
DEMO_PASSWORD = "demo-password-1"  # portal/demo.py
EMERGENCY_REASON = "Brought in unconscious; checking for allergies and current medication."
START_TIMEOUT = 120.0  # seconds until the demo node answers
TAB_LIMIT = 60  # presses of Tab before a control counts as unreachable by keyboard
SCREENSHOTS_DIR = os.environ.get("SCREENSHOTS_DIR")

# (id, who is signed in, path): every page of the portal. {names} are filled from the demo data.
PORTAL_PAGES = [
    ("login", None, "/login"),
    ("find-patient", "dr.osei", "/doctor/patients"),
    ("search-results", "dr.osei", "/doctor/patients?q=alice"),
    ("patient-history", "dr.osei", "/doctor/patients/{alice}/history"),
    ("record", "dr.osei", "/doctor/records/{record}"),
    ("records-i-wrote", "dr.osei", "/doctor/records"),
    ("new-record", "dr.osei", "/doctor/patients/{alice}/records/new"),
    ("request-access", "dr.osei", "/doctor/patients/{carol}/access/request"),
    ("my-patients", "dr.osei", "/doctor/access"),
    ("emergency", "dr.lindqvist", "/doctor/patients/{carol}/emergency"),
    ("admin-users", "admin", "/admin/users"),
    ("front-desk-search", "admin", "/admin/patients?q=alice"),
    ("front-desk-check", "admin", "/admin/patients/{unverified}"),
    ("new-doctor", "admin", "/admin/doctors/new"),
    ("emergencies", "admin", "/admin/emergencies"),
    ("consensus", "admin", "/admin/consensus"),
    ("archive", "admin", "/admin/archive"),
    ("recoveries", "admin", "/admin/recoveries"),
    ("recovery-open", "admin", "/admin/recoveries/new/{alice}"),
    ("blocks", "admin", "/chain/"),
    ("block", "admin", "/chain/blocks/1"),
    ("two-factor", "dr.osei", "/account/two-factor"),
    ("password", "dr.osei", "/account/password"),
    ("api-reference", None, "/api/v1/docs"),
]
# (id, who is signed in, hash): every screen of the app.
APP_SCREENS = [
    ("login", None, "#/login"),
    ("register", None, "#/register"),
    ("forgot-password", None, "#/forgot-password"),
    ("records", "alice", "#/records"),
    ("record", "alice", "#/records/{record}"),
    ("access", "alice", "#/access"),
    ("access-log", "alice", "#/access-log"),
    ("symptoms", "alice", "#/profile"),
    ("matches", "alice", "#/matches"),
    ("chat", "alice", "#/chat/{conversation}"),
    ("my-id", "alice", "#/my-id"),
    ("security", "alice", "#/security"),
    ("devices", "alice", "#/devices"),
    ("recovery-key", "alice", "#/recovery-key"),
    ("escrow", "alice", "#/escrow"),
    ("recover-with-code", None, "#/recover-with-code"),
]

# Whether the focused element shows where focus is: an outline or a box-shadow while :focus-visible.
FOCUS_SHOWN = """() => {
  let el = document.activeElement;
  while (el && el.shadowRoot && el.shadowRoot.activeElement) el = el.shadowRoot.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
  const shadow = style.boxShadow && style.boxShadow !== 'none';
  const name = (el.getAttribute('aria-label') || el.textContent || el.name || el.id || '').trim().slice(0, 40);
  return {
    tag: el.tagName.toLowerCase(), name, id: el.id, visible: el.matches(':focus-visible'), shown: outline || shadow,
  };
}"""
RUN_AXE = """async () => {
  const result = await axe.run(document, { resultTypes: ['violations'] });
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    targets: v.nodes.map((n) => {
      const why = [...n.any, ...n.all, ...n.none].map((check) => check.message).join('; ');
      return `${n.target.join(' ')}  (${why})`;
    }),
  }));
}"""


@dataclass
class Demo:
    node: Node
    names: dict[str, str]  # for the page paths: alice, carol, unverified, record, conversation
    signed_in: dict[tuple[str, str], Any]  # (surface, username) -> a browser context's storage state


# ---- fixtures


@pytest.fixture(scope="module")
def demo_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node as `make run` starts one: migrated, keyed and seeded with the demo before it serves."""
    instance = tmp_path_factory.mktemp("demo-node")
    env = node_env(instance, 0)
    flask_cli(["db", "upgrade"], env)
    flask_cli(["medledger", "node", "init"], env)
    flask_cli(["medledger", "seed-demo"], env)
    with pytest.MonkeyPatch.context() as patch:
        # The whole page walk shares this one node: on a busy machine its first worker may take longer to boot.
        patch.setattr(support, "START_TIMEOUT", START_TIMEOUT)
        with serving(instance, []) as node:
            yield node


@pytest.fixture(scope="module")
def demo(demo_node: Node, browser: Browser) -> Demo:
    node = demo_node
    tokens = {name: token_for(node, name, DEMO_PASSWORD) for name in ("dr.osei", "dr.lindqvist", "alice", "carol")}
    alice = find_patient(node, tokens["dr.osei"], "alice")
    carol = find_patient(node, tokens["dr.osei"], "carol")
    unverified = find_patient(node, tokens["dr.osei"], "alice.moreau")
    mine = requests.get(node.api("/records"), headers=bearer(tokens["alice"]), timeout=HTTP_TIMEOUT)
    assert mine.status_code == 200, mine.text
    record = next(r["id"] for r in mine.json()["records"] if r["title"] == "Asthma review")
    # An emergency for the admin to review and Carol to see; a conversation between Alice and Carol,
    # whose symptoms match exactly.
    declared = requests.post(
        node.api(f"/patients/{carol}/emergency"),
        json={"reason": EMERGENCY_REASON},
        headers=bearer(tokens["dr.lindqvist"]),
        timeout=HTTP_TIMEOUT,
    )
    assert declared.status_code == 201, declared.text
    conversation = connect(node, tokens["alice"], tokens["carol"])
    actors = {("portal", who) for _, who, _ in PORTAL_PAGES if who} | {("app", who) for _, who, _ in APP_SCREENS if who}
    signed_in = {actor: storage_after_login(browser, node, *actor) for actor in sorted(actors)}
    names = {"alice": alice, "carol": carol, "unverified": unverified, "record": record, "conversation": conversation}
    return Demo(node, names, signed_in)


def connect(node: Node, asking: str, answering: str) -> str:
    found = requests.get(node.api("/matches"), params={"mode": "exact"}, headers=bearer(asking), timeout=HTTP_TIMEOUT)
    assert found.status_code == 200 and found.json()["matches"], found.text
    pseudonym = found.json()["matches"][0]["pseudonym"]
    asked = requests.post(node.api(f"/matches/{pseudonym}/connect"), headers=bearer(asking), timeout=HTTP_TIMEOUT)
    assert asked.status_code == 201, asked.text
    connection = asked.json()["connection"]["id"]
    accepted = requests.post(
        node.api(f"/connections/{connection}/accept"), headers=bearer(answering), timeout=HTTP_TIMEOUT
    )
    assert accepted.status_code == 200, accepted.text
    return str(connection)


def new_context(browser: Browser, node: Node, size: str, storage: Any = None) -> BrowserContext:
    phone = size == "phone"
    context = browser.new_context(
        base_url=node.url,
        viewport=SIZES[size],
        device_scale_factor=1,
        is_mobile=phone,
        has_touch=phone,
        locale="en-GB",
        timezone_id="UTC",
        service_workers="block",
        bypass_csp=True,  # axe is injected as an inline script, which the node's CSP rightly refuses
        storage_state=storage,
    )
    context.set_default_timeout(UI_TIMEOUT)
    context.set_default_navigation_timeout(UI_TIMEOUT)
    return context


def storage_after_login(browser: Browser, node: Node, surface: str, username: str) -> Any:
    """Sign in once through the page, as the user does; later contexts start from the saved state."""
    context = new_context(browser, node, "desktop")
    try:
        page = context.new_page()
        if surface == "portal":
            portal_login(page, username)
        else:
            app_login(page, username)
        return context.storage_state()
    finally:
        context.close()


def portal_login(page: Page, username: str) -> None:
    page.goto("/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("header.top nav")).to_contain_text("Chain")
    expect(page).not_to_have_url(re.compile(r"/login$"))


def app_login(page: Page, username: str) -> None:
    page.goto("/app/#/login")
    page.fill("#login-username", username)
    page.fill("#login-password", DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#app h1")).to_have_text("My records")


# ---- axe


def blocking_violations(page: Page) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    return [v for v in page.evaluate(RUN_AXE) if v["impact"] in BLOCKING]


def report(violations: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {v['id']} ({v['impact']}): {v['help']}\n" + "".join(f"    at {t}\n" for t in v["targets"])
        for v in violations
    )


def save_screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS_DIR:
        folder = Path(SCREENSHOTS_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"))


def settle(page: Page) -> None:
    """Until the page has drawn what it loads: its requests answered, no busy region and no loading
    indicator left. The app shows "Loading ..." (.loading) until its data is drawn, and may start a
    request only after work of its own (its keys, its stored session): the network alone going quiet
    does not say that the screen is complete, the indicator going away does."""
    page.wait_for_load_state("networkidle")
    expect(page.locator("[aria-busy=true]")).to_have_count(0)
    expect(page.locator(".loading")).to_have_count(0)


def check_page(browser: Browser, demo: Demo, surface: str, size: str, who: str | None, url: str, name: str) -> None:
    storage = demo.signed_in[(surface, who)] if who else None
    context = new_context(browser, demo.node, size, storage)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        answer = page.goto(url.format(**demo.names))
        assert answer is not None and answer.status == 200, f"{url} answered {answer and answer.status}"
        if surface == "app":
            expect(page.locator("#app h1")).to_be_visible()
        elif name == "api-reference":
            expect(page.locator(".swagger-ui .info")).to_be_visible()
        else:
            expect(page.locator("main h1")).to_be_visible()
        settle(page)
        if who:
            assert "/login" not in page.url, f"{who} was sent to log in from {url}"
        save_screenshot(page, f"{surface}-{name}-{size}")
        violations = blocking_violations(page)
        assert not violations, f"{surface} {name} at {size} size, serious or critical:\n{report(violations)}"
        assert errors == [], "uncaught errors in the page"
    finally:
        context.close()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("name", "who", "path"), PORTAL_PAGES, ids=[p[0] for p in PORTAL_PAGES])
def test_portal_page_has_no_serious_violations(
    browser: Browser, demo: Demo, name: str, who: str | None, path: str, size: str
) -> None:
    check_page(browser, demo, "portal", size, who, path, name)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("name", "who", "route"), APP_SCREENS, ids=[s[0] for s in APP_SCREENS])
def test_app_screen_has_no_serious_violations(
    browser: Browser, demo: Demo, name: str, who: str | None, route: str, size: str
) -> None:
    check_page(browser, demo, "app", size, who, f"/app/{route}", name)


def check_step(page: Page, name: str, size: str) -> None:
    """axe on a screen that a flow reached, as check_page does for a screen opened by its address."""
    settle(page)
    save_screenshot(page, f"app-{name}-{size}")
    violations = blocking_violations(page)
    assert not violations, f"app {name} at {size} size, serious or critical:\n{report(violations)}"


@pytest.mark.parametrize("size", SIZES)
def test_recovery_key_steps_have_no_serious_violations(browser: Browser, demo: Demo, size: str) -> None:
    """The recovery key's later steps, which no address opens: the 12 words with their QR code, the
    page as printed, and the two words typed back (also with their errors shown). A patient of its
    own, so the demo's keep no pending key."""
    username = f"a11y.recovery.{size}"
    register_patient(demo.node, username, DEMO_PASSWORD, f"Recovery Key {size.title()}")
    context = new_context(browser, demo.node, size)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        app_login(page, username)
        page.goto("/app/#/recovery-key")
        page.get_by_label("Your password").fill(DEMO_PASSWORD)
        page.get_by_role("button", name="Make my recovery key").click()

        expect(page.get_by_role("heading", name="Your 12 words")).to_be_focused()
        expect(page.locator(".recovery-words li")).to_have_count(12)
        expect(page.get_by_role("img", name="QR code of your 12 recovery words")).to_be_visible()
        assert page.evaluate("() => document.querySelector('.recovery-qr').naturalWidth") > 0
        check_step(page, "recovery-key-words", size)

        page.emulate_media(media="print")
        expect(page.locator(".recovery-print-title")).to_have_text("MedLedger recovery key")
        expect(page.locator(".recovery-actions")).to_be_hidden()
        check_step(page, "recovery-key-print", size)
        page.emulate_media(media="screen")

        page.get_by_role("button", name="I have written them down").click()
        expect(page.get_by_role("heading", name="Check your copy")).to_be_focused()
        check_step(page, "recovery-key-confirm", size)
        page.get_by_role("button", name="Confirm").click()
        expect(page.locator(".recovery .field-error:visible")).to_have_count(2)
        check_step(page, "recovery-key-confirm-errors", size)
        assert errors == [], "uncaught errors in the page"
    finally:
        context.close()


# ---- the keyboard alone


class Keyboard:
    """Drives a page with keys only, checking that every control focus lands on shows it."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.unmarked: set[str] = set()
        self.checked = 0

    def focused(self) -> dict[str, Any] | None:
        return self.page.evaluate(FOCUS_SHOWN)

    def note_focus(self) -> dict[str, Any] | None:
        focus = self.focused()
        if focus and focus["visible"]:
            self.checked += 1
        if focus and focus["visible"] and not focus["shown"]:
            self.unmarked.add(f"<{focus['tag']}> {focus['name']!r} on {self.page.url.removeprefix(f'http://{HOST}')}")
        return focus

    def tab_to(self, wanted: str, *, back: bool = False) -> None:
        """Press Tab (Shift+Tab with back) until the focused element matches the JS predicate `wanted`."""
        for _ in range(TAB_LIMIT):
            self.page.keyboard.press("Shift+Tab" if back else "Tab")
            self.note_focus()
            if self.page.evaluate(f"() => {{ const el = document.activeElement; return Boolean(({wanted})(el)); }}"):
                return
        pytest.fail(f"no control matching {wanted} reached with the keyboard on {self.page.url}")

    def type(self, text: str) -> None:
        self.page.keyboard.type(text)

    def press(self, key: str) -> None:
        self.page.keyboard.press(key)


def link_named(text: str) -> str:
    return f"(el) => el.tagName === 'A' && el.textContent.trim() === {text!r}"


def control_named(tag: str, text: str) -> str:
    return f"(el) => el.tagName === {tag.upper()!r} && el.textContent.includes({text!r})"


def field(selector: str) -> str:
    return f"(el) => el.matches({selector!r})"


@pytest.mark.parametrize("size", SIZES)
def test_doctor_finds_a_patient_and_opens_a_record_with_the_keyboard(browser: Browser, demo: Demo, size: str) -> None:
    context = new_context(browser, demo.node, size)
    try:
        page = context.new_page()
        keys = Keyboard(page)
        page.goto("/login")
        keys.tab_to(field("input[name=username]"))
        keys.type("dr.osei")
        keys.tab_to(field("input[name=password]"))
        keys.type(DEMO_PASSWORD)
        keys.tab_to(control_named("button", "Log in"))
        keys.press("Enter")
        expect(page.locator("main h1")).to_have_text("Find a patient")

        keys.tab_to(field("input[name=q]"), back=True)
        keys.type("Alice")
        keys.press("Enter")
        expect(page.get_by_role("heading", name=re.compile("matching"))).to_be_visible()

        keys.tab_to(link_named("History"))
        keys.press("Enter")
        expect(page.locator("main h1")).to_contain_text("History")

        keys.tab_to(f"(el) => el.tagName === 'A' && el.href.endsWith({demo.names['record']!r})")
        keys.press("Enter")
        expect(page).to_have_url(re.compile(rf"/doctor/records/{demo.names['record']}$"))
        expect(page.locator("main")).to_contain_text("Asthma review")
        assert keys.checked > 5, "keyboard focus was not seen as :focus-visible"
        assert not keys.unmarked, "focused without a visible focus indicator:\n" + "\n".join(sorted(keys.unmarked))
    finally:
        context.close()


@pytest.mark.parametrize("size", SIZES)
def test_patient_opens_a_record_and_starts_a_grant_with_the_keyboard(browser: Browser, demo: Demo, size: str) -> None:
    context = new_context(browser, demo.node, size)
    try:
        page = context.new_page()
        keys = Keyboard(page)
        page.goto("/app/#/login")
        expect(page.locator("#app h1")).to_have_text("Log in")
        keys.tab_to(field("#login-username"))
        keys.type("alice")
        keys.tab_to(field("#login-password"))
        keys.type(DEMO_PASSWORD)
        keys.press("Enter")
        expect(page.locator("#app h1")).to_have_text("My records")
        settle(page)

        keys.tab_to(f"(el) => el.tagName === 'A' && el.getAttribute('href') === '#/records/{demo.names['record']}'")
        keys.press("Enter")
        expect(page.locator("#app h1")).to_have_text("Asthma review")
        settle(page)

        keys.tab_to("(el) => el.tagName === 'A' && el.getAttribute('href') === '#/access'")
        keys.press("Enter")
        expect(page.locator("#app h1")).to_have_text("Access")
        settle(page)

        keys.tab_to(field("#doctor-search"))
        keys.type("Osei")
        option = page.locator(".doctor-option", has_text="Dr. Ama Osei")
        expect(option).to_be_visible()
        keys.tab_to(control_named("button", "Dr. Ama Osei"))
        keys.press("Space")
        expect(page.locator(".chosen")).to_contain_text("Dr. Ama Osei")
        # The scope is a radio group: Tab enters it at the checked choice, the arrows move the choice.
        keys.tab_to(field("input[type=radio][name=grant-scope]"))
        keys.press("ArrowDown")
        expect(page.locator("#grant-scope-categories")).to_be_checked()
        keys.press("ArrowUp")
        expect(page.locator("#grant-scope-all")).to_be_checked()
        keys.tab_to(control_named("button", "Review"))
        keys.press("Enter")
        confirm = page.get_by_role("group", name=re.compile(r"^Give Dr\. Ama Osei"))
        expect(confirm).to_be_visible()
        expect(confirm.get_by_role("button", name="Give access")).to_be_visible()
        assert keys.checked > 5, "keyboard focus was not seen as :focus-visible"
        assert not keys.unmarked, "focused without a visible focus indicator:\n" + "\n".join(sorted(keys.unmarked))
    finally:
        context.close()
