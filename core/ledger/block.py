"""Blocks: a signed header and an ordered body of transactions.

Header, canonical JSON:
    {"height", "nonce", "prev", "producer", "root", "sig", "ts", "v"}
The producer signs b"medledger/block/v1\\n" + canonical(header without "sig") with
its Ed25519 node key; the block hash is SHA-256 of the full canonical header,
signature included. `root` is the Merkle root of the body's transaction hashes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.encoding import b64d, b64e, canonical, decode_canonical
from core.errors import EncodingError
from core.ledger.merkle import merkle_root
from core.ledger.transaction import Signer, Transaction, sealed

VERSION = 1
SIGNING_DOMAIN = b"medledger/block/v1\n"
GENESIS_PREV_HASH = "0" * 64
FIELDS = {"height", "nonce", "prev", "producer", "root", "sig", "ts", "v"}
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
HEX32_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class BlockHeader:
    height: int
    timestamp: int
    prev_hash: str
    merkle_root: str
    nonce: str
    producer: str
    signature: bytes
    encoded: bytes = field(repr=False, compare=False)
    hash: str = field(compare=False)
    # canonical(self.unsigned()), set only where `encoded` is known to hold these very fields.
    unsigned_encoding: bytes = field(default=b"", init=False, repr=False, compare=False)

    def unsigned(self) -> dict[str, Any]:
        return _unsigned(self.height, self.timestamp, self.prev_hash, self.merkle_root, self.nonce, self.producer)

    def signing_bytes(self) -> bytes:
        """What the producer signs: cut from the encoding of a decoded or built header (see
        `without_signature`), encoded afresh for one made by `dataclasses.replace`."""
        return SIGNING_DOMAIN + (self.unsigned_encoding or canonical(self.unsigned()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with `hash` added for readers (not part of the encoding)."""
        return {**self.unsigned(), "sig": b64e(self.signature), "hash": self.hash}


@dataclass(frozen=True)
class Block:
    header: BlockHeader
    transactions: tuple[Transaction, ...]

    def body_bytes(self) -> bytes:
        """Canonical body encoding: a JSON list of the transactions' canonical encodings."""
        return b"[" + b",".join(tx.encoded for tx in self.transactions) + b"]"


def _unsigned(height: int, ts: int, prev: str, root: str, nonce: str, producer: str) -> dict[str, Any]:
    return {"v": VERSION, "height": height, "ts": ts, "prev": prev, "root": root, "nonce": nonce, "producer": producer}


def _build(unsigned: dict[str, Any], signature: bytes) -> BlockHeader:
    encoded = canonical({**unsigned, "sig": b64e(signature)})
    return sealed(
        BlockHeader(
            height=unsigned["height"],
            timestamp=unsigned["ts"],
            prev_hash=unsigned["prev"],
            merkle_root=unsigned["root"],
            nonce=unsigned["nonce"],
            producer=unsigned["producer"],
            signature=signature,
            encoded=encoded,
            hash=hashlib.sha256(encoded).hexdigest(),
        )
    )


def make_block(
    height: int,
    prev_hash: str,
    transactions: Sequence[Transaction],
    producer_id: str,
    producer: Signer,
    timestamp_ms: int,
    nonce: str | None = None,
) -> Block:
    """Seal transactions into a block signed by `producer`. Nonce defaults to 16 random bytes."""
    root = merkle_root([tx.hash for tx in transactions])
    unsigned = _unsigned(height, timestamp_ms, prev_hash, root, nonce or os.urandom(16).hex(), producer_id)
    header = _build(unsigned, producer.sign(SIGNING_DOMAIN + canonical(unsigned)))
    return Block(header, tuple(transactions))


def decode_header(data: bytes) -> BlockHeader:
    """Parse canonical header bytes; raises EncodingError for anything malformed."""
    value = decode_canonical(data)
    if not isinstance(value, dict) or set(value) != FIELDS:
        raise EncodingError("header must have exactly the fields " + ", ".join(sorted(FIELDS)))
    if value["v"] != VERSION:
        raise EncodingError(f"unknown header version {value['v']!r}")
    for name in ("height", "ts"):
        if not isinstance(value[name], int) or isinstance(value[name], bool) or value[name] < 0:
            raise EncodingError(f"bad {name}")
    for name in ("prev", "root"):
        if not isinstance(value[name], str) or not HEX64_RE.match(value[name]):
            raise EncodingError(f"bad {name}")
    if not isinstance(value["nonce"], str) or not HEX32_RE.match(value["nonce"]):
        raise EncodingError("bad nonce")
    if not isinstance(value["producer"], str) or not value["producer"]:
        raise EncodingError("bad producer")
    signature = b64d(value["sig"])
    if isinstance(value["v"], bool):
        raise EncodingError("header is not in canonical form")
    # `data` is canonical and holds exactly these values, so it is the encoding _build would give.
    return sealed(BlockHeader(
        value["height"], value["ts"], value["prev"], value["root"], value["nonce"], value["producer"], signature,
        data, hashlib.sha256(data).hexdigest(),
    ))  # fmt: skip
