"""Patients told apart: date of birth at registration, the home hospital, and a hospital number
given when the home hospital's front desk checks their identity in person."""

from __future__ import annotations

import re
import uuid
from datetime import date, timedelta
from html import unescape
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from portal import runtime
from portal.extensions import db
from portal.models import User, utcnow
from portal.services import accounts, federation
from portal.services.errors import Conflict, Forbidden, ValidationFailed
from tests.conftest import PASSWORD, Person, make_person
from tests.portal.test_node_routes import signed
from tests.portal.test_pages import csrf, log_in

FUTURE = (date.today() + timedelta(days=2)).isoformat()
NOT_A_DATE = "Date of birth must be a real date, written as YYYY-MM-DD (for example 1984-03-21)."


def row(person: Person) -> User:
    user = db.session.scalar(select(User).where(User.public_id == person.id))
    assert user is not None
    return user


def register(client: FlaskClient, **fields: Any) -> Any:
    body = {
        "username": "dana",
        "password": PASSWORD,
        "display_name": "Dana Kim",
        "date_of_birth": "1984-03-21",
        **fields,
    }
    return client.post("/api/v1/auth/register", json=body)


def verify(admin: Person, patient: Person, mrn: str) -> User:
    return accounts.verify_in_person(row_of_admin(admin), patient.id, mrn, utcnow())


def row_of_admin(admin: Person) -> User:
    return db.session.scalar(select(User).where(User.username == admin.username))  # type: ignore[return-value]


def remote_patient(name: str = "Alice Moreau", home: str = "node-2") -> User:
    """An account of another hospital as projected from its `key` transaction: no sealed keys."""
    key = uuid.uuid4().hex
    user = User(
        public_id=str(uuid.uuid4()), display_name=federation.UNNAMED + "x", role="patient", home_node=home,
        rsa_public_key=b"r", umbral_public_key=b"u", key_id=key, key_tx_hash=key,
    )  # fmt: skip
    db.session.add(user)
    db.session.commit()
    return user


class Peers:
    """A consortium of one other node, whose answer to every question is `answer`."""

    def __init__(self, answer: object) -> None:
        self.urls = {"node-2": "http://node-2.invalid"}
        self.answer = answer
        self.asked: list[str] = []

    def get(self, node: str, path: str) -> object:
        self.asked.append(path)
        return self.answer


# -- registration ---------------------------------------------------------------------------------


def test_registration_keeps_the_date_of_birth(client: FlaskClient) -> None:
    answer = register(client, date_of_birth="1984-03-21")
    assert answer.status_code == 201, answer.json
    assert answer.json["user"]["date_of_birth"] == "1984-03-21"
    user = db.session.scalar(select(User).where(User.username == "dana"))
    assert user is not None and user.date_of_birth == date(1984, 3, 21)
    assert user.mrn is None and user.verified_at is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (FUTURE, "Date of birth cannot be in the future."),
        ("1899-12-31", "Date of birth cannot be before 1 January 1900."),
        ("soon", NOT_A_DATE),
        ("2001-02-30", NOT_A_DATE),
        ("21/03/1984", NOT_A_DATE),
        ("1984-03-21T00:00:00", NOT_A_DATE),
        ("", NOT_A_DATE),
        (19840321, "`date_of_birth` must be text."),
    ],
)
def test_invalid_registration_date_of_birth(client: FlaskClient, value: object, message: str) -> None:
    answer = register(client, date_of_birth=value)
    assert answer.status_code == 422
    assert answer.json["error"]["fields"] == {"date_of_birth": message}
    assert db.session.scalar(select(User).where(User.username == "dana")) is None


def test_today_is_a_valid_date_of_birth_and_the_service_checks_too(app: Flask) -> None:
    today = utcnow().date()
    assert accounts.check_date_of_birth(today.isoformat(), today) == today
    assert accounts.check_date_of_birth("1900-01-01", today) == date(1900, 1, 1)
    with pytest.raises(ValidationFailed, match="in the future"):
        accounts.create_user(
            role="patient", username="erin", password=PASSWORD, display_name="Erin", date_of_birth=FUTURE,
            kdf=runtime.kdf(), home=runtime.node_key(), now=utcnow(),
        )  # fmt: skip


def test_patients_registered_before_stay_valid_without_a_date_of_birth(client: FlaskClient, doctor: Person) -> None:
    older = make_person(client, "patient", "old.timer", "Olga Timer", date_of_birth=None)  # type: ignore[arg-type]
    assert row(older).date_of_birth is None
    found = client.get("/api/v1/patients", query_string={"q": "olga"}, headers=doctor.headers).json["patients"]
    assert [(p["id"], p["date_of_birth"], p["verified"]) for p in found] == [(older.id, None, False)]
    log_in(client, "dr.osei")
    page = unescape(client.get("/doctor/patients?q=olga").get_data(as_text=True))
    assert "not given" in page and "Not verified in person" in page


# -- verification at the front desk ---------------------------------------------------------------


