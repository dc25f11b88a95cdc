"""Endorsed account keys, node info, and sealing to a node's box key."""

from __future__ import annotations

import uuid

import pytest

from core.crypto import BoxKey, NodeKey, UserKeys, seal_to_node
from core.encoding import b64e
from core.errors import DecryptionError, InvalidTransaction
from core.ledger import KeyRegistry, key_payload, sign_transaction
from core.ledger.kinds import check_grant
from tests.core.chains import NODE, TS
from tests.core.test_ledger import _genesis_payload


@pytest.fixture
def registry() -> KeyRegistry:
    registry = KeyRegistry()
    registry.apply(sign_transaction("genesis", _genesis_payload(NODE), NODE, TS), 0)
    return registry


def _key_tx(keys: UserKeys, role: str, home: NodeKey, **change: object):
    payload = {
        **key_payload(str(uuid.uuid4()), role, keys.public.rsa_der, keys.public.umbral, home, keys.public.sign),
        **change,
    }
    return sign_transaction("key", payload, keys, TS + 1)


def test_endorsed_key_registers_role_and_home(registry: KeyRegistry, doctor_keys: UserKeys) -> None:
    registry.apply(_key_tx(doctor_keys, "doctor", NODE), 1)
    assert registry.roles[doctor_keys.key_id] == "doctor"
    assert registry.homes[doctor_keys.key_id] == "node-1"


def test_invalid_key_endorsed_by_a_key_that_is_not_the_nodes(registry: KeyRegistry, doctor_keys: UserKeys) -> None:
    impostor = NodeKey.generate("node-1")  # same id, another key: an operator minting doctors
    with pytest.raises(InvalidTransaction, match="endorsement by node-1 does not verify"):
        registry.apply(_key_tx(doctor_keys, "admin", impostor), 1)
    assert doctor_keys.key_id not in registry.roles


def test_invalid_key_endorsed_by_an_unknown_node(registry: KeyRegistry, doctor_keys: UserKeys) -> None:
    with pytest.raises(InvalidTransaction, match="unknown node 'node-7'"):
        registry.apply(_key_tx(doctor_keys, "doctor", NodeKey.generate("node-7")), 1)


def test_invalid_endorsement_moved_to_another_role(registry: KeyRegistry, patient_keys: UserKeys) -> None:
    honest = key_payload(
        str(uuid.uuid4()),
        "patient",
        patient_keys.public.rsa_der,
        patient_keys.public.umbral,
        NODE,
        patient_keys.public.sign,
    )
    promoted = sign_transaction("key", {**honest, "role": "doctor"}, patient_keys, TS + 1)
    with pytest.raises(InvalidTransaction, match="does not verify"):
        registry.apply(promoted, 1)


def test_node_info_only_by_the_node_it_names(registry: KeyRegistry, patient_keys: UserKeys) -> None:
    box = BoxKey.of(NODE)
    emergency = b64e(patient_keys.public.umbral)
    payload = {"node": "node-1", "box": b64e(box.public), "emergency": emergency, "hospital": "St Mary's"}
    registry.apply(sign_transaction("node_info", payload, NODE, TS + 2), 1)
    other = NodeKey.generate("node-1")
    with pytest.raises(InvalidTransaction):
        registry.apply(sign_transaction("node_info", payload, other, TS + 3), 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"emergency": True, "grantee": None, "hospital": None}, "name the hospital node"),
        ({"hospital": "node-1"}, "name the hospital node"),
        ({"emergency": True, "grantee": None, "hospital": "Not A Node!"}, "name the hospital node"),
        ({"emergency": True, "grantee": None, "hospital": 7}, "name the hospital node"),
    ],
)
def test_invalid_grant_hospital(change: dict[str, object], message: str) -> None:
    payload = {
        "grant": str(uuid.uuid4()), "grantee": str(uuid.uuid4()), "hospital": None, "scope": "0" * 64,
        "expires": TS, "fragments": "0" * 64, "emergency": False, "request": None, "sealed": {"node-1": b64e(b"x")},
    }  # fmt: skip
    check_grant(payload)
    with pytest.raises(InvalidTransaction, match=message):
        check_grant({**payload, **change})


def test_box_key_is_the_nodes_and_opens_only_its_own_seal() -> None:
    box = BoxKey.of(NODE)
    assert BoxKey.of(NODE).public == box.public  # derived, not stored
    sealed = seal_to_node(box.public, b"fragment", b"grant/node-1")
    assert box.open(sealed, b"grant/node-1") == b"fragment"
    with pytest.raises(DecryptionError):
        box.open(sealed, b"grant/node-2")  # bound to the grant and the node
    with pytest.raises(DecryptionError):
        BoxKey.of(NodeKey.generate("node-2")).open(sealed, b"grant/node-1")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptionError):
        box.open(tampered, b"grant/node-1")
