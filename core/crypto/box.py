"""Sealing a message to a hospital node: X25519 + HKDF-SHA256 + AES-256-GCM.

A node's box key is derived from its Ed25519 signing key (so a node keeps one secret
file) and published on the ledger in a `node_info` transaction the node signs. Used
for what only one node may open: a proxy's key fragment of a grant, or the scope of
a grant for the grantee's hospital.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.crypto import aead
from core.crypto.keys import NodeKey, _Secret
from core.errors import DecryptionError

BOX_INFO = b"medledger/node-box/v1"
SEAL_INFO = b"medledger/node-seal/v1"
PUBLIC_LEN = 32


class BoxKey(_Secret):
    """A node's X25519 secret for opening what was sealed to it."""

    def __init__(self, secret: x25519.X25519PrivateKey) -> None:
        self._secret = secret

    @classmethod
    def of(cls, node: NodeKey) -> BoxKey:
        """The box key that belongs to a node key (deterministic: same node key, same box key)."""
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=BOX_INFO).derive(node.private_raw())
        return cls(x25519.X25519PrivateKey.from_private_bytes(seed))

    @property
    def public(self) -> bytes:
        return self._secret.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of `seal_to_node(self.public, ..., aad)`; raises DecryptionError."""
        if len(sealed) < PUBLIC_LEN:
            raise DecryptionError()
        ephemeral = x25519.X25519PublicKey.from_public_bytes(sealed[:PUBLIC_LEN])
        key = _key(self._secret.exchange(ephemeral), sealed[:PUBLIC_LEN], self.public)
        return aead.decrypt(key, sealed[PUBLIC_LEN:], aad)


def _key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=SEAL_INFO).derive(shared)


def seal_to_node(recipient: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ephemeral public (32 bytes) || AES-GCM(HKDF(ECDH), plaintext, aad): only the holder of
    the recipient's box key opens it. Raises ValueError for a malformed recipient key."""
    if len(recipient) != PUBLIC_LEN:
        raise ValueError("a node box key is 32 bytes")
    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(recipient))
    return ephemeral_public + aead.encrypt(_key(shared, ephemeral_public, recipient), plaintext, aad)
