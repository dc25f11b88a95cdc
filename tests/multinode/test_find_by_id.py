"""Find a patient by id through the portal page, across real node processes on loopback.

A patient registers at hospital 1; a doctor signed in to hospital 2's portal does not find her
by name, finds her by her consortium id (named by her home node, with her home hospital), and
gets a clear 404 for an id nobody has.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest
import requests

from portal.demo import PASSWORD
from portal.launcher import LocalNode, add_doctor, add_patient, running
from tests.multinode.test_consortium import free_base_port, wait_for

SLOT_MS = 500
TIMEOUT = 10  # seconds per request


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """Override the suite's key pool: these nodes make their own keys in their own processes."""


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalNode]]:
    folder = tmp_path_factory.mktemp("find-by-id")
    with running(Path(folder), 3, free_base_port(4), slot_ms=SLOT_MS, epoch_slots=30, miss_limit=3) as cluster:
        yield cluster


def portal_session(node: LocalNode, username: str) -> requests.Session:
    """Signed in to a node's web portal, through its login form."""
    session = requests.Session()
    form = session.get(f"{node.url}/login", timeout=TIMEOUT).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token, form
    answer = session.post(
        f"{node.url}/login",
        data={"username": username, "password": PASSWORD, "csrf_token": token.group(1)},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert answer.status_code == 302, answer.text
    return session


def find(session: requests.Session, node: LocalNode, query: str) -> tuple[int, str]:
    answer = session.get(f"{node.url}/doctor/patients", params={"q": query}, timeout=TIMEOUT)
    return answer.status_code, unescape(re.sub(r"\s+", " ", answer.text))


def test_doctor_at_another_hospital_finds_a_patient_by_id_in_the_portal(hospitals: list[LocalNode]) -> None:
    home, second, _ = hospitals
    _, patient_id = add_patient(home, "zara", "Zara Okafor")
    add_doctor(second, "dr.mensah", "Dr. Kofi Mensah")
    portal = portal_session(second, "dr.mensah")

    status, page = find(portal, second, "Zara")
    assert status == 200 and "Zara Okafor" not in page  # never by name away from home

    def found_with_name() -> bool:
        status, page = find(portal, second, patient_id)
        return status == 200 and "Zara Okafor" in page

    wait_for(found_with_name, 30, "Zara's key on hospital 2's ledger and her name from her home node")
    status, page = find(portal, second, patient_id.upper())
    assert status == 200
    card = page.split('id="found-patient"', 1)[1]
    assert "Zara Okafor" in card and "Home hospital: Hospital 1" in card
    assert f"/doctor/patients/{patient_id}/access/request" in card

    status, page = find(portal, second, str(uuid.uuid4()))
    assert status == 404 and "No patient of any member hospital has this id." in page
