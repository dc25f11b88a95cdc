"""The doctor's FHIR export and import on a patient's history page (docs/fhir.md)."""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import AccessEntry, Record
from tests.conftest import PDF, RECORD, Person
from tests.portal.test_pages import csrf, log_in

FHIR_JSON = "application/fhir+json"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
HPO = "http://human-phenotype-ontology.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
PATIENT_REF = "urn:uuid:9c2f4b1e-5d0a-4f5e-8a77-2b1c3d4e5f60"


def count(model: type) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def write_record(client: FlaskClient, author: Person, patient: Person, **fields: object) -> str:
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json={**RECORD, **fields}, headers=author.headers)
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}


def sample_bundle(
    *, condition: tuple[str, str] = (ICD10CM, "J45.909"), phenotype: tuple[str, str] = (HPO, "HP:0002094")
) -> dict[str, Any]:
    """A Bundle as another EHR sends one, written by hand after the FHIR R4 specification's
    examples (Bundle, Composition, Condition, Observation, MedicationRequest)."""
    patient = {"resourceType": "Patient", "id": PATIENT_REF.removeprefix("urn:uuid:"), "name": [{"text": "A. Moreau"}]}
    subject = {"reference": PATIENT_REF}
    system, code = condition
    asthma = {
        "resourceType": "Condition",
        "id": "2f1d3c4b-0a9e-4b8c-9d7e-6f5a4b3c2d1e",
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "code": {"coding": [{"system": system, "code": code, "display": "Asthma"}], "text": "Asthma"},
        "subject": subject,
    }
    system, code = phenotype
    wheeze = {
        "resourceType": "Observation",
        "id": "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code, "display": "Dyspnea"}]},
        "subject": subject,
    }
    inhaler = {
        "resourceType": "MedicationRequest",
        "id": "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "Salbutamol inhaler"},
        "subject": subject,
        "dosageInstruction": [{"text": "100 mcg as needed"}],
    }
    composition = {
        "resourceType": "Composition",
        "id": "0d9c8b7a-6f5e-4d3c-b2a1-0f9e8d7c6b5a",
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "11503-0", "display": "Medical records"}]},
        "subject": subject,
        "date": "2024-05-02T09:30:00Z",
        "author": [{"display": "Dr. Ines Amaral, Hospital de Santa Maria"}],
        "title": "Referral letter: asthma",
        "section": [
            {
                "title": "Diagnoses",
                "entry": [{"reference": f"urn:uuid:{asthma['id']}"}],
            },
            {
                "title": "Notes",
                "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Night cough.</div>'},
            },
        ],
    }
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [entry(r) for r in (composition, patient, asthma, wheeze, inhaler)],
    }


def upload(client: FlaskClient, patient: Person, document: bytes, *, with_csrf: bool = True) -> Any:
    url = f"/doctor/patients/{patient.id}/fhir"
    data: dict[str, Any] = {"bundle": (io.BytesIO(document), "referral.json", FHIR_JSON)}
    if with_csrf:
        data["csrf_token"] = csrf(client, f"/doctor/patients/{patient.id}/history")
    return client.post(url, data=data, content_type="multipart/form-data")


# ---- the page


def test_history_offers_export_and_import(client: FlaskClient, doctor: Person, patient: Person) -> None:
    write_record(client, doctor, patient)
    log_in(client, doctor.username)
    page = client.get(f"/doctor/patients/{patient.id}/history").get_data(as_text=True)
    assert f'href="/doctor/patients/{patient.id}/fhir"' in page and "Export (FHIR)" in page
    form = re.search(r'<form method="post" action="/doctor/patients/[^"]+/fhir".*?</form>', page, re.S)
    assert form, page
    assert 'enctype="multipart/form-data"' in form.group(0) and 'type="file"' in form.group(0)
    assert 'name="csrf_token"' in form.group(0) and re.search(r'name="idempotency_key" value="[0-9a-f-]{36}"', page)


