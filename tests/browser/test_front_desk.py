"""Telling two patients of the same name apart, in a real browser on a node seeded with the demo
(two "Alice Moreau", born on different days, one checked in person): the doctor's search shows
who is who, and the front desk checks the other one's identity and gives her a hospital number.
Both pages pass axe-core (no serious or critical violation)."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, expect

from tests.browser.support import Node
from tests.browser.test_accessibility import blocking_violations, demo_node, new_context, portal_login, report

__all__ = ["demo_node"]  # the fixture: a node of this module's own, seeded as `make run` seeds one


def test_doctor_tells_two_alices_apart_and_the_front_desk_checks_one_in(browser: Browser, demo_node: Node) -> None:
    doctor = new_context(browser, demo_node, "phone")
    try:
        page = doctor.new_page()
        portal_login(page, "dr.osei")
        page.goto("/doctor/patients?q=Alice+Moreau")
        cards = page.locator("li.card.result")
        expect(cards).to_have_count(2)
        first, second = cards.filter(has_text=re.compile(r"@alice(?!\.)")), cards.filter(has_text="@alice.moreau")
        expect(first.locator(".date-of-birth")).to_have_text("Born: 1984-03-21")
        expect(first.locator(".mrn")).to_have_text("Hospital number: SM-104233")
        expect(first.locator(".verified")).to_have_text("Identity checked in person")
        expect(second.locator(".date-of-birth")).to_have_text("Born: 1991-09-30")
        expect(second.locator(".unverified")).to_have_text("Not verified in person")
        for card in (first, second):
            expect(card.locator(".home-hospital")).to_contain_text("Home hospital: ")
        violations = blocking_violations(page)
        assert not violations, "search results:\n" + report(violations)
    finally:
        doctor.close()

    desk = new_context(browser, demo_node, "desktop")
    try:
        page = desk.new_page()
        portal_login(page, "admin")
        page.get_by_role("link", name="Patients", exact=True).click()
        page.get_by_label("Patient name or username").fill("alice")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("tbody tr")).to_have_count(2)
        page.get_by_role("link", name="Check identity of Alice Moreau").click()
        expect(page.locator("h1")).to_have_text("Check the identity of Alice Moreau")
        expect(page.get_by_label("Date of birth on the identity document")).to_have_value("1991-09-30")
        violations = blocking_violations(page)
        assert not violations, "front desk form:\n" + report(violations)

        page.get_by_label("Hospital number").fill("sm-500001")
        page.get_by_role("button", name="Record identity checked in person").click()
        expect(page).to_have_url(re.compile(r"/admin/patients/"))  # the confirmation box is required
        page.get_by_label(re.compile("I have seen this patient in person")).check()
        page.get_by_role("button", name="Record identity checked in person").click()
        expect(page.locator(".flash.info")).to_contain_text("hospital number SM-500001")
        row = page.locator("tbody tr", has_text="@alice.moreau")
        expect(row).to_contain_text("SM-500001")
        expect(row).to_contain_text("checked in person")
        violations = blocking_violations(page)
        assert not violations, "patients list:\n" + report(violations)
    finally:
        desk.close()
