"""Signed transactions: one envelope for every kind (genesis, key, record, and later grants,
votes, access entries), so new kinds never change the format.

Encoded as canonical JSON:
    {"kind", "nonce", "payload", "sig", "signer", "ts", "v"}
The signature covers b"medledger/tx/v1\\n" + canonical(everything but "sig"); the
transaction hash is SHA-256 of the full canonical encoding, signature included.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from core.encoding import b64d, b64e, canonical, decode_canonical
from core.errors import EncodingError, InvalidTransaction

if TYPE_CHECKING:
    from core.ledger.block import BlockHeader

VERSION = 1
SIGNING_DOMAIN = b"medledger/tx/v1\n"
KIND_RE = re.compile(r"^[a-z][a-z_]{1,31}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
FIELDS = {"kind", "nonce", "payload", "sig", "signer", "ts", "v"}
MAX_TX_BYTES = 1 << 20


class Signer(Protocol):
    """Anything that signs as a ledger key id (a user's or a node's key)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class Transaction:
    kind: str
    signer: str
    timestamp: int
    nonce: str
    payload: dict[str, Any]
    signature: bytes
    encoded: bytes = field(repr=False, compare=False)
    hash: str = field(compare=False)
    # canonical(self.unsigned()), set only where `encoded` is known to hold these very fields
    # (not copied by dataclasses.replace, which leaves `encoded` stale).
    unsigned_encoding: bytes = field(default=b"", init=False, repr=False, compare=False)

    def unsigned(self) -> dict[str, Any]:
        return _unsigned(self.kind, self.signer, self.timestamp, self.nonce, self.payload)

    def signing_bytes(self) -> bytes:
        """What the signature covers: cut from the encoding of a decoded or built transaction
        (see `without_signature`), encoded afresh for one made by `dataclasses.replace`."""
        return SIGNING_DOMAIN + (self.unsigned_encoding or canonical(self.unsigned()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with `hash` added for readers (not part of the encoding)."""
        return {**self.unsigned(), "sig": b64e(self.signature), "hash": self.hash}


def without_signature(encoded: bytes) -> bytes:
    """Canonical bytes of an envelope less its top-level "sig" member. Only the fixed-shape
    members that sort after "sig" follow it (header: ts, v; transaction: signer, ts, v), so
    the last '"sig":"' in the bytes is the top-level one; its value is base64url, without
    quotes or escapes."""
    start = encoded.rindex(b',"sig":"')
    end = encoded.index(b'"', start + 8) + 1
    return encoded[:start] + encoded[end:]


def _unsigned(kind: str, signer: str, timestamp: int, nonce: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"v": VERSION, "kind": kind, "signer": signer, "ts": timestamp, "nonce": nonce, "payload": payload}


def _build(unsigned: dict[str, Any], signature: bytes) -> Transaction:
    encoded = canonical({**unsigned, "sig": b64e(signature)})
    return sealed(
        Transaction(
            kind=unsigned["kind"],
            signer=unsigned["signer"],
            timestamp=unsigned["ts"],
            nonce=unsigned["nonce"],
            payload=unsigned["payload"],
            signature=signature,
            encoded=encoded,
            hash=hashlib.sha256(encoded).hexdigest(),
        )
    )


SealedT = TypeVar("SealedT", "Transaction", "BlockHeader")


def sealed(item: SealedT) -> SealedT:
    """`item` (a transaction or block header just built or decoded) with the encoding of its
    unsigned fields cut from its full encoding, so that signing bytes are never re-encoded."""
    object.__setattr__(item, "unsigned_encoding", without_signature(item.encoded))
    return item


def sign_transaction(
    kind: str, payload: dict[str, Any], signer: Signer, timestamp_ms: int, nonce: str | None = None
) -> Transaction:
    """Build and sign a transaction. `nonce` defaults to 16 random bytes, hex."""
    if not KIND_RE.match(kind):
        raise InvalidTransaction(f"bad kind {kind!r}")
    unsigned = _unsigned(kind, signer.key_id, timestamp_ms, nonce or os.urandom(16).hex(), payload)
    return _build(unsigned, signer.sign(SIGNING_DOMAIN + canonical(unsigned)))


def decode_transaction(data: bytes) -> Transaction:
    """Parse canonical transaction bytes and check the envelope's shape.

    Raises EncodingError for bytes that are not canonical JSON and
    InvalidTransaction for a wrong shape. Signatures are checked by `KeyRegistry`.
    """
    if len(data) > MAX_TX_BYTES:
        raise InvalidTransaction("transaction too large")
    value = decode_canonical(data)
    if not isinstance(value, dict) or set(value) != FIELDS:
        raise InvalidTransaction("transaction must have exactly the fields " + ", ".join(sorted(FIELDS)))
    if value["v"] != VERSION:
        raise InvalidTransaction(f"unknown transaction version {value['v']!r}")
    kind, signer, ts, nonce, payload = (value[k] for k in ("kind", "signer", "ts", "nonce", "payload"))
    if not isinstance(kind, str) or not KIND_RE.match(kind):
        raise InvalidTransaction("bad kind")
    if not isinstance(signer, str) or not HEX64_RE.match(signer):
        raise InvalidTransaction("bad signer")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise InvalidTransaction("bad timestamp")
    if not isinstance(nonce, str) or not HEX32_RE.match(nonce):
        raise InvalidTransaction("bad nonce")
    if not isinstance(payload, dict):
        raise InvalidTransaction("payload must be an object")
    try:
        signature = b64d(value["sig"])
    except EncodingError as exc:
        raise InvalidTransaction("bad signature encoding") from exc
    if isinstance(value["v"], bool):
        raise EncodingError("transaction is not in canonical form")
    # `data` is canonical and holds exactly these values, so it is the encoding _build would give.
    return sealed(Transaction(kind, signer, ts, nonce, payload, signature, data, hashlib.sha256(data).hexdigest()))
