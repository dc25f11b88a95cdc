"""Who read what, when: the patient's view of the access entries, with the events on their own
account they must hear of (a password reset with the recovery key)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import selectinload

from core.fhir.audit import LogEntry
from portal.extensions import db
from portal.models import AccessEntry, Record
from portal.services import federation, paging
from portal.services.accounts import Actor
from portal.services.errors import Forbidden

# What an entry with no record (an event on the patient's own account) says, by its mode.
ACCOUNT_EVENTS = {
    "recovery_key": "Password reset with your recovery key",
    "escrow": "Password reset at your hospital's front desk (identity checked in person, two approvals)",
}


def part_label(part: int) -> str:
    """Which part of a record was read: "record" or "attachment N" (counted from 1)."""
    return "record" if part < 0 else f"attachment {part + 1}"


def for_patient(actor: Actor, limit: int = paging.DEFAULT_LIMIT, offset: int = 0) -> paging.Page[AccessEntry]:
    """A page of the reads of the patient's records by someone else, and of the entries on their
    own account (no record), newest first (ties by id), with the count of them all."""
    return paging.paged(_query(actor), limit, offset)


def all_for_patient(actor: Actor) -> list[LogEntry]:
    """The patient's whole access log, newest first, as the exports (FHIR AuditEvent, CSV) show it."""
    return [log_entry(e) for e in db.session.scalars(_query(actor))]


def log_entry(entry: AccessEntry) -> LogEntry:
    reader = entry.reader
    return LogEntry(
        id=entry.id,
        at=entry.at,
        reader_id=reader.public_id,
        reader_name=reader.display_name,
        reader_hospital=reader.hospital or federation.hospital_of(reader.home_node),
        mode=entry.mode,
        event=ACCOUNT_EVENTS.get(entry.mode) if entry.record_id is None else None,
        record_id=entry.record_id,
        part=part_label(entry.part),
        grant_id=entry.grant_id,
        tx_hash=entry.tx_hash,
    )


def _query(actor: Actor) -> Select[Any]:
    if actor.user.role != "patient":
        raise Forbidden("Only patients see the access log of their records.")
    return (
        select(AccessEntry)
        .outerjoin(Record, AccessEntry.record_id == Record.id)
        .where(
            or_(
                Record.patient_id == actor.user.id,
                and_(AccessEntry.record_id.is_(None), AccessEntry.reader_id == actor.user.id),
            )
        )
        .order_by(AccessEntry.at.desc(), AccessEntry.id.desc())
        .options(selectinload(AccessEntry.record), selectinload(AccessEntry.reader))
    )
