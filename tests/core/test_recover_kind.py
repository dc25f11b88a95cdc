"""The `recover` transaction: a patient's password reset with their recovery key, signed by the
account's own key, naming the account, the method and the time, and nothing secret."""

from __future__ import annotations

import re
import uuid

import pytest

from core.crypto import NodeKey, UserKeys
from core.errors import InvalidTransaction
from core.ledger import KeyRegistry, key_payload, sign_transaction
from tests.core.test_ledger import TS, _genesis_payload

PATIENT = str(uuid.uuid4())
OTHER_PATIENT = str(uuid.uuid4())
DOCTOR = str(uuid.uuid4())


def recover_payload(account: str = PATIENT, **changes: object) -> dict:
    return {"account": account, "method": "recovery_key", "at": TS + 5, **changes}


@pytest.fixture
def registry(node_key: NodeKey, patient_keys: UserKeys, doctor_keys: UserKeys) -> KeyRegistry:
    registry = KeyRegistry()
    registry.apply(sign_transaction("genesis", _genesis_payload(node_key), node_key, TS), 0)
    for keys, account, role in ((patient_keys, PATIENT, "patient"), (doctor_keys, DOCTOR, "doctor")):
        payload = key_payload(account, role, keys.public.rsa_der, keys.public.umbral, node_key, keys.public.sign)
        registry.apply(sign_transaction("key", payload, keys, TS + 1), 1)
    return registry


def test_patient_signs_the_reset_of_their_own_account(registry: KeyRegistry, patient_keys: UserKeys) -> None:
    registry.copy().apply(sign_transaction("recover", recover_payload(), patient_keys, TS + 5), 2)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (recover_payload(method="escrow"), "method must be recovery_key"),
        (recover_payload(at=-1), "at must be a time in milliseconds"),
        (recover_payload(at=True), "at must be a time in milliseconds"),
        (recover_payload(account="alice"), "account must be a UUID"),
        (recover_payload(words="abandon " * 12), "payload must have exactly the fields account, at, method"),
        ({"account": PATIENT, "method": "recovery_key"}, "payload must have exactly the fields account, at, method"),
        (recover_payload(OTHER_PATIENT), "an account's password reset is signed by that account's own key"),
    ],
)
def test_invalid_recover(registry: KeyRegistry, patient_keys: UserKeys, payload: dict, message: str) -> None:
    with pytest.raises(InvalidTransaction, match=f"^{re.escape(message)}$"):
        registry.apply(sign_transaction("recover", payload, patient_keys, TS + 5), 2)


def test_invalid_recover_by_a_doctor_or_a_node(registry: KeyRegistry, doctor_keys: UserKeys, node_key: NodeKey) -> None:
    for signer, account in ((doctor_keys, DOCTOR), (node_key, PATIENT)):
        with pytest.raises(InvalidTransaction, match=r"^only patient keys sign recover transactions$"):
            registry.apply(sign_transaction("recover", recover_payload(account), signer, TS + 5), 2)
