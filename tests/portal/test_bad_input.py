"""Bad input of every kind gets a clear 4xx, and nothing is stored."""

from __future__ import annotations

import base64

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import LedgerTransaction, Record
from tests.conftest import PNG, RECORD, Person


def nothing_stored() -> bool:
    records = db.session.scalar(select(func.count()).select_from(Record))
    txs = db.session.scalar(select(func.count()).where(LedgerTransaction.kind == "record"))
    return records == 0 and txs == 0


def post(client: FlaskClient, doctor: Person, patient: Person, **kwargs: object):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/patients/{patient.id}/records", headers=doctor.headers, **kwargs)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"diagnoses": ["ZZZ.99"]}, "unknown ICD-10-CM code 'ZZZ.99'"),
        ({"diagnoses": "J45.909"}, "`diagnoses` must be a list of codes."),
        ({"symptoms": ["HP:9999999"]}, "unknown HPO term 'HP:9999999'"),
        ({"symptoms": [1, 2]}, "`symptoms` must be a list of codes."),
        ({"title": ""}, "`title` is required."),
        ({"title": "x" * 201}, "`title` is longer than 200 characters."),
        ({"title": 42}, "`title` must be text."),
        ({"category": "astrology"}, "`category` must be one of"),
        ({"prescriptions": "aspirin"}, "`prescriptions` must be a list"),
        ({"prescriptions": [{"drug": ""}]}, "`drug` is required."),
        ({"prescriptions": [{"drug": "x", "colour": "red"}]}, "Each prescription has `drug`"),
        ({"attachments": [{"filename": "a.exe", "data": base64.b64encode(b"MZ\x90\x00").decode()}]}, "is not a PDF"),
        ({"attachments": [{"filename": "a.png", "data": "!!!not base64"}]}, "is not valid base64."),
        (
            {
                "attachments": [
                    {"filename": "a.png", "content_type": "application/pdf", "data": base64.b64encode(PNG).decode()}
                ]
            },
            "is image/png, not application/pdf",
        ),
        ({"attachments": [{"filename": "empty.png", "data": ""}]}, "is empty."),
        ({"attachments": "nope"}, "`attachments` must be a list of objects."),
    ],
)
def test_invalid_record_fields(
    client: FlaskClient, doctor: Person, patient: Person, changes: dict, message: str
) -> None:
    answer = post(client, doctor, patient, json={**RECORD, **changes})
    assert answer.status_code == 422, answer.json
    assert answer.json["error"]["code"] == "validation_failed"
    assert message in answer.json["error"]["message"]
    assert nothing_stored()


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b'"a string"', "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"title=x", "text/plain"),
    ],
)
def test_invalid_json(client: FlaskClient, doctor: Person, patient: Person, data: bytes, content_type: str) -> None:
    answer = post(client, doctor, patient, data=data, content_type=content_type)
    assert answer.status_code == 400
    assert answer.json["error"]["code"] == "invalid_json"
    assert nothing_stored()
    login = client.post("/api/v1/auth/token", data=data, content_type=content_type)
    assert login.status_code == 400 and login.json["error"]["code"] == "invalid_json"


def test_invalid_oversized_body(client: FlaskClient, doctor: Person, patient: Person) -> None:
    big = base64.b64encode(PNG + bytes(600 * 1024)).decode()
    answer = post(client, doctor, patient, json={**RECORD, "attachments": [{"filename": "big.png", "data": big}]})
    assert answer.status_code == 413
    assert answer.json["error"]["code"] == "too_large"
    assert nothing_stored()


def test_invalid_oversized_attachment(client: FlaskClient, doctor: Person, patient: Person) -> None:
    data = base64.b64encode(PNG + bytes(70 * 1024)).decode()  # over the test limit of 64 KiB, under the body limit
    answer = post(client, doctor, patient, json={**RECORD, "attachments": [{"filename": "big.png", "data": data}]})
    assert answer.status_code == 413
    assert "larger than 65536 bytes" in answer.json["error"]["message"]
    assert nothing_stored()


def test_invalid_too_many_attachments(client: FlaskClient, doctor: Person, patient: Person) -> None:
    one = {"filename": "a.png", "data": base64.b64encode(PNG).decode()}
    answer = post(client, doctor, patient, json={**RECORD, "attachments": [one] * 6})
    assert answer.status_code == 422
    assert answer.json["error"]["message"] == "At most 5 attachments."


def test_invalid_patient(client: FlaskClient, doctor: Person, other_doctor: Person) -> None:
    for target in ("not-a-user", other_doctor.id):
        answer = client.post(f"/api/v1/patients/{target}/records", json=RECORD, headers=doctor.headers)
        assert answer.status_code == 404
        assert answer.json["error"]["message"] == "No such patient."
    assert nothing_stored()


def test_invalid_record_ids(client: FlaskClient, patient: Person) -> None:
    for record_id in ("nope", "0" * 36, "../../etc/passwd"):
        answer = client.get(f"/api/v1/records/{record_id}", headers=patient.headers)
        assert answer.status_code == 404


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    assert client.get("/api/v1/nothing-here").json["error"]["code"] == "not_found"
    answer = client.put("/api/v1/records")
    assert answer.status_code == 405 and answer.json["error"]["code"] == "method_not_allowed"
    assert set(answer.headers["Allow"].split(", ")) >= {"GET"}  # says what is allowed
    assert answer.headers["Content-Type"] == "application/json"


def test_invalid_record_fields_are_named(client: FlaskClient, doctor: Person, patient: Person) -> None:
    """The schema refuses unknown fields and wrong types, one message per field."""
    body = {**RECORD, "colour": "red", "prescriptions": [{"drug": "x", "colour": "red"}]}
    del body["title"]
    answer = post(client, doctor, patient, json=body)
    assert answer.status_code == 422
    assert answer.json["error"]["fields"] == {
        "title": "`title` is required.",
        "colour": "Unknown field.",
        "prescriptions.0.colour": "Each prescription has `drug` and optionally `dose`, `frequency`, `duration`.",
    }
    assert nothing_stored()


def test_invalid_multipart_record(client: FlaskClient, doctor: Person, patient: Person) -> None:
    form = {"category": "imaging", "diagnoses": "J45.909", "colour": "red"}
    answer = post(client, doctor, patient, data=form, content_type="multipart/form-data")
    assert answer.status_code == 422
    assert answer.json["error"]["fields"] == {"title": "`title` is required.", "colour": "Unknown field."}
    bad = post(client, doctor, patient, data={**RECORD, "prescriptions": "[oops", "diagnoses": "J45.909",
               "symptoms": ""}, content_type="multipart/form-data")  # fmt: skip
    assert bad.status_code == 422 and bad.json["error"]["message"] == "`prescriptions` must be a JSON list."
    assert nothing_stored()


def test_invalid_query_parameters(client: FlaskClient, patient: Person) -> None:
    answer = client.get("/api/v1/records?limit=2&sort=title", headers=patient.headers)
    assert answer.status_code == 422 and answer.json["error"]["fields"] == {"sort": "Unknown field."}
    blocks = client.get("/api/v1/chain/blocks?from=x")
    assert blocks.json["error"]["fields"] == {"from": "`from` must be a whole number from 0 to 2147483647."}
