"""The `chat_key` transaction: a patient registers a chat identity key (P-256) on the ledger."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.crypto import NodeKey, UserKeys
from core.encoding import b64e
from core.errors import InvalidTransaction
from core.ledger import KeyRegistry, sign_transaction
from core.ledger.kinds import check_chat_key
from tests.core.test_ledger import TS, _genesis_payload

PATIENT = str(uuid.uuid4())
DOCTOR = str(uuid.uuid4())


def p256_point() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def chat_key_payload(account: str, point: bytes | None = None) -> dict:
    point = point if point is not None else p256_point()
    return {"account": account, "key": b64e(point), "fingerprint": hashlib.sha256(point).hexdigest()}


@pytest.fixture
def registry(node_key: NodeKey, patient_keys: UserKeys, doctor_keys: UserKeys) -> KeyRegistry:
    registry = KeyRegistry()
    registry.apply(sign_transaction("genesis", _genesis_payload(node_key), node_key, TS), 0)
    for keys, account, role in ((patient_keys, PATIENT, "patient"), (doctor_keys, DOCTOR, "doctor")):
        payload = {
            "account": account,
            "role": role,
            "rsa": b64e(keys.public.rsa_der),
            "umbral": b64e(keys.public.umbral),
        }
        registry.apply(sign_transaction("key", payload, keys, TS + 1), 1)
    return registry


def test_patient_registers_own_chat_key(registry: KeyRegistry, patient_keys: UserKeys) -> None:
    tx = sign_transaction("chat_key", chat_key_payload(PATIENT), patient_keys, TS + 2)
    registry.apply(tx, 2)  # no exception: accepted
    again = sign_transaction("chat_key", chat_key_payload(PATIENT), patient_keys, TS + 3)
    registry.apply(again, 3)  # a new device key replaces the old one


def test_invalid_chat_key_for_another_account(registry: KeyRegistry, patient_keys: UserKeys) -> None:
    tx = sign_transaction("chat_key", chat_key_payload(DOCTOR), patient_keys, TS + 2)
    with pytest.raises(InvalidTransaction, match="a chat key must be registered by its own account"):
        registry.apply(tx, 2)


def test_invalid_chat_key_signed_by_doctor(registry: KeyRegistry, doctor_keys: UserKeys) -> None:
    tx = sign_transaction("chat_key", chat_key_payload(DOCTOR), doctor_keys, TS + 2)
    with pytest.raises(InvalidTransaction, match="only patient keys sign chat_key transactions"):
        registry.apply(tx, 2)


def test_invalid_chat_key_signed_by_node(registry: KeyRegistry, node_key: NodeKey) -> None:
    tx = sign_transaction("chat_key", chat_key_payload(PATIENT), node_key, TS + 2)
    with pytest.raises(InvalidTransaction, match="only patient keys sign chat_key transactions"):
        registry.apply(tx, 2)


def test_invalid_chat_key_not_a_point() -> None:
    junk = b"\x04" + bytes(64)
    with pytest.raises(InvalidTransaction, match="key must be a P-256 point"):
        check_chat_key(chat_key_payload(PATIENT, junk))


def test_invalid_chat_key_compressed_point() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    with pytest.raises(InvalidTransaction, match=r"key must be an uncompressed P-256 point \(65 bytes\)"):
        check_chat_key(chat_key_payload(PATIENT, compressed))


def test_invalid_chat_key_wrong_fingerprint() -> None:
    payload = {**chat_key_payload(PATIENT), "fingerprint": "0" * 64}
    with pytest.raises(InvalidTransaction, match="fingerprint is not the SHA-256 of the key"):
        check_chat_key(payload)


def test_invalid_chat_key_extra_field() -> None:
    with pytest.raises(InvalidTransaction, match="payload must have exactly the fields account, fingerprint, key"):
        check_chat_key({**chat_key_payload(PATIENT), "name": "alice"})


def test_invalid_chat_key_account_not_uuid() -> None:
    with pytest.raises(InvalidTransaction, match="account must be a UUID"):
        check_chat_key(chat_key_payload("alice"))
