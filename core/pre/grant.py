"""Key fragments, re-encryption and opening, with every fragment verified before use.

Key fragments are signed with the patient's Umbral key (both the delegating and the
receiving key are signed in), so a proxy can check that a fragment really comes from
that patient for that doctor, and a doctor can check that a capsule fragment was
made honestly from such a fragment.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import umbral_pre as umbral

from core.crypto import aead
from core.crypto.envelope import DataKey, Envelope, parse_capsule
from core.crypto.keys import UserKeys, _Secret
from core.crypto.password import KdfParams, derive_key
from core.errors import DecryptionError, GrantError

AAD = b"medledger/emergency-key/v1"


@dataclass(frozen=True)
class Threshold:
    """m-of-n: `shares` fragments are made, any `threshold` of them re-encrypt."""

    threshold: int = 1
    shares: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= self.shares <= 255:
            raise GrantError("threshold must satisfy 1 <= m <= n <= 255")


# A granted read re-encrypts the record's capsule with each local key fragment, checks each capsule
# fragment against it and opens it: m + 1 parses or more of the same capsule and public keys, each a
# point decompression (about 0.2-0.3 ms for a capsule). Parsed values are immutable and depend on the
# bytes alone, so each is parsed once and kept for the next use (failures are not kept; capsules in
# core.crypto.envelope's cache, which the patient's own reads share).
PARSED_CACHE = 512


@functools.lru_cache(maxsize=PARSED_CACHE)
def _parse_public(data: bytes) -> umbral.PublicKey:
    return umbral.PublicKey.from_compressed_bytes(data)


def _public(data: bytes) -> umbral.PublicKey:
    try:
        return _parse_public(bytes(data))
    except (ValueError, TypeError) as exc:
        raise GrantError("not an Umbral public key") from exc


def _capsule(data: bytes) -> umbral.Capsule:
    try:
        return parse_capsule(bytes(data))
    except (ValueError, TypeError) as exc:
        raise GrantError("malformed capsule") from exc


def make_key_fragments(patient: UserKeys, receiver_public: bytes, threshold: Threshold) -> list[bytes]:
    """The patient's signed key fragments towards `receiver_public` (an Umbral public key)."""
    fragments = umbral.generate_kfrags(
        patient.umbral_secret,
        _public(receiver_public),
        umbral.Signer(patient.umbral_secret),
        threshold.threshold,
        threshold.shares,
        True,
        True,
    )
    return [bytes(fragment) for fragment in fragments]


def reencrypt(capsule: bytes, key_fragment: bytes, patient_public: bytes, receiver_public: bytes) -> bytes:
    """What the proxy does: verify a key fragment (from this patient, for this receiver) and
    re-encrypt the capsule with it. Raises GrantError for a forged or mismatched fragment."""
    patient = _public(patient_public)
    try:
        verified = umbral.KeyFrag.from_bytes(key_fragment).verify(patient, patient, _public(receiver_public))
    except (umbral.VerificationError, ValueError, TypeError) as exc:
        raise GrantError("key fragment does not verify for this patient and receiver") from exc
    return bytes(umbral.reencrypt(_capsule(capsule), verified))


@dataclass(frozen=True)
class VerifiedFragment:
    """A capsule fragment that `check_capsule_fragment` verified, and what it was verified
    against: `open_reencrypted` uses it without verifying it again when those match."""

    fragment: umbral.VerifiedCapsuleFrag
    capsule: bytes
    patient_public: bytes
    receiver_public: bytes


def check_capsule_fragment(
    capsule: bytes, fragment: bytes, patient_public: bytes, receiver_public: bytes
) -> VerifiedFragment:
    """`fragment`, verified as an honest re-encryption of `capsule` under a key fragment the
    patient signed for this receiver; raises GrantError otherwise (forged, for another capsule
    or receiver, or malformed)."""
    patient = _public(patient_public)
    try:
        verified = umbral.CapsuleFrag.from_bytes(fragment).verify(
            _capsule(capsule), patient, patient, _public(receiver_public)
        )
    except (umbral.VerificationError, ValueError, TypeError) as exc:
        raise GrantError("capsule fragment does not verify") from exc
    return VerifiedFragment(verified, capsule, patient_public, receiver_public)


def open_reencrypted(
    envelope: Envelope,
    receiver_secret: umbral.SecretKey,
    patient_public: bytes,
    capsule_fragments: Sequence[bytes | VerifiedFragment],
) -> DataKey:
    """What the receiver does: verify each capsule fragment (unless `check_capsule_fragment`
    already did, for this capsule, patient and receiver) and open the data key.

    Raises GrantError for a forged or tampered capsule fragment, DecryptionError when the
    fragments (too few, or for another record) do not open it."""
    patient = _public(patient_public)
    capsule = _capsule(envelope.capsule)
    receiver = receiver_secret.public_key()
    receiver_public = receiver.to_compressed_bytes()
    verified = []
    for fragment in capsule_fragments:
        if isinstance(fragment, VerifiedFragment):
            if (fragment.capsule, fragment.patient_public, fragment.receiver_public) != (
                envelope.capsule, patient_public, receiver_public,
            ):  # fmt: skip
                raise GrantError("capsule fragment was verified for another capsule or receiver")
            verified.append(fragment.fragment)
            continue
        try:
            verified.append(umbral.CapsuleFrag.from_bytes(fragment).verify(capsule, patient, patient, receiver))
        except (umbral.VerificationError, ValueError, TypeError) as exc:
            raise GrantError("capsule fragment does not verify") from exc
    try:
        key = umbral.decrypt_reencrypted(receiver_secret, patient, capsule, verified, envelope.patient_key)
    except ValueError as exc:
        raise DecryptionError() from exc
    if key is None:
        raise DecryptionError()
    return DataKey(key)


class EmergencyKey(_Secret):
    """A hospital's break-glass Umbral key: patients who opt in delegate to it."""

    def __init__(self, secret: umbral.SecretKey) -> None:
        self.secret = secret

    @property
    def public(self) -> bytes:
        return self.secret.public_key().to_compressed_bytes()

    @classmethod
    def load_or_create(cls, path: Path, passphrase: bytes | None) -> EmergencyKey:
        """Read the key file, creating it (mode 0600) on first use. With a passphrase the file
        holds salt || AES-GCM(Argon2id(passphrase, salt), key); raises DecryptionError."""
        if not path.exists():
            secret = umbral.SecretKey.random().to_be_bytes()
            salt = os.urandom(16)
            data = (
                salt + aead.encrypt(derive_key(passphrase.decode(), salt, KdfParams()), secret, AAD)
                if passphrase
                else secret
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        data = path.read_bytes()
        if passphrase:
            data = aead.decrypt(derive_key(passphrase.decode(), data[:16], KdfParams()), data[16:], AAD)
        try:
            return cls(umbral.SecretKey.from_be_bytes(data))
        except ValueError as exc:
            raise DecryptionError() from exc
