"""Signature verification for the kinds of keys on the ledger.

Nodes sign with Ed25519. Users register an RSA key (RSA-PSS, SHA-256, 32-byte salt,
MGF1-SHA-256), which signs their key registration, and, since accounts made from
2026-12, an Ed25519 signing key beside it, which signs everything else they write (about
60 times faster than RSA-PSS-3072; docs/ledger.md, *Users' signing keys*). A `Verifier`
hides which one a key is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from core.errors import EncodingError, InvalidSignature

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@dataclass(frozen=True)
class Verifier:
    """A public key that can check signatures; `kind` is 'rsa' or 'ed25519'."""

    kind: str
    key_id: str
    _check: Callable[[bytes, bytes], None]

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return quietly if `signature` is valid for `message`, else raise InvalidSignature."""
        try:
            self._check(signature, message)
        except (_CryptoInvalidSignature, ValueError) as exc:
            raise InvalidSignature(f"bad signature by {self.key_id[:16]}") from exc


def rsa_sign(private_key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """RSA-PSS-SHA256 signature."""
    return private_key.sign(message, PSS, hashes.SHA256())


def rsa_verifier(public_der: bytes, key_id: str) -> Verifier:
    """A verifier for an RSA public key in SubjectPublicKeyInfo DER; raises EncodingError."""
    try:
        key = serialization.load_der_public_key(public_der)
    except ValueError as exc:
        raise EncodingError("not an RSA public key") from exc
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise EncodingError("not an RSA public key of at least 2048 bits")

    def check(signature: bytes, message: bytes) -> None:
        key.verify(signature, message, PSS, hashes.SHA256())

    return Verifier("rsa", key_id, check)


def ed25519_verifier(public_raw: bytes, key_id: str) -> Verifier:
    """A verifier for a raw 32-byte Ed25519 public key; raises EncodingError."""
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(public_raw)
    except ValueError as exc:
        raise EncodingError("not an Ed25519 public key") from exc
    return Verifier("ed25519", key_id, key.verify)


ED25519_SIGNATURE = 64  # bytes; an RSA-3072 signature is 384


def account_verifier(rsa_der: bytes, sign_raw: bytes | None, key_id: str) -> Verifier:
    """A user's verifier: their RSA key and, when they registered one, their Ed25519 signing
    key. The signature's length says which (64 bytes: Ed25519, else RSA-PSS); both keys are
    the account's, endorsed together by its home node. Raises EncodingError."""
    rsa_check = rsa_verifier(rsa_der, key_id)
    if sign_raw is None:
        return rsa_check
    ed_check = ed25519_verifier(sign_raw, key_id)

    def check(signature: bytes, message: bytes) -> None:
        (ed_check if len(signature) == ED25519_SIGNATURE else rsa_check)._check(signature, message)

    return Verifier("account", key_id, check)
