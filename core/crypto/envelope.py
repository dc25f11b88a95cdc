"""Record envelopes: one data key, wrapped for the patient (Umbral) and the author (RSA-OAEP).

The body and every attachment are AES-256-GCM under the same fresh data key,
each bound to its own associated data, so parts cannot be swapped between
records. The Umbral capsule lets a patient later have the data key re-encrypted
for a doctor without the proxy ever seeing it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import umbral_pre as umbral
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from core.crypto import aead
from core.crypto.keys import PublicKeys, UserKeys, _Secret
from core.errors import DecryptionError

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class DataKey(_Secret):
    """An unwrapped record data key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt the body or an attachment of the record; raises DecryptionError."""
        return aead.decrypt(self._key, blob, aad)


@dataclass(frozen=True)
class Envelope:
    """What is stored and put on the ledger for one record; holds no secret in clear."""

    body: bytes
    capsule: bytes
    patient_key: bytes
    author_key: bytes


def seal(
    body: bytes,
    body_aad: bytes,
    patient: PublicKeys,
    author: PublicKeys,
    attachments: Sequence[tuple[bytes, bytes]] = (),
) -> tuple[Envelope, list[bytes]]:
    """Encrypt a record body and its attachments (each a (data, aad) pair) under a fresh data key."""
    key = aead.random_key()
    capsule, patient_key = umbral.encrypt(patient.umbral_key(), key)
    author_key = author.rsa_key().encrypt(key, OAEP)
    envelope = Envelope(
        body=aead.encrypt(key, body, body_aad),
        capsule=bytes(capsule),
        patient_key=patient_key,
        author_key=author_key,
    )
    return envelope, [aead.encrypt(key, data, aad) for data, aad in attachments]


# Parsing a capsule is a point decompression (about 0.25 ms, more than opening it), and a record's
# capsule is read again on every read and list of it: parsed once, kept (by its bytes; a parsed
# capsule is immutable and public, on the ledger). Failures are not kept. Shared with core.pre.
PARSED_CAPSULES = 1024


@functools.lru_cache(maxsize=PARSED_CAPSULES)
def parse_capsule(data: bytes) -> umbral.Capsule:
    """The capsule `data` encodes; ValueError when it is not one."""
    return umbral.Capsule.from_bytes(data)


def open_as_patient(envelope: Envelope, keys: UserKeys) -> DataKey:
    """Unwrap the data key with the patient's Umbral secret; raises DecryptionError."""
    try:
        capsule = parse_capsule(bytes(envelope.capsule))
        return DataKey(umbral.decrypt_original(keys.umbral_secret, capsule, envelope.patient_key))
    except ValueError as exc:
        raise DecryptionError() from exc


def open_as_author(envelope: Envelope, keys: UserKeys) -> DataKey:
    """Unwrap the data key with the author's RSA key; raises DecryptionError."""
    try:
        return DataKey(keys.rsa_private.decrypt(envelope.author_key, OAEP))
    except ValueError as exc:
        raise DecryptionError() from exc
