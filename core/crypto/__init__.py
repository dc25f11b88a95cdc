"""Cryptographic building blocks: AEAD, password keys, user and node keys, record envelopes."""

from core.crypto.aead import decrypt, encrypt, random_key
from core.crypto.box import BoxKey, seal_to_node
from core.crypto.envelope import DataKey, Envelope, open_as_author, open_as_patient, seal
from core.crypto.keys import (
    NodeKey,
    PublicKeys,
    UserKeys,
    fingerprint,
    generate_user_keys,
    load_node_key,
    node_public_key_from_bytes,
    open_user_keys,
    seal_user_keys,
)
from core.crypto.note import open_note, seal_note
from core.crypto.password import KdfParams, derive_key
from core.crypto.signing import Verifier, ed25519_verifier, rsa_verifier

__all__ = [
    "BoxKey",
    "DataKey",
    "Envelope",
    "KdfParams",
    "NodeKey",
    "PublicKeys",
    "UserKeys",
    "Verifier",
    "decrypt",
    "derive_key",
    "ed25519_verifier",
    "encrypt",
    "fingerprint",
    "generate_user_keys",
    "load_node_key",
    "node_public_key_from_bytes",
    "open_as_author",
    "open_as_patient",
    "open_note",
    "open_user_keys",
    "random_key",
    "rsa_verifier",
    "seal",
    "seal_note",
    "seal_to_node",
    "seal_user_keys",
]