def test_home_admin_verifies_a_patient_with_a_hospital_number(
    client: FlaskClient, admin: Person, patient: Person
) -> None:
    log_in(client, "admin")
    url = f"/admin/patients/{patient.id}"
    form = client.get(url).get_data(as_text=True)
    assert "Check the identity of Alice Moreau" in form and "1984-03-21" in form

    unconfirmed = client.post(url, data={"csrf_token": csrf(client, url), "mrn": "SM-1001"})
    assert unconfirmed.status_code == 422
    assert "Tick the box to confirm" in unescape(unconfirmed.get_data(as_text=True))
    assert row(patient).verified_at is None

    done = client.post(url, data={"csrf_token": csrf(client, url), "mrn": " sm-1001 ", "confirm": "yes"})
    assert done.status_code == 302
    user = row(patient)
    assert user.mrn == "SM-1001" and user.verified_at is not None
    assert user.verified_by_id == row_of_admin(admin).id
    listing = unescape(client.get("/admin/patients?q=alice").get_data(as_text=True))
    assert "SM-1001" in listing and "checked in person" in listing


def test_hospital_numbers_are_unique_per_hospital(
    client: FlaskClient, admin: Person, patient: Person, other_patient: Person
) -> None:
    verify(admin, patient, "SM-1001")
    with pytest.raises(Conflict, match="SM-1001 is already given to another patient"):
        verify(admin, other_patient, "sm-1001")
    assert row(other_patient).mrn is None and row(other_patient).verified_at is None
    verify(admin, patient, "SM-1001")  # the same patient again: not a clash
    # Another hospital may use the same number for its own patient.
    elsewhere = remote_patient(home="node-2")
    elsewhere.mrn = "SM-1001"
    db.session.commit()

    log_in(client, "admin")
    url = f"/admin/patients/{other_patient.id}"
    clash = client.post(url, data={"csrf_token": csrf(client, url), "mrn": "SM-1001", "confirm": "yes"})
    assert clash.status_code == 409
    assert "already given to another patient of this hospital" in unescape(clash.get_data(as_text=True))


@pytest.mark.parametrize("mrn", ["", "   ", "SM 1001", "-SM1", "X" * 41, "SM<1>", None])
def test_invalid_hospital_number(admin: Person, patient: Person, mrn: object) -> None:
    with pytest.raises(ValidationFailed, match="hospital number must be 1-40 letters and digits"):
        accounts.verify_in_person(row_of_admin(admin), patient.id, mrn, utcnow())
    assert row(patient).verified_at is None


def test_front_desk_may_correct_the_date_of_birth(admin: Person, patient: Person) -> None:
    accounts.verify_in_person(row_of_admin(admin), patient.id, "SM-7", utcnow(), "1985-04-02")
    assert row(patient).date_of_birth == date(1985, 4, 2)
    with pytest.raises(ValidationFailed, match="in the future"):
        accounts.verify_in_person(row_of_admin(admin), patient.id, "SM-7", utcnow(), FUTURE)


def test_only_the_home_hospitals_admin_verifies(
    client: FlaskClient, admin: Person, doctor: Person, patient: Person, other_patient: Person
) -> None:
    for person in (doctor, other_patient):
        with pytest.raises(Forbidden, match="Only a hospital administrator"):
            accounts.verify_in_person(row(person), patient.id, "SM-1", utcnow())
    # An admin of another hospital (known here only from the ledger) cannot, nor can this
    # hospital's admin for another hospital's patient.
    outsider = remote_patient()
    outsider.role = "admin"
    db.session.commit()
    with pytest.raises(Forbidden):
        accounts.verify_in_person(outsider, patient.id, "SM-1", utcnow())
    theirs = remote_patient()
    with pytest.raises(Forbidden, match="Only the patient's home hospital"):
        accounts.verify_in_person(row_of_admin(admin), theirs.public_id, "SM-1", utcnow())
    assert row(patient).verified_at is None and theirs.mrn is None

    log_in(client, "admin")
    url = f"/admin/patients/{theirs.public_id}"
    assert client.get(url).status_code == 403
    assert (
        client.post(
            url, data={"csrf_token": csrf(client, "/admin/patients"), "mrn": "X1", "confirm": "yes"}
        ).status_code
        == 403
    )
    client.post("/logout", data={"csrf_token": csrf(client, "/admin/patients")})
    log_in(client, "dr.osei")
    assert client.get(f"/admin/patients/{patient.id}").status_code in (302, 403)
    assert row(patient).verified_at is None


# -- choosing a patient ---------------------------------------------------------------------------


