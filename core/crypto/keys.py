"""User key pairs (RSA-3072 + Umbral, and an Ed25519 signing key) and node keys (Ed25519).

Secret-holding objects refuse to print, hash or pickle, so they cannot leak into
logs or caches by accident.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import umbral_pre as umbral
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from core.crypto import aead
from core.crypto.signing import Verifier, account_verifier, ed25519_verifier, rsa_sign
from core.encoding import b64d, b64e, canonical, decode_canonical
from core.errors import DecryptionError, EncodingError

RSA_BITS = 3072


def fingerprint(public_bytes: bytes) -> str:
    """The key id used on the ledger: SHA-256 of the public key bytes, hex."""
    return hashlib.sha256(public_bytes).hexdigest()


class _Secret:
    """Mixin: never printable, hashable or picklable."""

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} (secret)>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds secrets and cannot be pickled")


@dataclass(frozen=True)
class PublicKeys:
    """A user's published keys: RSA (SubjectPublicKeyInfo DER), Umbral (compressed point) and,
    for accounts that have one, the Ed25519 signing key (raw, 32 bytes)."""

    rsa_der: bytes
    umbral: bytes
    sign: bytes | None = None

    @property
    def key_id(self) -> str:
        return fingerprint(self.rsa_der)

    def verifier(self) -> Verifier:
        return account_verifier(self.rsa_der, self.sign, self.key_id)

    def rsa_key(self) -> rsa.RSAPublicKey:
        key = serialization.load_der_public_key(self.rsa_der)
        if not isinstance(key, rsa.RSAPublicKey):
            raise EncodingError("not an RSA public key")
        return key

    def umbral_key(self) -> umbral.PublicKey:
        try:
            return umbral.PublicKey.from_compressed_bytes(self.umbral)
        except ValueError as exc:
            raise EncodingError("not an Umbral public key") from exc


class UserKeys(_Secret):
    """A user's unlocked private keys. Exists only for the request that needed it."""

    def __init__(
        self,
        rsa_private: rsa.RSAPrivateKey,
        umbral_secret: umbral.SecretKey,
        signing: ed25519.Ed25519PrivateKey | None = None,
    ) -> None:
        self.rsa_private = rsa_private
        self.umbral_secret = umbral_secret
        self.signing = signing

    @property
    def public(self) -> PublicKeys:
        rsa_der = self.rsa_private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        sign = None
        if self.signing is not None:
            sign = self.signing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKeys(rsa_der=rsa_der, umbral=self.umbral_secret.public_key().to_compressed_bytes(), sign=sign)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        """This user's signature: Ed25519 when the account has a signing key, else RSA-PSS-SHA256."""
        if self.signing is not None:
            return self.signing.sign(message)
        return rsa_sign(self.rsa_private, message)


def generate_user_keys() -> UserKeys:
    """A fresh RSA-3072 key pair, Umbral key pair and Ed25519 signing key."""
    return UserKeys(
        rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS),
        umbral.SecretKey.random(),
        ed25519.Ed25519PrivateKey.generate(),
    )


def seal_user_keys(keys: UserKeys, wrapping_key: bytes, aad: bytes) -> bytes:
    """Encrypt both private keys under `wrapping_key` (AES-256-GCM), bound to `aad`."""
    rsa_der = keys.rsa_private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sealed = {"rsa": b64e(rsa_der), "umbral": b64e(keys.umbral_secret.to_be_bytes())}
    if keys.signing is not None:
        sealed["sign"] = b64e(keys.signing.private_bytes_raw())
    return aead.encrypt(wrapping_key, canonical(sealed), aad)


def open_user_keys(blob: bytes, wrapping_key: bytes, aad: bytes) -> UserKeys:
    """Inverse of `seal_user_keys`; raises DecryptionError on a wrong key or tampering."""
    plain = aead.decrypt(wrapping_key, blob, aad)
    try:
        data = decode_canonical(plain)
        # The key was sealed by us under AES-GCM, so it is authentic; OpenSSL's full RSA
        # consistency check would cost ~170 ms on every request that opens it.
        rsa_private = serialization.load_der_private_key(
            b64d(data["rsa"]), password=None, unsafe_skip_rsa_key_validation=True
        )
        umbral_secret = umbral.SecretKey.from_be_bytes(b64d(data["umbral"]))
        signing = ed25519.Ed25519PrivateKey.from_private_bytes(b64d(data["sign"])) if "sign" in data else None
    except (EncodingError, KeyError, TypeError, ValueError) as exc:
        raise DecryptionError() from exc
    if not isinstance(rsa_private, rsa.RSAPrivateKey):
        raise DecryptionError()
    return UserKeys(rsa_private, umbral_secret, signing)


class NodeKey(_Secret):
    """A node's Ed25519 signing key and the node id it signs as."""

    def __init__(self, node_id: str, private: ed25519.Ed25519PrivateKey) -> None:
        self.node_id = node_id
        self._private = private

    @property
    def public_raw(self) -> bytes:
        return self._private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return fingerprint(self.public_raw)

    def verifier(self) -> Verifier:
        return ed25519_verifier(self.public_raw, self.key_id)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def private_raw(self) -> bytes:
        """The 32-byte seed, for deriving the node's other keys (never stored apart from the key file)."""
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @classmethod
    def generate(cls, node_id: str) -> NodeKey:
        return cls(node_id, ed25519.Ed25519PrivateKey.generate())

    def save(self, path: Path, passphrase: bytes | None) -> None:
        """Write the key as PKCS#8 PEM (encrypted when a passphrase is given), mode 0600."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        pem = self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(f"# node-id: {self.node_id}\n".encode() + pem)


def load_node_key(path: Path, passphrase: bytes | None) -> NodeKey:
    """Read a key written by `NodeKey.save`; raises DecryptionError for a wrong passphrase."""
    data = path.read_bytes()
    first, _, pem = data.partition(b"\n")
    if not first.startswith(b"# node-id: "):
        raise EncodingError(f"{path} is not a MedLedger node key")
    node_id = first.removeprefix(b"# node-id: ").decode().strip()
    try:
        private = serialization.load_pem_private_key(pem, password=passphrase or None)
    except (ValueError, TypeError) as exc:
        raise DecryptionError() from exc
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise EncodingError(f"{path} does not hold an Ed25519 key")
    return NodeKey(node_id, private)


def node_public_key_from_bytes(public_raw: bytes) -> Verifier:
    """A verifier for a node's published Ed25519 key."""
    return ed25519_verifier(public_raw, fingerprint(public_raw))
