"""Writing and reading records: the round trip, who may read, attachments."""

from __future__ import annotations

import base64

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Attachment, LedgerTransaction, Record
from tests.conftest import PDF, PNG, RECORD, Person, produce


def write(client: FlaskClient, doctor: Person, patient: Person, **changes: object) -> dict:
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json={**RECORD, **changes}, headers=doctor.headers)
    assert answer.status_code == 201, answer.json
    return answer.json


def test_doctor_writes_and_patient_reads(app: Flask, client: FlaskClient, doctor: Person, patient: Person) -> None:
    created = write(client, doctor, patient)
    assert len(created["tx_hash"]) == 64

    record = client.get(f"/api/v1/records/{created['id']}", headers=patient.headers).json
    assert record["title"] == "Asthma review"
    assert record["notes"] == RECORD["notes"]
    assert record["diagnoses"] == [{"code": "J45.909", "description": "Unspecified asthma, uncomplicated"}]
    assert record["symptoms"] == [{"id": "HP:0002094", "name": "Dyspnea"}]
    assert record["prescriptions"][0]["drug"] == "Salbutamol"
    assert record["author"]["display_name"] == "Dr. Ama Osei"
    assert record["block_height"] is None

    height = produce(app)
    assert height == 1
    again = client.get(f"/api/v1/records/{created['id']}", headers=patient.headers).json
    assert again["block_height"] == 1


def test_author_reads_what_they_wrote(client: FlaskClient, doctor: Person, patient: Person) -> None:
    created = write(client, doctor, patient, title="Follow-up")
    answer = client.get(f"/api/v1/records/{created['id']}", headers=doctor.headers)
    assert answer.status_code == 200
    assert answer.json["title"] == "Follow-up"


def test_others_get_403(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person, other_doctor: Person, admin: Person
) -> None:
    created = write(client, doctor, patient)
    for outsider in (other_patient, other_doctor, admin):
        answer = client.get(f"/api/v1/records/{created['id']}", headers=outsider.headers)
        assert answer.status_code == 403, outsider.username
        expected = "You may not read this record."
        if outsider is other_doctor:
            expected = "You may not read this record: ask the patient for access first."
        assert answer.json == {"error": {"code": "forbidden", "message": expected}}
        attachment = client.get(f"/api/v1/records/{created['id']}/attachments/0", headers=outsider.headers)
        assert attachment.status_code == 403


def test_lists_by_role(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, other_patient: Person, admin: Person
) -> None:
    write(client, doctor, patient, title="A")
    write(client, other_doctor, patient, title="B")
    write(client, doctor, other_patient, title="C")

    def titles(person: Person) -> set[str]:
        return {r["title"] for r in client.get("/api/v1/records", headers=person.headers).json["records"]}

    assert titles(patient) == {"A", "B"}
    assert titles(other_patient) == {"C"}
    assert titles(doctor) == {"A", "C"}
    assert titles(other_doctor) == {"B"}
    assert client.get("/api/v1/records", headers=admin.headers).status_code == 403


def test_attachments_round_trip(client: FlaskClient, doctor: Person, patient: Person, other_patient: Person) -> None:
    files = [
        {"filename": "scan.png", "content_type": "image/png", "data": base64.b64encode(PNG).decode()},
        {"filename": "../../etc/report.pdf", "content_type": "application/pdf", "data": base64.b64encode(PDF).decode()},
    ]
    created = write(client, doctor, patient, attachments=files)
    record = client.get(f"/api/v1/records/{created['id']}", headers=patient.headers).json
    assert record["attachments"] == [
        {"n": 0, "filename": "scan.png", "content_type": "image/png", "size": len(PNG)},
        {"n": 1, "filename": "report.pdf", "content_type": "application/pdf", "size": len(PDF)},
    ]
    png = client.get(f"/api/v1/records/{created['id']}/attachments/0", headers=patient.headers)
    assert png.status_code == 200 and png.data == PNG and png.mimetype == "image/png"
    pdf = client.get(f"/api/v1/records/{created['id']}/attachments/1", headers=doctor.headers)
    assert pdf.data == PDF
    assert client.get(f"/api/v1/records/{created['id']}/attachments/2", headers=patient.headers).status_code == 404


def test_multipart_upload(client: FlaskClient, doctor: Person, patient: Person) -> None:
    import io

    answer = client.post(
        f"/api/v1/patients/{patient.id}/records",
        data={
            "title": "Chest X-ray",
            "category": "imaging",
            "diagnoses": "J45.909, R05.9",
            "symptoms": "HP:0012735",
            "notes": "",
            "prescriptions": "[]",
            "attachments": (io.BytesIO(PNG), "xray.png", "image/png"),
        },
        headers=doctor.headers,
        content_type="multipart/form-data",
    )
    assert answer.status_code == 201, answer.json
    record = client.get(f"/api/v1/records/{answer.json['id']}", headers=patient.headers).json
    assert [d["code"] for d in record["diagnoses"]] == ["J45.909", "R05.9"]
    assert record["attachments"][0]["filename"] == "xray.png"


