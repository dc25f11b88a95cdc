"""Opened records as one FHIR R4 Bundle of type `collection` (docs/fhir.md, Export).

Each record becomes a Composition (title, category, notes) whose sections point at its
Conditions (ICD-10-CM), Observations (HPO phenotypes, as the Phenomics Exchange guide codes
them), MedicationRequests and DocumentReferences (attachments embedded as base64), and a
Provenance naming the author, their hospital, the ledger transaction and its block. Every
reference is a `urn:uuid:` full URL inside the Bundle; ids derived from a record's id are stable,
so exporting twice gives the same resources."""

from __future__ import annotations

import base64
import html
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from core import fhir

_NS = uuid.UUID("6f1c1f3e-8a0b-4c57-9a55-0d4c3e7b2a10")  # namespace of the derived resource ids

Resource = dict[str, Any]
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"


@dataclass(frozen=True)
class Author:
    id: str
    name: str
    hospital: str | None = None
    licence: str | None = None


@dataclass(frozen=True)
class File:
    n: int
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class OpenedRecord:
    """A record as its reader opened it: `body` holds title, category, diagnoses ({code,
    description}), symptoms ({id, name}), notes and prescriptions ({drug, dose, frequency,
    duration}); `files` the attachments read with it."""

    id: str
    created_at: datetime
    author: Author
    body: Mapping[str, Any]
    tx_hash: str
    block_height: int | None
    files: Sequence[File] = field(default_factory=tuple)


@dataclass(frozen=True)
class Subject:
    id: str
    name: str
    birth_date: date | None = None


def derived_id(*parts: str) -> str:
    return str(uuid.uuid5(_NS, "/".join(parts)))


