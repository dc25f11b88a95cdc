"""Attachment ciphertext in a block's archive file.

A record transaction lists its attachments by the SHA-256 of their ciphertext; the
ciphertext itself is not on the ledger. The block's archive file carries one entry
`blobs/<sha256>` per distinct attachment hash its record transactions list, so that a
node restored from the archive alone can serve them. Each blob is named by its hash,
so it authenticates itself; which blobs belong is fixed by the block's body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.ledger import StoredBlock, Transaction, decode_transaction

BLOB_PREFIX = "blobs/"
BLOB_ENTRY_RE = re.compile(r"blobs/[0-9a-f]{64}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")

__all__ = ["ArchivedBlock", "attachment_hashes", "blob_entry", "is_blob_entry", "references"]


@dataclass(frozen=True)
class ArchivedBlock:
    """A block read from its archive file, with the ciphertext of its attachments.

    Only `read_zip` (and `blocks_for_restore`) make one from untrusted bytes. `blobs`
    maps every attachment hash listed by the block's record transactions, and no
    other, to bytes whose SHA-256 is that hash.
    """

    block: StoredBlock
    blobs: Mapping[str, bytes]


def blob_entry(sha256: str) -> str:
    """The zip entry name of the attachment whose ciphertext hashes to `sha256`."""
    return BLOB_PREFIX + sha256


def is_blob_entry(entry: str) -> bool:
    """Whether `entry` is a blob's entry name: "blobs/" and 64 lowercase hex digits."""
    return BLOB_ENTRY_RE.fullmatch(entry) is not None


def references(transactions: Iterable[Transaction]) -> dict[str, str]:
    """{attachment hash: hash of the first transaction listing it} over the record transactions.

    A malformed attachments field is skipped here: the chain validator refuses it.
    """
    found: dict[str, str] = {}
    for tx in transactions:
        listed = tx.payload.get("attachments") if tx.kind == "record" else None
        for sha256 in listed if isinstance(listed, list) else ():
            if isinstance(sha256, str) and _HEX64_RE.fullmatch(sha256):
                found.setdefault(sha256, tx.hash)
    return found


def attachment_hashes(block: StoredBlock) -> list[str]:
    """The sorted distinct attachment hashes that `block`'s record transactions list: the blobs
    `build_zip` needs for it. Raises EncodingError or InvalidTransaction for a transaction
    that does not decode (a block this node stored never has one)."""
    return sorted(references(decode_transaction(data) for data in block.transactions))
