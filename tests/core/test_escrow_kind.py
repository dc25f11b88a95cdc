"""The `escrow_recovery` transaction: a home node re-assembled an account's escrowed user key for
a recovery case with two approvals (docs/recovery.md). Signed by a member node; names accounts and
nodes only, never a person's name or document."""

from __future__ import annotations

import re
import uuid

import pytest

from core.crypto import NodeKey, UserKeys
from core.errors import InvalidTransaction
from core.ledger import KeyRegistry, key_payload, sign_transaction
from tests.core.test_ledger import TS, _genesis_payload

PATIENT, FIRST_ADMIN, SECOND_ADMIN = (str(uuid.uuid4()) for _ in range(3))


def escrow_payload(**changes: object) -> dict:
    return {
        "case": str(uuid.uuid4()),
        "account": PATIENT,
        "method": "escrow",
        "opened_by": {"node": "node-1", "account": FIRST_ADMIN},
        "approved_by": {"node": "node-2", "account": SECOND_ADMIN},
        **changes,
    }


@pytest.fixture
def registry(node_key: NodeKey, patient_keys: UserKeys) -> KeyRegistry:
    registry = KeyRegistry()
    registry.apply(sign_transaction("genesis", _genesis_payload(node_key), node_key, TS), 0)
    payload = key_payload(
        PATIENT, "patient", patient_keys.public.rsa_der, patient_keys.public.umbral, node_key, patient_keys.public.sign
    )
    registry.apply(sign_transaction("key", payload, patient_keys, TS + 1), 1)
    return registry


def test_a_member_node_signs_a_recovery(registry: KeyRegistry, node_key: NodeKey) -> None:
    registry.copy().apply(sign_transaction("escrow_recovery", escrow_payload(), node_key, TS + 5), 2)


def test_invalid_escrow_recovery_signed_by_an_account(registry: KeyRegistry, patient_keys: UserKeys) -> None:
    tx = sign_transaction("escrow_recovery", escrow_payload(), patient_keys, TS + 5)
    with pytest.raises(InvalidTransaction, match="only node keys sign escrow_recovery transactions"):
        registry.copy().apply(tx, 2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "recovery_key"}, "method must be escrow"),
        ({"account": "alice"}, "account must be a UUID"),
        ({"approved_by": {"node": "node-1", "account": FIRST_ADMIN}}, "a recovery needs two different approvers"),
        ({"opened_by": {"node": "node-1", "account": FIRST_ADMIN, "name": "Ana"}}, "opened_by must name exactly"),
        ({"approved_by": {"node": "Node 2!", "account": SECOND_ADMIN}}, "approved_by must name a node id"),
        ({"identity": "passport"}, "payload must have exactly the fields"),
    ],
)
def test_invalid_escrow_recovery_payload(registry: KeyRegistry, node_key: NodeKey, changes: dict, message: str) -> None:
    tx = sign_transaction("escrow_recovery", escrow_payload(**changes), node_key, TS + 5)
    with pytest.raises(InvalidTransaction, match=re.escape(message)):
        registry.copy().apply(tx, 2)