def instant(moment: datetime) -> str:
    """A FHIR instant (UTC, milliseconds) from a naive-UTC or aware datetime."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ref(resource: Resource, display: str | None = None) -> dict[str, str]:
    out = {"reference": f"urn:uuid:{resource['id']}"}
    if display:
        out["display"] = display
    return out


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def narrative(text: str) -> dict[str, str]:
    """Text as generated XHTML narrative, every character escaped (notes are free text)."""
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><pre>{html.escape(text)}</pre></div>',
    }


def _patient(subject: Subject) -> Resource:
    patient: Resource = {
        "resourceType": "Patient",
        "id": subject.id,
        "identifier": [{"system": fhir.USER_ID, "value": subject.id}],
        "name": [{"text": subject.name}],
    }
    if subject.birth_date is not None:
        patient["birthDate"] = subject.birth_date.isoformat()
    return patient


def _authorship(author: Author) -> tuple[Resource, Resource | None, Resource | None]:
    practitioner: Resource = {
        "resourceType": "Practitioner",
        "id": author.id,
        "identifier": [{"system": fhir.USER_ID, "value": author.id}],
        "name": [{"text": author.name}],
    }
    if author.licence:
        practitioner["qualification"] = [{"code": {"text": "Licence"}, "identifier": [{"value": author.licence}]}]
    if not author.hospital:
        return practitioner, None, None
    organization = {"resourceType": "Organization", "id": derived_id("organization", author.hospital),
                    "name": author.hospital}  # fmt: skip
    role = {
        "resourceType": "PractitionerRole",
        "id": derived_id("role", author.id, author.hospital),
        "practitioner": ref(practitioner, author.name),
        "organization": ref(organization, author.hospital),
    }
    return practitioner, organization, role


def _prescription_text(item: Mapping[str, str]) -> str:
    parts = [item["drug"], item.get("dose") or "", item.get("frequency") or ""]
    if item.get("duration"):
        parts.append(f"for {item['duration']}")
    return ", ".join(p for p in parts if p)


def _record(record: OpenedRecord, patient: Resource, author: Resource, organization: Resource | None) -> list[Resource]:
    body, when = record.body, instant(record.created_at)
    subject = ref(patient, patient["name"][0]["text"])
    by = ref(author, record.author.name)
    conditions = [
        {
            "resourceType": "Condition",
            "id": derived_id(record.id, "condition", d["code"]),
            "clinicalStatus": {"coding": [coding(f"{TERMINOLOGY}/condition-clinical", "active")]},
            "verificationStatus": {"coding": [coding(f"{TERMINOLOGY}/condition-ver-status", "confirmed")]},
            "category": [{"coding": [coding(f"{TERMINOLOGY}/condition-category", "encounter-diagnosis")]}],
            "code": {"coding": [coding(fhir.ICD10CM, d["code"], d["description"])], "text": d["description"]},
            "subject": subject,
            "recordedDate": when,
            "recorder": by,
        }
        for d in body["diagnoses"]
    ]
    observations = [
        {
            "resourceType": "Observation",
            "id": derived_id(record.id, "phenotype", s["id"]),
            "status": "final",
            "category": [{"coding": [coding(f"{TERMINOLOGY}/observation-category", "exam")]}],
            "code": {"coding": [coding(fhir.HPO, s["id"], s["name"])], "text": s["name"]},
            "subject": subject,
            "effectiveDateTime": when,
            "performer": [by],
            "valueCodeableConcept": {"coding": [coding(fhir.LOINC, *fhir.PRESENT)]},
        }
        for s in body["symptoms"]
    ]
    medications = []
    for n, item in enumerate(body["prescriptions"]):
        dosage: dict[str, Any] = {"text": _prescription_text(item)}
        if item.get("frequency"):
            dosage["timing"] = {"code": {"text": item["frequency"]}}
        written = [{"url": k, "valueString": item[k]} for k in ("drug", "dose", "frequency", "duration") if item.get(k)]
        medications.append(
            {
                "resourceType": "MedicationRequest",
                "id": derived_id(record.id, "prescription", str(n)),
                "extension": [{"url": fhir.PRESCRIPTION, "extension": written}],
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"text": item["drug"]},
                "subject": subject,
                "authoredOn": when,
                "requester": by,
                "dosageInstruction": [dosage],
            }
        )
    documents = [
        {
            "resourceType": "DocumentReference",
            "id": derived_id(record.id, "attachment", str(f.n)),
            "status": "current",
            "subject": subject,
            "date": when,
            "author": [by],
            "description": f.filename,
            "content": [
                {
                    "attachment": {
                        "contentType": f.content_type,
                        "title": f.filename,
                        "size": len(f.data),
                        "data": base64.b64encode(f.data).decode(),
                    }
                }
            ],
        }
        for f in record.files
    ]
    sections = []
    for (code, title), entries in (
        (fhir.SECTION_DIAGNOSES, conditions),
        (fhir.SECTION_PHENOTYPES, observations),
        (fhir.SECTION_MEDICATIONS, medications),
        (fhir.SECTION_FILES, documents),
    ):
        if entries:
            sections.append({"title": title, "code": {"coding": [coding(fhir.LOINC, code, title)]},
                             "entry": [ref(e) for e in entries]})  # fmt: skip
    if body.get("notes"):
        code, title = fhir.SECTION_NOTES
        sections.append({"title": "Notes", "code": {"coding": [coding(fhir.LOINC, code, title)]},
                         "text": narrative(body["notes"])})  # fmt: skip
    composition: Resource = {
        "resourceType": "Composition",
        "id": record.id,
        "identifier": {"system": fhir.RECORD_ID, "value": record.id},
        "status": "final",
        "type": {"coding": [coding(fhir.LOINC, *fhir.RECORD_TYPE)]},
        "category": [{"coding": [coding(fhir.CATEGORY, body["category"])]}],
        "subject": subject,
        "date": when,
        "author": [by],
        "title": body["title"],
        "section": sections,
    }
    entities = [{"role": "source", "what": {"identifier": {"system": fhir.LEDGER_TX, "value": record.tx_hash}}}]
    if record.block_height is not None:
        entities.append(
            {"role": "source", "what": {"identifier": {"system": fhir.LEDGER_BLOCK, "value": str(record.block_height)}}}
        )
    agent: dict[str, Any] = {
        "type": {"coding": [coding(f"{TERMINOLOGY}/provenance-participant-type", "author")]},
        "who": by,
    }
    if organization is not None:
        agent["onBehalfOf"] = ref(organization, organization["name"])
    clinical = [*conditions, *observations, *medications, *documents]
    provenance = {
        "resourceType": "Provenance",
        "id": derived_id(record.id, "provenance"),
        "target": [ref(composition), *(ref(r) for r in clinical)],
        "recorded": when,
        "agent": [agent],
        "entity": entities,
    }
    return [composition, *clinical, provenance]


def problem_outcome(problems: Mapping[str, str]) -> Resource:
    """What could not be exported (a record whose copy is damaged, a grant that failed), so a
    reader of the Bundle knows it is incomplete and why."""
    return {
        "resourceType": "OperationOutcome",
        "id": derived_id("outcome", *sorted(problems)),
        "issue": [
            {"severity": "warning", "code": "incomplete", "diagnostics": f"Record {record}: {message}"}
            for record, message in problems.items()
        ],
    }


def record_bundle(
    subject: Subject, records: Sequence[OpenedRecord], *, now: datetime, problems: Mapping[str, str] | None = None
) -> Resource:
    """The Bundle holding `subject` and `records` (oldest first), with whoever wrote them."""
    patient = _patient(subject)
    resources: list[Resource] = [patient]
    people: dict[str, tuple[Resource, Resource | None]] = {}
    for record in sorted(records, key=lambda r: (r.created_at, r.id)):
        if record.author.id not in people:
            practitioner, organization, role = _authorship(record.author)
            people[record.author.id] = (practitioner, organization)
            resources += [practitioner, *(r for r in (organization, role) if r is not None)]
        practitioner, organization = people[record.author.id]
        resources += _record(record, patient, practitioner, organization)
    if problems:
        resources.append(problem_outcome(problems))
    return bundle(resources, now=now, bundle_id=derived_id("bundle", subject.id, instant(now)))


def bundle(resources: Sequence[Resource], *, now: datetime, bundle_id: str) -> Resource:
    """A `collection` Bundle of `resources`, each once (an Organization shared by two authors)."""
    unique = list({(r["resourceType"], r["id"]): r for r in resources}.values())
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {"lastUpdated": instant(now)},
        "type": "collection",
        "timestamp": instant(now),
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in unique],
    }
