"""Coded data where it is entered, in a real browser: the portal's record form picks diagnoses by
search with the keyboard alone and shows them as chips, reports every unknown code at once, and
the app's Symptoms screen finds everyday words."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from tests.browser.support import (
    DOCTOR_PASSWORD,
    DOCTOR_USERNAME,
    HTTP_TIMEOUT,
    UI_TIMEOUT,
    Node,
    Phone,
    bearer,
    doctor_token,
    find_patient,
    heading,
    register_patient,
    token_for,
)

PATIENT, PASSWORD, NAME = "coded.patient", "coded-data-password-1", "Coded Data Patient"
PICKER_PATIENT, PICKER_NAME = "diagnosis.picker", "Diagnosis Picker Patient"
TYPING_DELAY = 40  # milliseconds between keys
FIRST_SEARCH_TIMEOUT = 30_000  # the node builds its ICD-10-CM index on the first search


@pytest.fixture(scope="module")
def patient_id(node: Node) -> str:
    register_patient(node, PATIENT, PASSWORD, NAME)
    return find_patient(node, doctor_token(node), PATIENT)


@pytest.fixture
def doctor_page(browser: Browser, node: Node) -> Iterator[Page]:
    context = browser.new_context(base_url=node.url, viewport={"width": 1366, "height": 900}, locale="en-GB")
    context.set_default_timeout(UI_TIMEOUT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("/login")
    page.get_by_label("Username").fill(DOCTOR_USERNAME)
    page.get_by_label("Password").fill(DOCTOR_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/doctor/**")
    try:
        yield page
        assert errors == []
    finally:
        context.close()


def test_doctor_picks_a_diagnosis_with_the_keyboard(doctor_page: Page, patient_id: str) -> None:
    page = doctor_page
    page.goto(f"/doctor/patients/{patient_id}/records/new")
    page.get_by_label("Title").fill("Asthma review")
    page.select_option("select[name=category]", "respiratory")
    search = page.get_by_role("combobox", name="Diagnoses")
    search.press_sequentially("asthma", delay=TYPING_DELAY)
    listbox = page.locator("#diagnoses-input-listbox")
    expect(listbox.get_by_role("option").first).to_contain_text("J45", timeout=FIRST_SEARCH_TIMEOUT)
    expect(search).to_have_attribute("aria-expanded", "true")
    search.press("ArrowDown")
    expect(listbox.get_by_role("option").first).to_have_attribute("aria-selected", "true")
    expect(search).to_have_attribute("aria-activedescendant", "diagnoses-input-listbox-0")
    search.press("Enter")
    chips = page.locator("[data-code-picker=diagnoses] .chip")
    expect(chips).to_have_count(1)
    expect(chips.first).to_contain_text("J45")
    expect(chips.first).to_contain_text("Asthma")
    expect(listbox).to_be_hidden()

    # A second one, then removed again with its button.
    search.press_sequentially("J45.909", delay=TYPING_DELAY)
    expect(listbox.get_by_role("option").first).to_contain_text("Unspecified asthma, uncomplicated")
    search.press("ArrowDown")
    search.press("Enter")
    expect(chips).to_have_count(2)
    page.get_by_role("button", name="Remove J45.909 Unspecified asthma, uncomplicated").click()
    expect(chips).to_have_count(1)
    expect(search).to_be_focused()

    # Escape closes the list without picking.
    search.press_sequentially("wheez", delay=TYPING_DELAY)
    expect(listbox).to_be_visible()
    search.press("Escape")
    expect(listbox).to_be_hidden()
    search.fill("")

    symptoms = page.get_by_role("combobox", name="Symptoms")
    symptoms.press_sequentially("short of breath", delay=TYPING_DELAY)
    option = page.locator("#symptoms-input-listbox").get_by_role("option", name="HP:0002094 Dyspnea")
    expect(option).to_contain_text("short of breath")
    option.click()
    expect(page.locator("[data-code-picker=symptoms] .chip")).to_contain_text("Dyspnea")

    page.get_by_role("button", name="Encrypt and save").click()
    page.wait_for_url("**/doctor/records/**")
    expect(page.locator("main")).to_contain_text("J45")
    expect(page.locator("main")).to_contain_text("Asthma")
    expect(page.locator("main")).to_contain_text("Dyspnea")


def test_every_unknown_code_typed_without_picking_is_reported(doctor_page: Page, patient_id: str) -> None:
    page = doctor_page
    page.goto(f"/doctor/patients/{patient_id}/records/new")
    page.get_by_label("Title").fill("Kept title")
    page.get_by_role("combobox", name="Diagnoses").fill("ZZZ1, QQQ2")
    page.get_by_role("button", name="Encrypt and save").click()
    errors = page.locator("#diagnoses-errors")
    expect(errors).to_contain_text("ZZZ1 is not an ICD-10-CM diagnosis code this hospital knows.")
    expect(errors).to_contain_text("QQQ2 is not an ICD-10-CM diagnosis code this hospital knows.")
    expect(page.get_by_label("Title")).to_have_value("Kept title")
    # What was typed comes back as chips marked unknown, removable.
    expect(page.locator("[data-code-picker=diagnoses] .chip.unknown")).to_have_count(2)
    expect(page.get_by_role("combobox", name="Diagnoses")).to_have_attribute("aria-invalid", "true")


def test_app_finds_everyday_words(phone: Phone, node: Node, patient_id: str) -> None:
    page = phone.page
    page.goto("/app/#/login")
    page.fill("#login-username", PATIENT)
    page.fill("#login-password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(heading(page)).to_have_text("My records")
    page.get_by_role("link", name="Symptoms", exact=True).click()
    search = page.get_by_role("combobox", name="Add a symptom")
    search.press_sequentially("short of breath", delay=TYPING_DELAY)
    option = page.locator("#symptom-search-listbox").get_by_role("option").first
    expect(option).to_contain_text("Dyspnea")
    expect(option).to_contain_text("short of breath")
    search.press("ArrowDown")
    search.press("Enter")
    expect(page.locator(".term-chip-name", has_text="Dyspnea")).to_be_visible()

    diagnosis = page.get_by_role("combobox", name="Diagnosis (optional)")
    diagnosis.press_sequentially("asthma", delay=TYPING_DELAY)
    found = page.locator("#profile-diagnosis-listbox").get_by_role("option").first
    expect(found).to_contain_text("Asthma", timeout=FIRST_SEARCH_TIMEOUT)
    diagnosis.press("ArrowDown")
    diagnosis.press("Enter")
    expect(page.locator(".term-chip-name", has_text="Asthma (J45)")).to_be_visible()
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_contain_text("Saved.")
    expect(page.locator(".term-chip-name", has_text="Asthma (J45)")).to_be_visible()
    phone.assert_clean()


def test_app_diagnosis_picker_lists_the_nodes_icd10_answer_and_saves_the_pick(phone: Phone, node: Node) -> None:
    """The Symptoms screen's diagnosis picker asks the node (searchDiagnoses), lists exactly what the
    node's ICD-10-CM search answers, and the code picked is the one the profile keeps."""
    register_patient(node, PICKER_PATIENT, PASSWORD, PICKER_NAME)
    token = token_for(node, PICKER_PATIENT, PASSWORD)
    page = phone.page
    page.goto("/app/#/login")
    page.fill("#login-username", PICKER_PATIENT)
    page.fill("#login-password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(heading(page)).to_have_text("My records")
    page.get_by_role("link", name="Symptoms", exact=True).click()
    expect(page.locator(".term-chips[aria-label='Your diagnosis']")).to_contain_text("No diagnosis chosen.")

    # A profile needs a symptom before it can be saved.
    symptom = page.get_by_role("combobox", name="Add a symptom")
    symptom.press_sequentially("headache", delay=TYPING_DELAY)
    page.locator("#symptom-search-listbox").get_by_role("option", name="Headache HP:0002315").click()
    expect(page.locator(".term-chip-name", has_text="Headache")).to_be_visible()

    diagnosis = page.get_by_role("combobox", name="Diagnosis (optional)")
    listbox = page.locator("#profile-diagnosis-listbox")
    note = page.locator(".diagnosis-search-note")
    diagnosis.press_sequentially("xyzzyq", delay=TYPING_DELAY)
    expect(note).to_have_text("No diagnosis matches “xyzzyq”. Try other words.", timeout=FIRST_SEARCH_TIMEOUT)
    expect(listbox.get_by_role("option")).to_have_count(0)
    expect(diagnosis).to_have_attribute("aria-expanded", "false")
    diagnosis.fill("")

    # The list is the node's own answer, in its order: ten ICD-10-CM codes (the app's limit).
    query = "migraine aura"
    answer = requests.get(
        node.api("/diagnoses"), params={"q": query, "limit": 10}, headers=bearer(token), timeout=HTTP_TIMEOUT
    )
    assert answer.status_code == 200, answer.text
    expected = answer.json()["diagnoses"]
    assert len(expected) == 10
    assert {"code": "G43.1", "description": "Migraine with aura"} in expected
    diagnosis.press_sequentially(query, delay=TYPING_DELAY)
    options = listbox.get_by_role("option")
    expect(options).to_have_text([f"{d['description']}{d['code']}" for d in expected])
    expect(note).to_have_text("10 found: use the arrow keys and Enter, or tap one.")
    expect(diagnosis).to_have_attribute("aria-expanded", "true")

    listbox.get_by_role("option", name="Migraine with aura G43.1", exact=True).click()
    chip = page.locator(".term-chips[aria-label='Your diagnosis'] .term-chip-name")
    expect(chip).to_have_text("Migraine with aura (G43.1)")
    expect(diagnosis).to_have_value("")
    expect(listbox.get_by_role("option")).to_have_count(0)

    page.get_by_role("button", name="Save").click()
    expect(page.locator("#app .view > .notice-info[role=status]")).to_contain_text("Saved.")
    saved = requests.get(node.api("/profile"), headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert saved.status_code == 200, saved.text
    assert saved.json()["profile"]["diagnosis"] == {"code": "G43.1", "description": "Migraine with aura"}

    # Opened again, the screen shows the kept diagnosis from the node.
    page.reload()
    expect(chip).to_have_text("Migraine with aura (G43.1)")
    phone.assert_clean()
