"""Archiving final blocks to FTP, with a durable outbox, and reading the archive back.

Each final block gets an outbox row (pending). The archiver uploads the oldest due
rows in height order; a failure marks the row failed with the error and retries it
with exponential backoff, and stops the round, so blocks always arrive in order.
Nothing is lost when the server is down or the node restarts: the outbox is in the
database, and an upload is atomic on the server (temporary name, size and hash
checked, then renamed), so an interrupted upload never counts as archived.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from core.archive import ArchiveReport, Limits, archive_name, blocks_for_restore, build_zip, verify_archive
from portal.extensions import db
from portal.ftp import ArchiveStore, TransportError
from portal.models import ArchiveEntry
from portal.services import ledger

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 300
BATCH = 50


def enqueue_final() -> int:
    """Add an outbox row for every final block that has none; returns how many were added."""
    final = ledger.final_height()
    last = db.session.scalar(select(func.max(ArchiveEntry.height)))
    start = 0 if last is None else last + 1
    added = 0
    for stored in ledger.stored_blocks(start):
        if stored.height > final:
            break
        db.session.add(ArchiveEntry(height=stored.height, hash=stored.hash))
        added += 1
    db.session.commit()
    return added


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS))


def upload_due(connect: Callable[[], ArchiveStore], now: datetime) -> int:
    """Upload due outbox rows in height order until one fails; returns how many were uploaded."""
    due = list(
        db.session.scalars(
            select(ArchiveEntry).where(ArchiveEntry.status != "uploaded").order_by(ArchiveEntry.height).limit(BATCH)
        )
    )
    if not due or due[0].next_attempt_at > now:
        return 0
    uploaded = 0
    try:
        with connect() as store:
            for entry in due:
                [stored] = list(ledger.stored_blocks(entry.height, batch=1))[:1]
                store.upload(archive_name(entry.height, entry.hash), build_zip(stored))
                entry.status, entry.uploaded_at, entry.last_error = "uploaded", now, None
                db.session.commit()
                uploaded += 1
    except TransportError as exc:
        entry = next(e for e in due if e.status != "uploaded")
        entry.status, entry.attempts = "failed", entry.attempts + 1
        entry.last_error = str(exc)[:500]
        entry.next_attempt_at = now + _backoff(entry.attempts)
        db.session.commit()
        log.warning("archiving block %d failed (attempt %d): %s", entry.height, entry.attempts, exc)
    return uploaded


def status(now: datetime) -> dict[str, Any]:
    """Counts by status, the lag behind the final height, and the failures with their errors."""
    counts = dict(db.session.execute(select(ArchiveEntry.status, func.count()).group_by(ArchiveEntry.status)).all())
    archived = db.session.scalar(select(func.min(ArchiveEntry.height)).where(ArchiveEntry.status != "uploaded"))
    final = ledger.final_height()
    through = (archived - 1) if archived is not None else db.session.scalar(select(func.max(ArchiveEntry.height)))
    failures = db.session.scalars(
        select(ArchiveEntry).where(ArchiveEntry.status == "failed").order_by(ArchiveEntry.height).limit(20)
    )
    return {
        "final_height": final,
        "archived_through": through if through is not None else -1,
        "lag": final - (through if through is not None else -1),
        "pending": counts.get("pending", 0),
        "uploaded": counts.get("uploaded", 0),
        "failed": counts.get("failed", 0),
        "failures": [
            {"height": f.height, "attempts": f.attempts, "error": f.last_error,
             "next_attempt_at": f.next_attempt_at.isoformat() + "Z"}
            for f in failures
        ],
    }  # fmt: skip


def download_all(store: ArchiveStore, limits: Limits) -> list[tuple[str, bytes]]:
    """Every file of the archive folder (each bounded by the zip size limit)."""
    return [(name, store.download(name, limits.max_zip_bytes)) for name in store.list()]


def verify(store: ArchiveStore, limits: Limits | None = None) -> ArchiveReport:
    limits = limits or Limits()
    return verify_archive(download_all(store, limits), limits)


def restore(store: ArchiveStore, now: datetime, limits: Limits | None = None) -> int:
    """Rebuild this (empty) node's ledger from the archive; returns the number of blocks."""
    limits = limits or Limits()
    if ledger.tip() is not None:
        raise ValueError("the target database already has a ledger; restore needs an empty one")
    blocks = blocks_for_restore(download_all(store, limits), limits)
    ledger.store_raw(blocks, now)
    return len(blocks)
