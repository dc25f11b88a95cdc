"""Archiving final blocks to FTP, with a durable outbox, and reading the archive back.

Each final block gets an outbox row (pending). The archiver uploads the oldest due
rows in height order; a failure marks the row failed with the error and retries it
with exponential backoff, and stops the round, so blocks always arrive in order.
Nothing is lost when the server is down or the node restarts: the outbox is in the
database, and an upload is atomic on the server (temporary name, size and hash
checked, then renamed), so an interrupted upload never counts as archived.

A block's zip carries the ciphertext of every attachment its records list. An attachment
written at another hospital may not be here yet: it is fetched from a peer (and kept, once
it hashes to the hash on the ledger). If no peer has it, the block fails like a transport
error and is retried, so no block is archived without its attachments.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from core.archive import (
    ArchivedBlock,
    ArchiveReport,
    Limits,
    archive_name,
    attachment_hashes,
    blocks_for_restore,
    build_zip,
    verify_archive,
)
from core.errors import ArchiveError
from core.ledger import StoredBlock
from portal.extensions import db
from portal.ftp import ArchiveStore, TransportError
from portal.models import ArchiveEntry, Attachment
from portal.services import federation, ledger
from portal.services.network import Peers

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


class BlobUnavailable(Exception):
    """An attachment of the block is neither here nor at any peer (with bytes matching the ledger)."""


@dataclass(frozen=True)
class Restored:
    """What `restore` put back: blocks, and attachments whose ciphertext came from the archive."""

    blocks: int
    attachments: int


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS))


def _keep(sha256: str, ciphertext: bytes) -> int:
    """Store an attachment's ciphertext in the rows that list its hash and lack it (how many);
    the caller has checked that it hashes to `sha256`."""
    result = db.session.execute(
        update(Attachment)
        .where(Attachment.sha256 == sha256, Attachment.ciphertext.is_(None))
        .values(ciphertext=ciphertext)
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


def blobs_for(stored: StoredBlock, peers: Peers | None) -> dict[str, bytes]:
    """The ciphertext of every attachment `stored` lists, from this node or else from a peer
    (checked against the hash on the ledger, then kept here). Raises BlobUnavailable."""
    blobs = {}
    for sha256 in attachment_hashes(stored):
        blob = federation.local_blob(sha256)
        if blob is None:
            blob = federation.fetch_blob(sha256, peers)
            if blob is None:
                raise BlobUnavailable(
                    f"block {stored.height}: attachment {sha256} is not on this node and no peer gave a copy "
                    "matching the ledger"
                )
            _keep(sha256, blob)
        blobs[sha256] = blob
    return blobs


def upload_due(connect: Callable[[], ArchiveStore], now: datetime, peers: Peers | None = None) -> int:
    """Upload due outbox rows in height order until one fails; returns how many were uploaded.

    A block whose attachments cannot be had here or from `peers`, or whose zip cannot be
    built (over the archive's limits), fails like a transport error: retried with backoff,
    its error shown by `status`, no later block uploaded before it."""
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
                data = build_zip(stored, blobs_for(stored, peers))
                store.upload(archive_name(entry.height, entry.hash), data)
                entry.status, entry.uploaded_at, entry.last_error = "uploaded", now, None
                db.session.commit()
                uploaded += 1
    except (TransportError, BlobUnavailable, ArchiveError) as exc:
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


def restore(store: ArchiveStore, now: datetime, limits: Limits | None = None) -> Restored:
    """Rebuild this (empty) node's ledger from the archive, then its attachments' ciphertext.

    Nothing is stored unless the whole archive verifies, every blob included (its hash is
    its name and an attachment hash of its block: `ArchivedBlock`). Raises ArchiveError
    (the first bad file), TransportError, or ValueError when there is a ledger already."""
    limits = limits or Limits()
    if ledger.tip() is not None:
        raise ValueError("the target database already has a ledger; restore needs an empty one")
    archived = blocks_for_restore(download_all(store, limits), limits)
    ledger.store_raw([item.block for item in archived], now)
    attachments = _put_back(archived)
    db.session.commit()
    return Restored(len(archived), attachments)


def _put_back(archived: list[ArchivedBlock]) -> int:
    """Put each blob into the attachment rows that projecting its block made; returns how many rows got one."""
    return sum(_keep(sha256, ciphertext) for item in archived for sha256, ciphertext in item.blobs.items())
