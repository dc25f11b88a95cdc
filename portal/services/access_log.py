"""Who read what, when: the patient's view of the access entries."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from portal.models import AccessEntry, Record
from portal.services import paging
from portal.services.accounts import Actor
from portal.services.errors import Forbidden


def for_patient(actor: Actor, limit: int = paging.DEFAULT_LIMIT, offset: int = 0) -> paging.Page[AccessEntry]:
    """A page of the reads of the patient's records by someone else, newest first (ties by id),
    with the count of them all."""
    if actor.user.role != "patient":
        raise Forbidden("Only patients see the access log of their records.")
    return paging.paged(
        select(AccessEntry)
        .join(Record, AccessEntry.record_id == Record.id)
        .where(Record.patient_id == actor.user.id)
        .order_by(AccessEntry.at.desc(), AccessEntry.id.desc())
        .options(selectinload(AccessEntry.record), selectinload(AccessEntry.reader)),
        limit,
        offset,
    )
