"""Find a patient: by name at home, by consortium id from any member hospital, and bad input."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from html import unescape
from typing import Any

import pytest
from flask.testing import FlaskClient

from core.crypto import generate_user_keys
from portal import runtime
from portal.extensions import db
from portal.models import MemberNode, User, utcnow
from tests.conftest import PASSWORD, Person
from tests.portal.test_pages import csrf, log_in

FIND = "/doctor/patients"
OTHER_NODE = "node-2"
OTHER_HOSPITAL = "St. Elsewhere"
UNKNOWN_ID_MESSAGE = "No patient of any member hospital has this id."


@dataclass
class FakePeers:
    """The other member nodes as `federation.resolve` asks them, answering from `accounts`."""

    accounts: dict[str, dict[str, Any]]
    urls: dict[str, str] = field(default_factory=lambda: {OTHER_NODE: "http://127.0.0.1:9"})
    asked: list[str] = field(default_factory=list)

    def get(self, peer: str, path: str) -> Any:
        self.asked.append(f"{peer}{path}")
        return self.accounts.get(path.rsplit("/", 1)[-1])


def patient_of_another_hospital() -> User:
    """A patient registered at another node, as projection makes them from their `key`
    transaction: public keys and home node, a placeholder name, no login."""
    keys = generate_user_keys().public
    public_id = str(uuid.uuid4())
    db.session.add(MemberNode(node_id=OTHER_NODE, hospital=OTHER_HOSPITAL, box_key=bytes(32), tx_hash="0" * 64))
    user = User(
        public_id=public_id, username=None, display_name="Account " + public_id[:8], role="patient",
        home_node=OTHER_NODE, rsa_public_key=keys.rsa_der, umbral_public_key=keys.umbral,
        key_id=keys.key_id, key_tx_hash="0" * 64, created_at=utcnow(),
    )  # fmt: skip
    db.session.add(user)
    db.session.commit()
    return user


def text_of(answer: Any) -> str:
    return unescape(re.sub(r"\s+", " ", answer.get_data(as_text=True)))


def found_card(answer: Any) -> str:
    match = re.search(r'<li class="card result" id="found-patient">(.*?)</li>', answer.get_data(as_text=True), re.S)
    assert match, answer.get_data(as_text=True)
    return unescape(re.sub(r"\s+", " ", match.group(1)))


def test_doctor_finds_a_local_patient_by_id(client: FlaskClient, doctor: Person, patient: Person) -> None:
    api = client.get(f"/api/v1/patients/{patient.id}", headers=doctor.headers).json
    assert api["home_hospital"]
    log_in(client, doctor.username)
    for typed in (patient.id, f"  {patient.id.upper()} "):  # pasted with spaces, or read back in capitals
        answer = client.get(FIND, query_string={"q": typed})
        assert answer.status_code == 200
        card = found_card(answer)
        assert "Alice Moreau" in card and f"Home hospital: {api['home_hospital']}" in card
        for action in ("records/new", "access/request", "history"):
            assert f"/doctor/patients/{patient.id}/{action}" in card


def test_doctor_finds_a_patient_of_another_hospital_by_id_named_by_their_home_node(
    client: FlaskClient, doctor: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = patient_of_another_hospital()
    peers = FakePeers({remote.public_id: {"id": remote.public_id, "role": "patient", "display_name": "Zoë Remote"}})
    monkeypatch.setattr(runtime, "peers", lambda: peers)
    log_in(client, doctor.username)

    assert "Zoë Remote" not in text_of(client.get(FIND, query_string={"q": "Zoë"}))  # never by name elsewhere
    answer = client.get(FIND, query_string={"q": remote.public_id})
    assert answer.status_code == 200
    card = found_card(answer)
    assert "Zoë Remote" in card and f"Home hospital: {OTHER_HOSPITAL}" in card
    assert "has not told this one their name" not in card
    assert f"/doctor/patients/{remote.public_id}/records/new" in card
    assert peers.asked == [f"{OTHER_NODE}/node/v1/accounts/{remote.public_id}"]
    client.get(FIND, query_string={"q": remote.public_id})
    assert len(peers.asked) == 1  # the name is kept once learnt


def test_patient_of_another_hospital_whose_home_node_does_not_answer(
    client: FlaskClient, doctor: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = patient_of_another_hospital()
    monkeypatch.setattr(runtime, "peers", lambda: FakePeers({}))
    log_in(client, doctor.username)
    answer = client.get(FIND, query_string={"q": remote.public_id})
    assert answer.status_code == 200
    card = found_card(answer)
    assert f"Account {remote.public_id[:8]}" in card and f"Home hospital: {OTHER_HOSPITAL}" in card
    assert "has not told this one their name yet" in card


def test_name_search_still_finds_local_patients(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    answer = client.get(FIND, query_string={"q": "moreau"})
    assert answer.status_code == 200
    page = text_of(answer)
    assert "1 patient matching" in page and "Alice Moreau" in page and "@alice" in page
    assert 'id="found-patient"' not in page


def test_invalid_unknown_id(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    for unknown in (str(uuid.uuid4()), doctor.id):  # nobody's id, and a doctor's (not a patient's)
        answer = client.get(FIND, query_string={"q": unknown})
        assert answer.status_code == 404
        page = text_of(answer)
        assert UNKNOWN_ID_MESSAGE in page and 'id="found-patient"' not in page
        assert "Dr. Ama Osei" not in page.split("<main>", 1)[1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("a" * 10_000, "Search for at most 100 characters"),
        ("\x00alice", "holds a NUL character"),  # refused at the door (portal/limits.py)
        ("alice\u200b\u0007", "plain characters"),
        ("3f2a9c1e-77b0-4d6a-9e2f-0c1d", "This is not a whole patient id"),
        ("3f2a9c1e77b04d6a9e2f0c1d2b3a4f5e", "This is not a whole patient id"),
        ("a", "at least 2 characters"),
    ],
)
def test_invalid_search(client: FlaskClient, doctor: Person, patient: Person, query: str, message: str) -> None:
    log_in(client, doctor.username)
    answer = client.get(FIND, query_string={"q": query})
    assert answer.status_code == 422
    page = text_of(answer)
    assert message in page
    assert "a" * 200 not in page  # the 10 kB search is not echoed back


@pytest.mark.parametrize("encoded", ["%ED%A0%80", "al%ED%B3%BFice", "%ED%A0%80" * 13])
def test_invalid_lone_surrogates_get_a_clear_answer(client: FlaskClient, doctor: Person, encoded: str) -> None:
    """A lone surrogate cannot be encoded as UTF-8, so it arrives as the bytes a careless client
    makes of it; the page says nothing matches rather than failing."""
    log_in(client, doctor.username)
    answer = client.get(f"{FIND}?q={encoded}")
    assert answer.status_code in (200, 422)
    page = text_of(answer)
    assert "No patients of this hospital match" in page or "Search for at most" in page


def test_invalid_patient_admin_or_anonymous_cannot_find(
    client: FlaskClient, patient: Person, other_patient: Person, admin: Person
) -> None:
    anonymous = client.get(FIND, query_string={"q": other_patient.id})
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
    # A patient's right password opens no portal session: the page sends them to their app.
    handoff = client.post(
        "/login", data={"username": patient.username, "password": PASSWORD, "csrf_token": csrf(client, "/login")}
    )
    assert handoff.status_code == 200 and "Patients use the MedLedger app" in handoff.get_data(as_text=True)
    assert client.get(FIND, query_string={"q": other_patient.id}).status_code == 302
    with_token = client.get(FIND, query_string={"q": other_patient.id}, headers=patient.headers)
    assert with_token.status_code == 302  # the pages take no API token
    log_in(client, admin.username)
    answer = client.get(FIND, query_string={"q": other_patient.id})
    assert answer.status_code == 403
    assert "Bob Tanaka" not in answer.get_data(as_text=True)
