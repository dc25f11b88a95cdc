"""FHIR R4 export and import through the API (docs/fhir.md): Bundles validated by the R4B models
of fhir.resources plus the invariants it does not check (references resolve in the Bundle, codes
are known), the grant's limits and the access log on a doctor's export, the access log as
AuditEvent and CSV, import of good and bad Bundles, and the round trip."""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from core import fhir
from core.clinical.codes import load_vocabulary
from portal import demo
from portal.extensions import db
from portal.models import AccessEntry, LedgerTransaction, Record, User
from tests.conftest import PNG, RECORD, Person, make_person, produce

FHIR_JSON = "application/fhir+json"


def write(client: FlaskClient, author: Person, patient: Person, **changes: object) -> str:
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json={**RECORD, **changes}, headers=author.headers)
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def codings(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if "system" in value and "code" in value:
            yield value
        for item in value.values():
            yield from codings(item)
    elif isinstance(value, list):
        for item in value:
            yield from codings(item)


def valid_bundle(document: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Validate with the R4B models and check what they do not: every reference resolves inside
    the Bundle, every entry is there once, and every ICD-10-CM and HPO code is a known one.
    Returns the resources by type."""
    Bundle.model_validate(document)
    urls = [e["fullUrl"] for e in document["entry"]]
    assert len(urls) == len(set(urls)), "an entry is in the Bundle twice"
    dangling = set(references(document)) - set(urls)
    assert not dangling, f"references that do not resolve in the Bundle: {dangling}"
    vocabulary = load_vocabulary()
    for c in codings(document):
        if c["system"] == fhir.ICD10CM:
            assert vocabulary.diagnosis(c["code"]).description == c["display"]
        if c["system"] == fhir.HPO:
            assert vocabulary.symptom(c["code"]).name == c["display"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in document["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    return by_type


def download(answer: Any, media_type: str) -> Any:
    assert answer.status_code == 200, answer.get_data(as_text=True)[:500]
    assert answer.mimetype == media_type
    assert answer.headers["Content-Disposition"].startswith("attachment;")
    assert answer.headers["Cache-Control"] == "no-store"
    return answer.get_json(force=True) if media_type == FHIR_JSON else answer.get_data(as_text=True)


def test_own_export_is_a_valid_bundle_of_everything(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person
) -> None:
    attachment = {"filename": "peak-flow.png", "content_type": "image/png", "data": base64.b64encode(PNG).decode()}
    first = write(client, doctor, patient, attachments=[attachment])
    produce(app)
    second = write(client, doctor, patient, title="Chest pain", category="cardiology", diagnoses=["I20.9"],
                   symptoms=[], prescriptions=[], notes="")  # fmt: skip
    bundle = download(client.get("/api/v1/records/fhir", headers=patient.headers), FHIR_JSON)
    resources = valid_bundle(bundle)
    assert bundle["type"] == "collection"
    assert [p["id"] for p in resources["Patient"]] == [patient.id]
    assert resources["Patient"][0]["name"][0]["text"] == "Alice Moreau"
    assert [p["id"] for p in resources["Practitioner"]] == [doctor.id]
    assert [o["name"] for o in resources["Organization"]] == ["Test Hospital"]
    compositions = {c["id"]: c for c in resources["Composition"]}
    assert set(compositions) == {first, second}
    asthma = compositions[first]
    assert asthma["title"] == "Asthma review"
    assert asthma["category"][0]["coding"][0] == {"system": fhir.CATEGORY, "code": "respiratory"}
    notes = next(s for s in asthma["section"] if s["title"] == "Notes")
    assert "Peak flow 420 L/min." in notes["text"]["div"]
    conditions = {c["code"]["coding"][0]["code"] for c in resources["Condition"]}
    assert conditions == {"J45.909", "I20.9"}
    (phenotype,) = resources["Observation"]
    assert phenotype["code"]["coding"][0] == {"system": fhir.HPO, "code": "HP:0002094", "display": "Dyspnea"}
    assert phenotype["valueCodeableConcept"]["coding"][0]["code"] == fhir.PRESENT[0]
    (prescription,) = resources["MedicationRequest"]
    assert prescription["medicationCodeableConcept"]["text"] == "Salbutamol"
    assert prescription["dosageInstruction"][0]["text"] == "Salbutamol, 100 mcg, as needed, for 30 days"
    (document,) = resources["DocumentReference"]
    assert base64.b64decode(document["content"][0]["attachment"]["data"]) == PNG
    provenance = {p["target"][0]["reference"]: p for p in resources["Provenance"]}
    sealed = provenance[f"urn:uuid:{first}"]["entity"]
    row = db.session.get(Record, first)
    assert sealed[0]["what"]["identifier"] == {"system": fhir.LEDGER_TX, "value": row.tx_hash}
    assert sealed[1]["what"]["identifier"] == {"system": fhir.LEDGER_BLOCK, "value": str(row.transaction.block_height)}
    assert len(provenance[f"urn:uuid:{second}"]["entity"]) == 1  # not in a block yet: no height to name
    # The patient's own export is not a read by someone else: nothing in the access log.
    assert db.session.scalar(select(func.count()).select_from(AccessEntry)) == 0


def test_plaintext_stays_out_of_everything_but_the_answer(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person
) -> None:
    write(client, doctor, patient, notes="Secret-note-4711")
    download(client.get("/api/v1/records/fhir", headers=patient.headers), FHIR_JSON)
    stored = b"".join(t.encoded for t in db.session.scalars(select(LedgerTransaction)))
    assert b"Secret-note-4711" not in stored


def test_a_doctors_export_holds_what_the_grant_covers_and_logs_each_read(
    app: Flask, client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    attachment = {"filename": "ecg.pdf", "content_type": "application/pdf",
                  "data": base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()}  # fmt: skip
    covered = write(client, other_doctor, patient, title="Cardiology letter", category="cardiology",
                    attachments=[attachment])  # fmt: skip
    hidden = write(client, other_doctor, patient, title="Asthma review", category="respiratory")
    url = f"/api/v1/patients/{patient.id}/fhir"
    refused = client.get(url, headers=doctor.headers)
    assert refused.status_code == 403, refused.json
    scope = {"type": "categories", "categories": ["cardiology"]}
    answer = client.post("/api/v1/grants", json={"doctor_id": doctor.id, "scope": scope}, headers=patient.headers)
    assert answer.status_code == 201, answer.json
    resources = valid_bundle(download(client.get(url, headers=doctor.headers), FHIR_JSON))
    assert [c["id"] for c in resources["Composition"]] == [covered]
    assert [c["title"] for c in resources["Composition"]] == ["Cardiology letter"]
    assert hidden not in json.dumps(resources)
    assert [p["id"] for p in resources["Practitioner"]] == [other_doctor.id]
    logged = db.session.scalars(select(AccessEntry).where(AccessEntry.reader_id.isnot(None))).all()
    assert sorted((e.record_id, e.part, e.mode) for e in logged) == [(covered, -1, "grant"), (covered, 0, "grant")]
    log = client.get("/api/v1/access-log", headers=patient.headers).json["entries"]
    assert {(e["record"]["id"], e["part"]) for e in log} == {(covered, "record"), (covered, "attachment 1")}


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [("doctor", "/api/v1/records/fhir", 403), ("patient", "/api/v1/patients/{patient}/fhir", 403),
     ("other_patient", "/api/v1/access-log?format=csv", 200), ("doctor", "/api/v1/access-log?format=fhir", 403),
     (None, "/api/v1/records/fhir", 401), ("doctor", "/api/v1/patients/nobody/fhir", 404)],
)  # fmt: skip
def test_forbidden_exports(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person, who: str | None, path: str,
    status: int,
) -> None:  # fmt: skip
    write(client, doctor, patient)
    people = {"doctor": doctor, "patient": patient, "other_patient": other_patient}
    headers = people[who].headers if who else {}
    answer = client.get(path.format(patient=patient.id), headers=headers)
    assert answer.status_code == status, answer.get_data(as_text=True)[:300]
    if who == "other_patient":  # someone else's log holds nothing of this patient's
        assert answer.get_data(as_text=True).splitlines()[1:] == []


def test_access_log_as_audit_events_and_csv_matches_the_log(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person
) -> None:
    intruder = make_person(client, "doctor", "dr.eve", '=HYPERLINK("http://x.example","Dr Eve")')
    record = write(client, intruder, patient)
    client.post("/api/v1/grants", json={"doctor_id": doctor.id}, headers=patient.headers)
    for _ in range(2):
        assert client.get(f"/api/v1/records/{record}", headers=doctor.headers).status_code == 200
    assert client.get(f"/api/v1/records/{record}", headers=intruder.headers).status_code == 200
    log = client.get("/api/v1/access-log", headers=patient.headers).json["entries"]
    assert len(log) == 3
    bundle = download(client.get("/api/v1/access-log?format=fhir", headers=patient.headers), FHIR_JSON)
    events = valid_bundle(bundle)["AuditEvent"]
    assert [e["id"] for e in events] == [e["id"] for e in log]
    for event, entry in zip(events, log, strict=True):
        assert event["agent"][0]["who"]["identifier"]["value"] == entry["reader"]["id"]
        assert event["entity"][0]["what"]["identifier"]["value"] == record
        details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
        assert details["ledger-transaction"] == entry["tx_hash"]
        assert details["access-mode"] == entry["mode"]
        assert event["recorded"][:19] == entry["at"][:19]
    rows = list(csv.DictReader(io.StringIO(download(
        client.get("/api/v1/access-log?format=csv", headers=patient.headers), "text/csv"))))  # fmt: skip
    assert [(r["reader_id"], r["mode"], r["record_id"], r["part"], r["tx_hash"]) for r in rows] == [
        (e["reader"]["id"], e["mode"], e["record"]["id"], e["part"], e["tx_hash"]) for e in log
    ]
    assert rows[0]["reader"].startswith("'=HYPERLINK")  # shown as text, never run as a formula
    paged = client.get("/api/v1/access-log?format=csv&limit=5", headers=patient.headers)
    assert paged.status_code == 422, paged.json
    assert client.get("/api/v1/access-log?format=xml", headers=patient.headers).status_code == 422


# -- import -------------------------------------------------------------------------------------

# Bundles as other EHRs send them, written by hand after the FHIR R4 specification's examples
# (Bundle, Composition, Condition, Observation, MedicationRequest, DocumentReference): their own
# Patient, Practitioner and Encounter, codes in more than one system, a `document` Bundle.
SAMPLES = Path(__file__).with_name("fhir_samples")
EHR_BUNDLE: dict[str, Any] = json.loads((SAMPLES / "ehr-transfer.json").read_text())


def import_bundle(client: FlaskClient, doctor: Person, patient: Person, document: Any) -> Any:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return client.post(f"/api/v1/patients/{patient.id}/records", data=body, headers={**doctor.headers,
                       "Content-Type": FHIR_JSON})  # fmt: skip


def test_import_of_another_ehrs_bundle(client: FlaskClient, doctor: Person, patient: Person) -> None:
    answer = import_bundle(client, doctor, patient, EHR_BUNDLE)
    assert answer.status_code == 201, answer.json
    record = client.get(f"/api/v1/records/{answer.json['id']}", headers=patient.headers).json
    assert record["title"] == "Imported record"
    assert record["category"] == "general"
    assert [d["code"] for d in record["diagnoses"]] == ["J45.909"]
    assert [s["id"] for s in record["symptoms"]] == ["HP:0002094"]
    assert record["prescriptions"] == [
        {"drug": "Albuterol inhaler", "dose": "2 puffs", "frequency": "2 per 1 d", "duration": "30 days"}
    ]
    assert [(a["filename"], a["content_type"]) for a in record["attachments"]] == [("spirometry.png", "image/png")]
    assert record["author"]["id"] == doctor.id  # the importing doctor signs the record


def test_import_of_a_discharge_summary_document(client: FlaskClient, doctor: Person, patient: Person) -> None:
    answer = import_bundle(client, doctor, patient, json.loads((SAMPLES / "discharge-summary.json").read_text()))
    assert answer.status_code == 201, answer.json
    record = client.get(f"/api/v1/records/{answer.json['id']}", headers=patient.headers).json
    assert record["title"] == "Discharge summary: community-acquired pneumonia"
    assert record["category"] == "respiratory"
    assert record["notes"] == (
        "Admitted with fever and productive cough.\nImproved on IV antibiotics; switched to oral on day 3."
    )
    assert [d["code"] for d in record["diagnoses"]] == ["J18.9"]
    assert record["prescriptions"] == [
        {"drug": "Amoxicillin 500 mg capsule", "dose": "500 mg", "frequency": "three times daily", "duration": "5 days"}
    ]


def _broken(*changes: tuple[int, dict[str, Any]], extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    document = copy.deepcopy(EHR_BUNDLE)
    for n, resource in changes:
        document["entry"][n]["resource"] = resource
    document["entry"] += [{"resource": r} for r in extra or []]
    return document


def test_bad_bundles_are_refused_per_resource_and_nothing_is_stored(
    client: FlaskClient, doctor: Person, patient: Person
) -> None:
    subject = {"reference": "urn:uuid:7d0e5a3e-1f5b-4e8a-9f53-0c2a1e0a1b01"}
    document = _broken(
        (3, {"resourceType": "Condition", "id": "c1", "subject": subject,
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "X99.999"}]}}),
        (4, {"resourceType": "Observation", "id": "bp", "status": "final", "subject": subject,
             "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}}),
        extra=[
            {"resourceType": "Condition", "id": "c2", "subject": subject,
             "code": {"coding": [{"system": "http://snomed.info/sct", "code": "195967001"}]}},
            {"resourceType": "AllergyIntolerance", "id": "a1", "patient": subject},
            {"resourceType": "DocumentReference", "id": "d2", "status": "current",
             "content": [{"attachment": {"url": "http://ehr.example/doc/1"}}]},
        ],
    )  # fmt: skip
    stored = (select(func.count()).select_from(Record), select(func.count()).select_from(LedgerTransaction))
    before = [db.session.scalar(q) for q in stored]
    answer = import_bundle(client, doctor, patient, document)
    assert answer.status_code == 422, answer.json
    error = answer.json["error"]
    assert error["code"] == "fhir_rejected"
    assert error["fields"] == {
        "entry.3 (Condition/c1)": "unknown ICD-10-CM code 'X99.999'",
        "entry.4 (Observation/bp)": "no HPO code (it has http://loinc.org)",
        "entry.7 (Condition/c2)": "no ICD-10-CM code (it has http://snomed.info/sct)",
        "entry.8 (AllergyIntolerance/a1)": "a MedLedger record does not hold AllergyIntolerance resources; "
        "remove it to import the rest",
        "entry.9 (DocumentReference/d2)": "an attachment must be embedded (`data`); links are not followed",
    }
    assert [db.session.scalar(q) for q in stored] == before


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 422, "Bundle"),
        (json.dumps({"resourceType": "Patient"}).encode(), 422, "Bundle"),
        (json.dumps({"resourceType": "Bundle", "type": "collection", "entry": []}).encode(), 422, "Bundle"),
        (json.dumps(_broken((3, {"resourceType": "Condition", "id": "c1", "subject": "not a reference"}))).encode(),
         422, "entry.3 (Condition/c1)"),
        (json.dumps(_broken((4, {"resourceType": "Observation", "id": "o1", "status": "final",
                                 "code": {"coding": [{"system": fhir.HPO, "code": "HP:0002094"}]},
                                 "valueCodeableConcept": {"coding": [{"system": fhir.LOINC, "code": fhir.ABSENT}]}}))
                    ).encode(), 422, "entry.4 (Observation/o1)"),
        (json.dumps(_broken(extra=[{"resourceType": "Patient", "id": "p2"}])).encode(), 422, "Bundle"),
    ],
)  # fmt: skip
def test_malformed_bundles(
    client: FlaskClient, doctor: Person, patient: Person, body: bytes, status: int, where: str | None
) -> None:
    answer = import_bundle(client, doctor, patient, body)
    assert answer.status_code == status, answer.json
    if where is not None:
        assert where in answer.json["error"]["fields"], answer.json
    assert db.session.scalar(select(func.count()).select_from(Record)) == 0


def test_only_doctors_import(client: FlaskClient, doctor: Person, patient: Person) -> None:
    assert import_bundle(client, patient, patient, EHR_BUNDLE).status_code == 403
    answer = client.post("/api/v1/patients/nobody/records", data=json.dumps(EHR_BUNDLE),
                         headers={**doctor.headers, "Content-Type": FHIR_JSON})  # fmt: skip
    assert answer.status_code == 404


def test_round_trip_gives_the_same_clinical_content(
    app: Flask, client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    attachment = {"filename": "peak flow <1>.png", "content_type": "image/png", "data": base64.b64encode(PNG).decode()}
    notes = 'Wheeze on exertion.\nPeak flow 420 L/min.\n<b>not markup</b> & "quotes"'
    original = write(
        client,
        doctor,
        patient,
        notes=notes,
        attachments=[attachment],
        prescriptions=[{"drug": "Salbutamol", "dose": "100 mcg", "frequency": "", "duration": "30 days"}],
    )
    exported = download(client.get("/api/v1/records/fhir", headers=patient.headers), FHIR_JSON)
    answer = import_bundle(client, other_doctor, patient, exported)
    assert answer.status_code == 201, answer.json
    again = client.get(f"/api/v1/records/{answer.json['id']}", headers=patient.headers).json
    first = client.get(f"/api/v1/records/{original}", headers=patient.headers).json
    for key in ("title", "category", "diagnoses", "symptoms", "notes", "prescriptions"):
        assert again[key] == first[key], key
    assert [(a["filename"], a["content_type"], a["size"]) for a in again["attachments"]] == [
        (a["filename"], a["content_type"], a["size"]) for a in first["attachments"]
    ]
    copy_of = client.get(f"/api/v1/records/{answer.json['id']}/attachments/0", headers=patient.headers)
    assert copy_of.data == PNG


def test_export_of_the_demo_patients_validates(app: Flask, client: FlaskClient) -> None:
    """`make run`'s demo data: every demo patient's own export, and Dr. Lindqvist's export of Bob
    under the grant Bob gave him."""
    demo.seed()

    def sign_in(username: str) -> dict[str, str]:
        answer = client.post("/api/v1/auth/token", json={"username": username, "password": demo.PASSWORD})
        assert answer.status_code == 200, answer.json
        return {"Authorization": f"Bearer {answer.json['token']}"}

    written = {patient: [f["title"] for _, p, f in demo.RECORDS if p == patient] for _, patient, *_ in demo.USERS}
    for role, username, *_ in demo.USERS:
        if role != "patient":
            continue
        resources = valid_bundle(download(client.get("/api/v1/records/fhir", headers=sign_in(username)), FHIR_JSON))
        assert sorted(c["title"] for c in resources.get("Composition", [])) == sorted(written[username]), username
        assert resources["Patient"][0]["birthDate"] == demo.BORN[username]
    bob = db.session.scalar(select(User.public_id).where(User.username == "bob"))
    granted = client.get(f"/api/v1/patients/{bob}/fhir", headers=sign_in("dr.lindqvist"))
    resources = valid_bundle(download(granted, FHIR_JSON))
    assert [c["title"] for c in resources["Composition"]] == ["Hypertension follow-up"]
