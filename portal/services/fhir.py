"""FHIR R4 export of records and of the access log, and import of a Bundle as a new record
(docs/fhir.md). The FHIR shapes are core/fhir's; this module decides who may have what, reads
through the same checks and access log as every other read, and writes through `create_record`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from core.clinical import Vocabulary
from core.fhir import audit, export
from core.fhir.importer import BundleProblems, read_bundle
from portal.extensions import db
from portal.models import Record, User
from portal.services import access_log, records
from portal.services.accounts import Actor, get_user
from portal.services.context import NodeContext
from portal.services.errors import Forbidden, ServiceError, ValidationFailed
from portal.services.grants import visible_records
from portal.services.inputs import parse_json


class FhirRejected(ValidationFailed):
    """A Bundle that cannot become a record: `fields` maps each resource ("entry.3
    (Condition/abc)", or "Bundle") to what is wrong with it, as the API's error shows fields."""

    code = "fhir_rejected"

    def __init__(self, problems: dict[str, str]) -> None:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"The FHIR Bundle was not imported: {count} (see `fields`).")
        self.fields = problems

    @property
    def problems(self) -> list[dict[str, str]]:
        return [{"resource": place, "message": message} for place, message in self.fields.items()]


def _subject(patient: User) -> export.Subject:
    return export.Subject(patient.public_id, patient.display_name, patient.date_of_birth)


def _opened(actor: Actor, record: Record, *, node: NodeContext, now: datetime) -> export.OpenedRecord:
    """One record read in full by `actor` (each part a logged read when they are not the patient)."""
    read = records.get_record(actor, record.id, node=node, now=now)
    files = []
    for item in read["attachments"]:
        meta, data = records.get_attachment(actor, record.id, item["n"], node=node, now=now)
        files.append(export.File(item["n"], meta["filename"], meta["content_type"], data))
    author = record.author
    return export.OpenedRecord(
        id=record.id,
        created_at=record.created_at,
        author=export.Author(author.public_id, author.display_name, read["author"]["hospital"], author.licence_number),
        body=read,
        tx_hash=record.tx_hash,
        block_height=read["block_height"],
        files=files,
    )


def _bundle(actor: Actor, patient: User, chosen: list[Record], *, node: NodeContext, now: datetime) -> dict[str, Any]:
    opened, problems = [], {}
    for record in chosen:
        try:
            opened.append(_opened(actor, record, node=node, now=now))
        except ServiceError as exc:  # a damaged copy or a failed grant: say so, export the rest
            db.session.rollback()
            problems[record.id] = exc.message
    return export.record_bundle(_subject(patient), opened, now=now, problems=problems)


def export_own(actor: Actor, *, node: NodeContext, now: datetime) -> dict[str, Any]:
    """The patient's whole record as one Bundle."""
    if actor.user.role != "patient":
        raise Forbidden("Only a patient exports their own record; doctors export a patient's.")
    chosen = list(db.session.scalars(select(Record).where(Record.patient_id == actor.user.id)))
    return _bundle(actor, actor.user, chosen, node=node, now=now)


def export_for_doctor(actor: Actor, patient_id: object, *, node: NodeContext, now: datetime) -> dict[str, Any]:
    """What the doctor's access covers now (authored, granted or emergency), every record and
    attachment included being a read in the patient's access log, as opening it would be."""
    patient = get_user(patient_id, role="patient")
    chosen = list(visible_records(actor, patient.public_id, node=node, now=now).items)
    return _bundle(actor, patient, chosen, node=node, now=now)


def access_log_bundle(actor: Actor, *, now: datetime) -> dict[str, Any]:
    return audit.audit_bundle(access_log.all_for_patient(actor), actor.user.public_id, now=now)


def access_log_csv(actor: Actor) -> str:
    return audit.audit_csv(access_log.all_for_patient(actor))


def import_bundle(
    actor: Actor,
    patient_id: object,
    document: bytes,
    *,
    vocabulary: Vocabulary,
    limits: records.Limits,
    node: NodeContext,
    now: datetime,
) -> records.Written:
    """A FHIR Bundle (JSON bytes) from another EHR as one new sealed, signed record by `actor`,
    or FhirRejected with every problem, per resource, and nothing stored."""
    if actor.user.role != "doctor":
        raise Forbidden("Only doctors write records.")
    get_user(patient_id, role="patient")  # 404 before reading the body
    try:
        found = read_bundle(parse_json(document), vocabulary, records.CATEGORIES)
    except BundleProblems as exc:
        raise FhirRejected(exc.problems) from None
    files = [records.NewAttachment(name, content_type, data) for name, content_type, data in found.files]
    return records.create_record(
        actor, patient_id, found.fields, files, vocabulary=vocabulary, limits=limits, node=node, now=now
    )
