"""Chat identity keys: ECDSA P-256 with SHA-256, signatures as raw r||s, public keys as uncompressed points."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NoReturn

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from core.chat.wire import POINT_BYTES, SIGNATURE_BYTES
from core.encoding import b64d, b64e
from core.errors import EncodingError, HandshakeSignatureError, MalformedChatMessage

CURVE = ec.SECP256R1()
ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SCALAR_BYTES = 32


def load_point(raw: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from its 65-byte uncompressed point; MalformedChatMessage if it is not one."""
    if len(raw) != POINT_BYTES or raw[0] != 0x04:
        raise MalformedChatMessage("not an uncompressed P-256 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, raw)
    except ValueError as exc:
        raise MalformedChatMessage("not a point on P-256") from exc


def point_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 65-byte uncompressed point of a P-256 public key."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def private_from_scalar(secret: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from 32 bytes read as a big-endian scalar; MalformedChatMessage if out of range."""
    value = int.from_bytes(secret, "big")
    if len(secret) != SCALAR_BYTES or not 0 < value < ORDER:
        raise MalformedChatMessage("a P-256 private scalar is 32 bytes in [1, n-1]")
    return ec.derive_private_key(value, CURVE)


@dataclass(frozen=True)
class PublicIdentity:
    """A peer's chat identity public key, as registered on the ledger."""

    raw: bytes

    def __post_init__(self) -> None:
        load_point(self.raw)

    @classmethod
    def from_b64(cls, text: str) -> PublicIdentity:
        """Parse the wire form (unpadded base64url of the 65-byte point); raises MalformedChatMessage."""
        try:
            return cls(b64d(text))
        except EncodingError as exc:
            raise MalformedChatMessage("an identity key is unpadded base64url") from exc

    @property
    def b64(self) -> str:
        """The wire form: unpadded base64url of the uncompressed point."""
        return b64e(self.raw)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the 65-byte point, lowercase hex (the ledger's key id convention)."""
        return hashlib.sha256(self.raw).hexdigest()

    def verify(self, signature: bytes, message: bytes, what: str) -> None:
        """Return quietly if `signature` (raw r||s) signs `message`; else HandshakeSignatureError naming `what`."""
        if len(signature) != SIGNATURE_BYTES:
            raise HandshakeSignatureError(f"the {what} signature is not 64 bytes")
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < ORDER and 0 < s < ORDER):
            raise HandshakeSignatureError(f"the {what} signature is out of range")
        try:
            load_point(self.raw).verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        except _CryptoInvalidSignature as exc:
            raise HandshakeSignatureError(
                f"the {what} signature does not verify under the peer's registered identity key"
            ) from exc


class IdentityKey:
    """A chat identity private key. Never printable, hashable or picklable."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise MalformedChatMessage("a chat identity key is on P-256")
        self._key = private_key
        self.public = PublicIdentity(point_bytes(private_key.public_key()))

    @classmethod
    def generate(cls) -> IdentityKey:
        """A fresh identity key from the operating system's CSPRNG."""
        return cls(ec.generate_private_key(CURVE))

    @classmethod
    def from_scalar(cls, secret: bytes) -> IdentityKey:
        """The identity key with this 32-byte private scalar (test vectors, or a key kept by a non-browser client)."""
        return cls(private_from_scalar(secret))

    def sign(self, message: bytes) -> bytes:
        """ECDSA P-256/SHA-256 signature of `message` as raw r||s (64 bytes), as WebCrypto makes them."""
        r, s = decode_dss_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"<IdentityKey {self.public.fingerprint[:16]} (secret)>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("IdentityKey holds a secret and cannot be pickled")


def key_change(pinned: PublicIdentity | None, current: PublicIdentity) -> str:
    """The changed-key rule: compare the key pinned for a conversation with the peer's ledger key now.

    'first' (nothing pinned yet: pin `current`), 'same', or 'changed': the peer
    registered a new key (new device, or someone else); the client warns the user
    and pins the new key only once they accept it.
    """
    if pinned is None:
        return "first"
    return "same" if pinned == current else "changed"