def test_two_patients_of_the_same_name_are_told_apart(client: FlaskClient, admin: Person, doctor: Person) -> None:
    first = make_person(client, "patient", "alice.m", "Alice Moreau", date_of_birth="1984-03-21")
    second = make_person(client, "patient", "alice.m2", "Alice Moreau", date_of_birth="1991-11-02")
    verify(admin, first, "SM-1001")

    found = client.get("/api/v1/patients", query_string={"q": "alice moreau"}, headers=doctor.headers)
    assert found.status_code == 200
    rows = {p["id"]: p for p in found.json["patients"]}
    hospital = runtime.hospital_name()
    assert {k: rows[first.id][k] for k in ("date_of_birth", "mrn", "verified", "home_hospital")} == {
        "date_of_birth": "1984-03-21", "mrn": "SM-1001", "verified": True, "home_hospital": hospital,
    }  # fmt: skip
    assert {k: rows[second.id][k] for k in ("date_of_birth", "mrn", "verified", "home_hospital")} == {
        "date_of_birth": "1991-11-02", "mrn": None, "verified": False, "home_hospital": hospital,
    }  # fmt: skip
    one = client.get(f"/api/v1/patients/{second.id}", headers=doctor.headers).json
    assert (one["date_of_birth"], one["mrn"], one["verified"]) == ("1991-11-02", None, False)

    log_in(client, "dr.osei")
    page = unescape(re.sub(r"\s+", " ", client.get("/doctor/patients?q=alice moreau").get_data(as_text=True)))
    cards = re.findall(r'<li class="card result">(.*?)</li>', page)
    assert len(cards) == 2
    by_id = {next(i for i in (first.id, second.id) if i in card): card for card in cards}
    assert "1984-03-21" in by_id[first.id] and "SM-1001" in by_id[first.id]
    assert "Identity checked in person" in by_id[first.id]
    assert "1991-11-02" in by_id[second.id] and "Not verified in person" in by_id[second.id]
    assert all(hospital in card for card in cards)

    history = unescape(client.get(f"/doctor/patients/{second.id}/history").get_data(as_text=True))
    heading = history.split("<h1>History</h1>", 1)[1].split("</p>", 1)[0]
    assert "born 1991-11-02" in heading and "Not verified in person" in heading
    assert f'home hospital <span class="home-hospital">{hospital}</span>' in heading
    checked = unescape(client.get(f"/doctor/patients/{first.id}/history").get_data(as_text=True))
    assert "hospital number SM-1001" in checked.split("<h1>History</h1>", 1)[1].split("</p>", 1)[0]


# -- another hospital's patient -------------------------------------------------------------------


def test_home_node_tells_members_a_patients_identity(
    admin: Person, patient: Person, doctor: Person, client: FlaskClient
) -> None:
    verify(admin, patient, "SM-1001")
    told = signed(client, "GET", f"/node/v1/accounts/{patient.id}").json
    assert (told["date_of_birth"], told["mrn"], told["verified"]) == ("1984-03-21", "SM-1001", True)
    assert "date_of_birth" not in signed(client, "GET", f"/node/v1/accounts/{doctor.id}").json


def test_remote_patients_identity_comes_from_their_home_node(
    client: FlaskClient, doctor: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = remote_patient()
    home_says = {
        "id": theirs.public_id, "role": "patient", "display_name": "Alice Moreau", "hospital": None,
        "home": "node-2", "home_hospital": "North Hospital", "date_of_birth": "1991-11-02", "mrn": None,
        "verified": False,
    }  # fmt: skip
    peers = Peers(home_says)
    monkeypatch.setattr(runtime, "peers", lambda: peers)

    answer = client.get(f"/api/v1/patients/{theirs.public_id}", headers=doctor.headers).json
    assert (answer["display_name"], answer["date_of_birth"], answer["verified"]) == (
        "Alice Moreau",
        "1991-11-02",
        False,
    )
    assert peers.asked == [f"/node/v1/accounts/{theirs.public_id}"]
    client.get(f"/api/v1/patients/{theirs.public_id}", headers=doctor.headers)
    assert len(peers.asked) == 1  # kept, not asked again at once

    # An hour later the home node is asked again: the front desk has checked her since.
    db.session.get(User, theirs.id).resolved_at = utcnow() - federation.RESOLVE_AGAIN_AFTER - timedelta(minutes=1)  # type: ignore[union-attr]
    db.session.commit()
    peers.answer = {**home_says, "mrn": "N-77", "verified": True}
    answer = client.get(f"/api/v1/patients/{theirs.public_id}", headers=doctor.headers).json
    assert (answer["mrn"], answer["verified"], len(peers.asked)) == ("N-77", True, 2)


@pytest.mark.parametrize(
    "bad",
    [{"date_of_birth": "soon"}, {"date_of_birth": 1991}, {"mrn": "x" * 41}, {"mrn": "a\nb"}, {"verified": "yes"}],
)
def test_invalid_identity_from_a_home_node_is_not_taken(
    client: FlaskClient, doctor: Person, monkeypatch: pytest.MonkeyPatch, bad: dict[str, object]
) -> None:
    theirs = remote_patient()
    answer = {"id": theirs.public_id, "role": "patient", "display_name": "Alice Moreau", "hospital": None, **bad}
    monkeypatch.setattr(runtime, "peers", lambda: Peers(answer))
    shown = client.get(f"/api/v1/patients/{theirs.public_id}", headers=doctor.headers).json
    assert shown["display_name"].startswith(federation.UNNAMED)
    assert (shown["date_of_birth"], shown["mrn"], shown["verified"]) == (None, None, False)
