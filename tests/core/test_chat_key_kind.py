"""The `chat_key` transaction: a member node registers a patient's chat identity key (P-256) on
the ledger, naming the patient only by a salted hash of their pseudonym."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.crypto import NodeKey, UserKeys
from core.encoding import b64e
from core.errors import InvalidTransaction
from core.ledger import KeyRegistry, key_payload, sign_transaction
from core.ledger.kinds import check_chat_key
from tests.core.test_ledger import TS, _genesis_payload

PATIENT = str(uuid.uuid4())
DOCTOR = str(uuid.uuid4())
PSEUDONYM = "amber-heron-4821"


def p256_point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def chat_key_payload(point: bytes | None = None, salt: bytes | None = None) -> dict:
    point = point if point is not None else p256_point()
    salt = salt if salt is not None else os.urandom(16)
    return {
        "subject": hashlib.sha256(salt + PSEUDONYM.encode()).hexdigest(),
        "salt": b64e(salt),
        "key": b64e(point),
        "fingerprint": hashlib.sha256(point).hexdigest(),
    }


@pytest.fixture
def registry(node_key: NodeKey, patient_keys: UserKeys, doctor_keys: UserKeys) -> KeyRegistry:
    registry = KeyRegistry()
    registry.apply(sign_transaction("genesis", _genesis_payload(node_key), node_key, TS), 0)
    for keys, account, role in ((patient_keys, PATIENT, "patient"), (doctor_keys, DOCTOR, "doctor")):
        payload = key_payload(account, role, keys.public.rsa_der, keys.public.umbral, node_key, keys.public.sign)
        registry.apply(sign_transaction("key", payload, keys, TS + 1), 1)
    return registry


def test_member_node_registers_chat_key(registry: KeyRegistry, node_key: NodeKey) -> None:
    tx = sign_transaction("chat_key", chat_key_payload(), node_key, TS + 2)
    registry.apply(tx, 2)  # no exception: accepted
    again = sign_transaction("chat_key", chat_key_payload(), node_key, TS + 3)
    registry.apply(again, 3)  # a new device key: a new registration with a fresh salt
    assert "account" not in tx.payload and PATIENT not in tx.encoded.decode()


def test_admitted_node_registers_chat_key(registry: KeyRegistry) -> None:
    admitted = NodeKey.generate("node-2")
    registry.add_node(admitted.node_id, admitted.public_raw)
    registry.apply(sign_transaction("chat_key", chat_key_payload(), admitted, TS + 2), 2)


def test_invalid_chat_key_signed_by_patient(registry: KeyRegistry, patient_keys: UserKeys) -> None:
    tx = sign_transaction("chat_key", chat_key_payload(), patient_keys, TS + 2)
    with pytest.raises(InvalidTransaction, match="only node keys sign chat_key transactions"):
        registry.apply(tx, 2)


def test_invalid_chat_key_signed_by_doctor(registry: KeyRegistry, doctor_keys: UserKeys) -> None:
    tx = sign_transaction("chat_key", chat_key_payload(), doctor_keys, TS + 2)
    with pytest.raises(InvalidTransaction, match="only node keys sign chat_key transactions"):
        registry.apply(tx, 2)


def test_invalid_chat_key_signed_by_unknown_node(registry: KeyRegistry) -> None:
    outsider = NodeKey.generate("node-9")
    tx = sign_transaction("chat_key", chat_key_payload(), outsider, TS + 2)
    with pytest.raises(InvalidTransaction, match="only node keys sign chat_key transactions"):
        registry.apply(tx, 2)


def test_invalid_chat_key_naming_an_account(registry: KeyRegistry, node_key: NodeKey) -> None:
    payload = {**chat_key_payload(), "account": PATIENT}
    with pytest.raises(
        InvalidTransaction, match="payload must have exactly the fields fingerprint, key, salt, subject"
    ):
        registry.apply(sign_transaction("chat_key", payload, node_key, TS + 2), 2)


def test_invalid_chat_key_not_a_point() -> None:
    junk = b"\x04" + bytes(64)
    with pytest.raises(InvalidTransaction, match="key must be a P-256 point"):
        check_chat_key(chat_key_payload(junk))


def test_invalid_chat_key_compressed_point() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    with pytest.raises(InvalidTransaction, match=r"key must be an uncompressed P-256 point \(65 bytes\)"):
        check_chat_key(chat_key_payload(compressed))


def test_invalid_chat_key_wrong_fingerprint() -> None:
    payload = {**chat_key_payload(), "fingerprint": "0" * 64}
    with pytest.raises(InvalidTransaction, match="fingerprint is not the SHA-256 of the key"):
        check_chat_key(payload)


def test_invalid_chat_key_subject_not_hex() -> None:
    with pytest.raises(InvalidTransaction, match="subject must be SHA-256 hex"):
        check_chat_key({**chat_key_payload(), "subject": PSEUDONYM})


@pytest.mark.parametrize("salt", [b"", b"\x00" * 15, b"\x00" * 17])
def test_invalid_chat_key_salt_length(salt: bytes) -> None:
    with pytest.raises(InvalidTransaction, match="salt must be 16 bytes"):
        check_chat_key({**chat_key_payload(), "salt": b64e(salt)})
