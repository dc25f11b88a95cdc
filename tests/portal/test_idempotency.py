"""Writes retried with an Idempotency-Key are done once and answered alike (portal/idempotency.py)."""

from __future__ import annotations

import re
import uuid

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import AccessRequest, Grant, IdempotentRequest, LedgerTransaction, Record, User
from tests.conftest import PASSWORD, RECORD, Person
from tests.portal.test_pages import log_in


def count(model: type) -> int:
    return db.session.scalar(select(func.count()).select_from(model)) or 0


def upload(client: FlaskClient, doctor: Person, patient: Person, key: str | None, **changes: object):  # type: ignore[no-untyped-def]
    headers = {**doctor.headers, **({"Idempotency-Key": key} if key else {})}
    return client.post(f"/api/v1/patients/{patient.id}/records", json={**RECORD, **changes}, headers=headers)


def test_a_retried_upload_is_stored_once_and_answered_alike(
    client: FlaskClient, doctor: Person, patient: Person
) -> None:
    key = str(uuid.uuid4())
    first, retry = upload(client, doctor, patient, key), upload(client, doctor, patient, key)
    assert first.status_code == retry.status_code == 201
    assert retry.json == first.json and retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count(Record) == 1
    record_txs = select(func.count()).where(LedgerTransaction.kind == "record")
    assert db.session.scalar(record_txs) == 1
    # Without a key, a second upload is a second record.
    assert upload(client, doctor, patient, None).status_code == 201
    assert count(Record) == 2


def test_invalid_key_reused_for_another_request(client: FlaskClient, doctor: Person, patient: Person) -> None:
    key = str(uuid.uuid4())
    assert upload(client, doctor, patient, key).status_code == 201
    other = upload(client, doctor, patient, key, title="Another title")
    assert other.status_code == 422
    assert other.json["error"]["message"] == "This `Idempotency-Key` was used for a different request; use a new key."
    assert count(Record) == 1


def test_invalid_keys(client: FlaskClient, doctor: Person, patient: Person) -> None:
    for key in ("x" * 201, "naïve-key", "tab\there"):
        answer = upload(client, doctor, patient, key)
        assert (
            answer.status_code == 422
            and "`Idempotency-Key` must be 1-200 printable ASCII" in answer.json["error"]["message"]
        )
    assert count(Record) == 0


def test_a_refused_request_leaves_its_key_free(client: FlaskClient, doctor: Person, patient: Person) -> None:
    key = str(uuid.uuid4())
    refused = upload(client, doctor, patient, key, diagnoses=["ZZZ.99"])
    assert refused.status_code == 422 and count(IdempotentRequest) == 0
    fixed = upload(client, doctor, patient, key)  # corrected, under the same key: a new request
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed.headers
    assert count(Record) == 1


def test_keys_belong_to_one_account(client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person) -> None:
    key = str(uuid.uuid4())
    mine, theirs = upload(client, doctor, patient, key), upload(client, other_doctor, patient, key)
    assert mine.status_code == theirs.status_code == 201 and mine.json["id"] != theirs.json["id"]
    assert count(Record) == 2


def test_retried_registration_grant_and_request(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    body = {
        "username": "new.patient",
        "password": PASSWORD,
        "display_name": "New Patient",
        "date_of_birth": "1990-01-01",
    }
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/api/v1/auth/register", json=body, headers=headers)
    again = client.post("/api/v1/auth/register", json=body, headers=headers)
    assert first.status_code == again.status_code == 201 and first.json == again.json
    assert db.session.scalar(select(func.count()).where(User.username == "new.patient")) == 1

    headers = {**patient.headers, "Idempotency-Key": str(uuid.uuid4())}
    grants = [client.post("/api/v1/grants", json={"doctor_id": doctor.id}, headers=headers) for _ in range(2)]
    assert [g.status_code for g in grants] == [201, 201] and grants[0].json == grants[1].json
    assert count(Grant) == 1

    ask = {"patient_id": patient.id, "reason": "Second opinion on the scan", "days": 7}
    headers = {**other_doctor.headers, "Idempotency-Key": str(uuid.uuid4())}
    asked = [client.post("/api/v1/access-requests", json=ask, headers=headers) for _ in range(2)]
    assert [a.status_code for a in asked] == [201, 201] and asked[0].json == asked[1].json
    assert count(AccessRequest) == 1
    # The stored answers are sealed: the reason (sealed in access_requests too) is not in clear.
    for row in db.session.scalars(select(IdempotentRequest)):
        assert b"Second opinion" not in (row.body or b"") and b"new.patient" not in (row.body or b"")


def test_a_lost_answer_is_said_not_rewritten(client: FlaskClient, doctor: Person, patient: Person) -> None:
    key = str(uuid.uuid4())
    assert upload(client, doctor, patient, key).status_code == 201
    row = db.session.scalars(select(IdempotentRequest)).one()
    row.status = None  # as if the server died between the write and storing its answer
    db.session.commit()
    lost = upload(client, doctor, patient, key)
    assert lost.status_code == 409 and lost.json["error"]["code"] == "idempotency_answer_lost"
    assert count(Record) == 1


@pytest.mark.parametrize(
    ("form_path", "fields", "model"),
    [
        ("records/new", {"title": "Asthma review", "category": "respiratory", "notes": "Stable."}, Record),
        ("access/request", {"reason": "Follow-up", "days": "7", "scope": "all"}, AccessRequest),
    ],
)
def test_a_portal_form_submitted_twice_writes_once(
    client: FlaskClient, doctor: Person, patient: Person, form_path: str, fields: dict[str, str], model: type
) -> None:
    """The record and access request forms carry a key: a double submit (or a resent POST) writes
    once, and both answers send the doctor to the same place."""
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/{form_path}"
    page = client.get(url).get_data(as_text=True)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert key and csrf
    form = {"csrf_token": csrf.group(1), "idempotency_key": key.group(1), **fields}
    first, again = client.post(url, data=form), client.post(url, data=form)
    assert first.status_code == again.status_code == 302
    assert first.headers["Location"] == again.headers["Location"]
    assert count(model) == 1