def test_tampered_attachment_is_refused(client: FlaskClient, doctor: Person, patient: Person) -> None:
    files = [{"filename": "scan.png", "content_type": "image/png", "data": base64.b64encode(PNG).decode()}]
    created = write(client, doctor, patient, attachments=files)
    row = db.session.get(Attachment, (created["id"], 0))
    row.ciphertext = row.ciphertext[:-1] + bytes([row.ciphertext[-1] ^ 1])
    db.session.commit()
    answer = client.get(f"/api/v1/records/{created['id']}/attachments/0", headers=patient.headers)
    assert answer.status_code == 409
    assert answer.json["error"]["code"] == "record_unreadable"


def test_tampered_public_key_in_database_is_refused(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person
) -> None:
    """A database attacker swapping a patient's public key must not get records sealed to their key."""
    from portal.models import User

    victim = db.session.scalar(select(User).where(User.username == patient.username))
    attacker = db.session.scalar(select(User).where(User.username == other_patient.username))
    victim.umbral_public_key = attacker.umbral_public_key
    db.session.commit()
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json=RECORD, headers=doctor.headers)
    assert answer.status_code == 409
    assert "do not match the ledger" in answer.json["error"]["message"]
    assert db.session.scalar(select(func.count()).select_from(Record)) == 0


def test_key_swapped_after_a_record_was_written_is_refused(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person
) -> None:
    """The ledger's registration is read once per process: a key swapped in the database after the
    first record (registration already read) is still caught."""
    from portal.models import User

    write(client, doctor, patient)
    victim = db.session.scalar(select(User).where(User.username == patient.username))
    attacker = db.session.scalar(select(User).where(User.username == other_patient.username))
    victim.rsa_public_key = attacker.rsa_public_key
    db.session.commit()
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json=RECORD, headers=doctor.headers)
    assert answer.status_code == 409 and answer.json["error"]["code"] == "keys_mismatch"
    assert db.session.scalar(select(func.count()).select_from(Record)) == 1


def test_damaged_key_registration_on_the_ledger_is_refused(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person
) -> None:
    """The registration a key is checked against must be the transaction its hash names: another
    account's registration copied over it does not vouch for this one's keys."""
    from portal.models import LedgerTransaction, User

    victim = db.session.scalar(select(User).where(User.username == patient.username))
    attacker = db.session.scalar(select(User).where(User.username == other_patient.username))
    victim.umbral_public_key, victim.rsa_public_key = attacker.umbral_public_key, attacker.rsa_public_key
    db.session.get(LedgerTransaction, victim.key_tx_hash).encoded = db.session.get(
        LedgerTransaction, attacker.key_tx_hash
    ).encoded
    db.session.commit()
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json=RECORD, headers=doctor.headers)
    assert answer.status_code == 409 and answer.json["error"]["code"] == "keys_mismatch"
    assert db.session.scalar(select(func.count()).select_from(Record)) == 0


@pytest.mark.parametrize("who", ["patient", "other_patient", "admin"])
def test_invalid_only_doctors_write(
    request: pytest.FixtureRequest, client: FlaskClient, patient: Person, who: str
) -> None:
    person = request.getfixturevalue(who)
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json=RECORD, headers=person.headers)
    assert answer.status_code == 403
    assert answer.json["error"]["message"] == "Only doctor accounts may do this."
    assert (
        db.session.scalar(select(func.count()).select_from(LedgerTransaction).where(LedgerTransaction.kind == "record"))
        == 0
    )


def test_patient_search(client: FlaskClient, doctor: Person, patient: Person, other_patient: Person) -> None:
    found = client.get("/api/v1/patients?q=alic", headers=doctor.headers).json["patients"]
    assert [p["username"] for p in found] == ["alice"]
    by_name = client.get("/api/v1/patients?q=tanaka", headers=doctor.headers).json["patients"]
    assert [p["id"] for p in by_name] == [other_patient.id]
    assert client.get("/api/v1/patients?q=dr", headers=doctor.headers).json["patients"] == []
    assert client.get("/api/v1/patients?q=a", headers=doctor.headers).status_code == 422
    assert client.get("/api/v1/patients?q=alice", headers=patient.headers).status_code == 403


def test_record_list_pages(client: FlaskClient, doctor: Person, patient: Person) -> None:
    for n in range(5):
        write(client, doctor, patient, title=f"R{n}")
    first = client.get("/api/v1/records?limit=2", headers=patient.headers).json
    assert len(first["records"]) == 2 and first["next_offset"] == 2
    seen = [r["title"] for r in first["records"]]
    offset = first["next_offset"]
    while offset is not None:
        page = client.get(f"/api/v1/records?limit=2&offset={offset}", headers=patient.headers).json
        seen += [r["title"] for r in page["records"]]
        offset = page["next_offset"]
    assert sorted(seen) == [f"R{n}" for n in range(5)] and len(seen) == 5
    for query in ("limit=0", "limit=201", "offset=-1", "limit=x"):
        answer = client.get(f"/api/v1/records?{query}", headers=patient.headers)
        assert answer.status_code == 422, query
