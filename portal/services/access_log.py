"""Who read what, when: the patient's view of the access entries."""

from __future__ import annotations

from sqlalchemy import select

from portal.extensions import db
from portal.models import AccessEntry, Record
from portal.services.accounts import Actor
from portal.services.errors import Forbidden


def for_patient(actor: Actor, limit: int = 50, offset: int = 0) -> list[AccessEntry]:
    """A page of the reads of the patient's records by someone else, newest first."""
    if actor.user.role != "patient":
        raise Forbidden("Only patients see the access log of their records.")
    return list(
        db.session.scalars(
            select(AccessEntry)
            .join(Record, AccessEntry.record_id == Record.id)
            .where(Record.patient_id == actor.user.id)
            .order_by(AccessEntry.at.desc(), AccessEntry.id)
            .limit(limit)
            .offset(offset)
        )
    )