def test_history_without_access_still_offers_import(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    write_record(client, other_doctor, patient)
    log_in(client, doctor.username)
    answer = client.get(f"/doctor/patients/{patient.id}/history")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 403
    assert "Export (FHIR)" not in page and "Import a FHIR Bundle" in page


# ---- export


def test_doctor_exports_what_the_grant_covers(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    write_record(client, other_doctor, patient, title="Asthma review", category="respiratory")
    write_record(client, other_doctor, patient, title="Palpitations", category="cardiology", diagnoses=[])
    scope = {"type": "categories", "categories": ["respiratory"]}
    granted = client.post("/api/v1/grants", json={"doctor_id": doctor.id, "scope": scope}, headers=patient.headers)
    assert granted.status_code == 201, granted.json
    assert count(AccessEntry) == 0
    log_in(client, doctor.username)

    answer = client.get(f"/doctor/patients/{patient.id}/fhir")

    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == FHIR_JSON
    disposition = answer.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and f"medledger-patient-{patient.id}-" in disposition
    assert answer.headers["Cache-Control"] == "no-store"
    bundle = json.loads(answer.data)
    assert bundle["resourceType"] == "Bundle"
    titles = [e["resource"]["title"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Composition"]
    assert titles == ["Asthma review"]  # the cardiology record is outside the grant
    assert count(AccessEntry) == 1  # the one record read to write the file, in the patient's log


def test_invalid_export_without_access(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    write_record(client, other_doctor, patient)
    log_in(client, doctor.username)
    answer = client.get(f"/doctor/patients/{patient.id}/fhir")
    assert answer.status_code == 403
    assert answer.mimetype == "text/html" and "Content-Disposition" not in answer.headers
    assert count(AccessEntry) == 0


def test_invalid_export_of_unknown_patient(client: FlaskClient, doctor: Person) -> None:
    log_in(client, doctor.username)
    answer = client.get("/doctor/patients/1b4e28ba-2fa1-11d2-883f-0016d3cca427/fhir")
    assert answer.status_code == 404


# ---- import


def test_doctor_imports_a_bundle(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    answer = upload(client, patient, json.dumps(sample_bundle()).encode())

    assert answer.status_code == 302, answer.get_data(as_text=True)
    record_id = db.session.scalar(select(Record.id))
    assert answer.headers["Location"].endswith(f"/doctor/records/{record_id}")
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "FHIR Bundle imported" in page
    assert "Referral letter: asthma" in page and "J45.909" in page and "Salbutamol inhaler" in page
    assert "Night cough." in page
    assert count(Record) == 1
    # The patient reads it like any other record.
    mine = client.get(f"/api/v1/records/{record_id}", headers=patient.headers)
    assert mine.status_code == 200 and mine.json["title"] == "Referral letter: asthma"
    assert [d["code"] for d in mine.json["diagnoses"]] == ["J45.909"]


def test_doctor_imports_a_bundle_with_a_scan(client: FlaskClient, doctor: Person, patient: Person) -> None:
    """A Bundle with an embedded attachment is larger than a plain form: it is taken as record uploads are."""
    scan = PDF + bytes(60 * 1024)  # under the attachment limit, its base64 over the limit of small forms
    bundle = sample_bundle()
    document = {
        "resourceType": "DocumentReference",
        "id": "5e4d3c2b-1a0f-4e9d-8c7b-6a5f4e3d2c1b",
        "status": "current",
        "subject": {"reference": PATIENT_REF},
        "content": [{"attachment": {"contentType": "application/pdf", "title": "spirometry.pdf",
                                    "data": base64.b64encode(scan).decode()}}],
    }  # fmt: skip
    bundle["entry"].append(entry(document))
    body = json.dumps(bundle).encode()
    assert len(body) > 64 * 1024
    log_in(client, doctor.username)

    answer = upload(client, patient, body)

    assert answer.status_code == 302, answer.get_data(as_text=True)
    record_id = db.session.scalar(select(Record.id))
    assert client.get(f"/doctor/records/{record_id}/attachments/0").data == scan


def test_export_then_import_keeps_the_clinical_content(client: FlaskClient, doctor: Person, patient: Person) -> None:
    write_record(client, doctor, patient)
    log_in(client, doctor.username)
    exported = client.get(f"/doctor/patients/{patient.id}/fhir")
    assert exported.status_code == 200

    answer = upload(client, patient, exported.data)

    assert answer.status_code == 302, answer.get_data(as_text=True)
    ids = client.get("/api/v1/records", headers=patient.headers).json["records"]
    assert len(ids) == 2
    first, second = (client.get(f"/api/v1/records/{r['id']}", headers=patient.headers).json for r in ids)
    for key in ("title", "category", "diagnoses", "symptoms", "notes", "prescriptions"):
        assert first[key] == second[key], key


def test_invalid_import_lists_each_problem_and_stores_nothing(
    client: FlaskClient, doctor: Person, patient: Person
) -> None:
    log_in(client, doctor.username)
    bundle = sample_bundle(condition=(SNOMED, "195967001"), phenotype=(HPO, "HP:9999999"))

    answer = upload(client, patient, json.dumps(bundle).encode())

    page = answer.get_data(as_text=True)
    assert answer.status_code == 422, page
    problems = re.search(r'<div class="banner invalid" role="alert" id="fhir-import-problems">(.*?)</div>', page, re.S)
    assert problems, page
    items = re.findall(r"<li><code>(.*?)</code>: (.*?)</li>", problems.group(1), re.S)
    assert {resource for resource, _ in items} == {
        "entry.2 (Condition/2f1d3c4b-0a9e-4b8c-9d7e-6f5a4b3c2d1e)",
        "entry.3 (Observation/7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d)",
    }
    condition = next(message for resource, message in items if "Condition" in resource)
    assert "ICD-10-CM" in condition and SNOMED in condition
    assert 'aria-invalid="true" aria-describedby="fhir-import-problems"' in page
    assert "Import a FHIR Bundle" in page  # the form again, to try once more
    assert count(Record) == 0


def test_invalid_import_of_something_else(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    answer = upload(client, patient, json.dumps({"resourceType": "Patient", "id": "x"}).encode())
    page = answer.get_data(as_text=True)
    assert answer.status_code == 422
    assert "<li><code>Bundle</code>: The body is not a FHIR Bundle" in page
    assert count(Record) == 0


def test_invalid_import_not_json(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    answer = upload(client, patient, b"<Bundle xmlns='http://hl7.org/fhir'/>")
    assert answer.status_code == 400
    assert "The file is not a FHIR Bundle in JSON" in answer.get_data(as_text=True)
    assert count(Record) == 0


def test_invalid_import_without_a_file(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/fhir"
    answer = client.post(url, data={"csrf_token": csrf(client, f"/doctor/patients/{patient.id}/history")})
    assert answer.status_code == 422
    assert "Choose the FHIR Bundle to import" in answer.get_data(as_text=True)
    assert count(Record) == 0


def test_invalid_import_without_csrf_token(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    answer = upload(client, patient, json.dumps(sample_bundle()).encode(), with_csrf=False)
    assert answer.status_code == 400
    assert "The form has expired" in answer.get_data(as_text=True)
    assert count(Record) == 0
