"""Who read what, when: the patient's view of the access entries, with the events on their own
account they must hear of (a password reset with the recovery key)."""

from __future__ import annotations

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import selectinload

from portal.models import AccessEntry, Record
from portal.services import paging
from portal.services.accounts import Actor
from portal.services.errors import Forbidden


def for_patient(actor: Actor, limit: int = paging.DEFAULT_LIMIT, offset: int = 0) -> paging.Page[AccessEntry]:
    """A page of the reads of the patient's records by someone else, and of the entries on their
    own account (no record), newest first (ties by id), with the count of them all."""
    if actor.user.role != "patient":
        raise Forbidden("Only patients see the access log of their records.")
    return paging.paged(
        select(AccessEntry)
        .outerjoin(Record, AccessEntry.record_id == Record.id)
        .where(
            or_(
                Record.patient_id == actor.user.id,
                and_(AccessEntry.record_id.is_(None), AccessEntry.reader_id == actor.user.id),
            )
        )
        .order_by(AccessEntry.at.desc(), AccessEntry.id.desc())
        .options(selectinload(AccessEntry.record), selectinload(AccessEntry.reader)),
        limit,
        offset,
    )
