"""Transactions, Merkle roots, blocks, the key registry and whole-chain validation."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid

import pytest

from core.consensus import Params
from core.crypto import NodeKey, UserKeys
from core.encoding import b64e, canonical, decode_canonical
from core.errors import EncodingError, InvalidSignature, InvalidTransaction
from core.ledger import (
    GENESIS_PREV_HASH,
    KeyRegistry,
    StoredBlock,
    decode_header,
    decode_transaction,
    key_payload,
    make_block,
    merkle_root,
    sign_transaction,
    validate_chain,
)
from core.ledger import transaction as transaction_module
from core.ledger.transaction import Transaction
from tests.core.chains import NODE

TS = 1_700_000_000_000
SLOT_MS = 1000
PARAMS = Params(delegates=1, slot_ms=SLOT_MS, epoch_slots=60, miss_limit=3, genesis_ms=TS)


def _genesis_payload(node_key: NodeKey) -> dict:
    return {
        "chain": "medledger-test",
        "nodes": [{"id": node_key.node_id, "key": b64e(node_key.public_raw)}],
        "params": PARAMS.to_dict(),
    }


def _key_payload(user: UserKeys, role: str, home: NodeKey = NODE) -> dict:
    return key_payload(str(uuid.uuid4()), role, user.public.rsa_der, user.public.umbral, home, user.public.sign)


def _record_payload(seed: int = 0) -> dict:
    return {
        "record": str(uuid.UUID(int=seed, version=4)),
        "patient": str(uuid.UUID(int=seed + 1000, version=4)),
        "ctag": f"{seed:032x}",
        "body": b64e(bytes([seed]) * 40),
        "capsule": b64e(bytes([seed]) * 98),
        "pkey": b64e(bytes([seed]) * 72),
        "akey": b64e(bytes([seed]) * 384),
        "attachments": [],
    }


@pytest.fixture(scope="module")
def genesis(node_key):
    return sign_transaction("genesis", _genesis_payload(node_key), node_key, TS)


@pytest.fixture(scope="module")
def doctor_key_tx(doctor_keys):
    return sign_transaction("key", _key_payload(doctor_keys, "doctor"), doctor_keys, TS + 1)


@pytest.fixture(scope="module")
def patient_key_tx(patient_keys):
    return sign_transaction("key", _key_payload(patient_keys, "patient"), patient_keys, TS + 2)


@pytest.fixture
def registry(genesis, doctor_key_tx, patient_key_tx):
    """A registry that knows node-1, the doctor and the patient."""
    registry = KeyRegistry()
    registry.apply(genesis, 0)
    registry.apply(doctor_key_tx, 1)
    registry.apply(patient_key_tx, 1)
    return registry


# Transactions


def test_sign_transaction_round_trip(doctor_keys):
    tx = sign_transaction("record", _record_payload(1), doctor_keys, TS, nonce="ab" * 16)
    decoded = decode_transaction(tx.encoded)
    assert decoded == tx
    assert decoded.hash == tx.hash == hashlib.sha256(tx.encoded).hexdigest()
    assert decoded.encoded == tx.encoded
    assert canonical(decode_canonical(tx.encoded)) == tx.encoded
    assert decoded.signer == doctor_keys.key_id
    assert decoded.timestamp == TS
    assert decoded.nonce == "ab" * 16


def test_transaction_encoding_fields(doctor_keys):
    tx = sign_transaction("record", _record_payload(1), doctor_keys, TS, nonce="ab" * 16)
    value = decode_canonical(tx.encoded)
    assert sorted(value) == ["kind", "nonce", "payload", "sig", "signer", "ts", "v"]
    assert value["v"] == 1
    assert value["sig"] == b64e(tx.signature)
    assert tx.signing_bytes() == b"medledger/tx/v1\n" + canonical({k: v for k, v in value.items() if k != "sig"})
    doctor_keys.public.verifier().verify(tx.signature, tx.signing_bytes())


def test_sign_transaction_random_nonce_changes_hash(doctor_keys):
    first = sign_transaction("record", _record_payload(1), doctor_keys, TS)
    second = sign_transaction("record", _record_payload(1), doctor_keys, TS)
    assert first.nonce != second.nonce
    assert first.hash != second.hash


def test_transaction_to_dict(node_key, genesis):
    data = genesis.to_dict()
    assert data["hash"] == genesis.hash
    assert data["kind"] == "genesis"
    assert data["payload"] == _genesis_payload(node_key)


@pytest.mark.parametrize(
    "kind", ["Record", "r", "record-1", "", "a" * 33], ids=["upper", "short", "digit", "empty", "long"]
)
def test_invalid_sign_transaction_kind(doctor_keys, kind):
    with pytest.raises(InvalidTransaction, match=rf"^bad kind {kind!r}$"):
        sign_transaction(kind, {}, doctor_keys, TS)


def _tx_dict(node_key: NodeKey) -> dict:
    tx = sign_transaction("genesis", _genesis_payload(node_key), node_key, TS, nonce="00" * 16)
    return decode_canonical(tx.encoded)


def _without(data: dict, name: str) -> dict:
    return {k: v for k, v in data.items() if k != name}


INVALID_TX_CASES = [
    ("extra-field", lambda d: {**d, "extra": 1}, InvalidTransaction, "transaction must have exactly the fields"),
    ("missing-sig", lambda d: _without(d, "sig"), InvalidTransaction, "transaction must have exactly the fields"),
    ("missing-nonce", lambda d: _without(d, "nonce"), InvalidTransaction, "transaction must have exactly the fields"),
    ("not-an-object", lambda d: [d], InvalidTransaction, "transaction must have exactly the fields"),
    ("version-2", lambda d: {**d, "v": 2}, InvalidTransaction, "unknown transaction version 2"),
    ("version-string", lambda d: {**d, "v": "1"}, InvalidTransaction, "unknown transaction version '1'"),
    ("version-true", lambda d: {**d, "v": True}, EncodingError, "transaction is not in canonical form"),
    ("kind-upper", lambda d: {**d, "kind": "Genesis"}, InvalidTransaction, "bad kind"),
    ("kind-int", lambda d: {**d, "kind": 7}, InvalidTransaction, "bad kind"),
    ("kind-one-char", lambda d: {**d, "kind": "g"}, InvalidTransaction, "bad kind"),
    ("signer-short", lambda d: {**d, "signer": "ab" * 16}, InvalidTransaction, "bad signer"),
    ("signer-upper", lambda d: {**d, "signer": d["signer"].upper()}, InvalidTransaction, "bad signer"),
    ("signer-none", lambda d: {**d, "signer": None}, InvalidTransaction, "bad signer"),
    ("ts-negative", lambda d: {**d, "ts": -1}, InvalidTransaction, "bad timestamp"),
    ("ts-bool", lambda d: {**d, "ts": True}, InvalidTransaction, "bad timestamp"),
    ("ts-string", lambda d: {**d, "ts": "1700000000000"}, InvalidTransaction, "bad timestamp"),
    ("nonce-short", lambda d: {**d, "nonce": "00" * 15}, InvalidTransaction, "bad nonce"),
    ("nonce-not-hex", lambda d: {**d, "nonce": "zz" * 16}, InvalidTransaction, "bad nonce"),
    ("nonce-upper", lambda d: {**d, "nonce": "AB" * 16}, InvalidTransaction, "bad nonce"),
    ("nonce-int", lambda d: {**d, "nonce": 0}, InvalidTransaction, "bad nonce"),
    ("payload-list", lambda d: {**d, "payload": []}, InvalidTransaction, "payload must be an object"),
    ("payload-string", lambda d: {**d, "payload": "{}"}, InvalidTransaction, "payload must be an object"),
    ("payload-null", lambda d: {**d, "payload": None}, InvalidTransaction, "payload must be an object"),
    ("sig-padded", lambda d: {**d, "sig": d["sig"] + "=="}, InvalidTransaction, "bad signature encoding"),
    ("sig-not-text", lambda d: {**d, "sig": 5}, InvalidTransaction, "bad signature encoding"),
]


@pytest.mark.parametrize(
    ("mutate", "error", "message"), [case[1:] for case in INVALID_TX_CASES], ids=[case[0] for case in INVALID_TX_CASES]
)
def test_invalid_decode_transaction(node_key, mutate, error, message):
    with pytest.raises(error) as info:
        decode_transaction(canonical(mutate(_tx_dict(node_key))))
    assert type(info.value) is error
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda b: b.replace(b'","', b'", "', 1), "not in canonical form"),
        (lambda b: b + b"\n", "not in canonical form"),
        (lambda b: b.replace(b'{"kind"', b'{"v":1,"kind"', 1), "duplicate key 'v'"),
        (lambda b: b[:-1], "not valid JSON"),
        (lambda b: b.replace(b'"ts":1700000000000', b'"ts":1700000000000.0', 1), "floats have no canonical encoding"),
        (lambda b: b"\xff" + b, "not valid JSON"),
    ],
    ids=["space", "trailing-newline", "duplicate-key", "truncated", "float-ts", "invalid-utf8"],
)
def test_invalid_decode_transaction_non_canonical_bytes(node_key, transform, message):
    encoded = canonical(_tx_dict(node_key))
    mutated = transform(encoded)
    assert mutated != encoded
    with pytest.raises(EncodingError) as info:
        decode_transaction(mutated)
    assert str(info.value) == message


def test_invalid_decode_transaction_unsorted_keys(node_key):
    data = _tx_dict(node_key)
    unsorted = b"{" + b",".join(canonical(k) + b":" + canonical(data[k]) for k in reversed(sorted(data))) + b"}"
    with pytest.raises(EncodingError, match=r"^not in canonical form$"):
        decode_transaction(unsorted)


def test_invalid_decode_transaction_too_large():
    with pytest.raises(InvalidTransaction, match=r"^transaction too large$"):
        decode_transaction(b" " * ((1 << 20) + 1))


# Merkle roots


def _ref_leaf(tx_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(tx_hash)).digest()


def _ref_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 Merkle Tree Hash over already-hashed leaves."""
    n = len(leaves)
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _ref_mth(leaves[:k]) + _ref_mth(leaves[k:])).digest()


def _ref_root(tx_hashes: list[str]) -> str:
    if not tx_hashes:
        return hashlib.sha256(b"").hexdigest()
    return _ref_mth([_ref_leaf(h) for h in tx_hashes]).hex()


def _hashes(n: int) -> list[str]:
    return [hashlib.sha256(f"tx-{i}".encode()).hexdigest() for i in range(n)]


def test_merkle_root_empty():
    assert merkle_root([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_merkle_root_one_leaf_is_the_leaf_hash():
    (h,) = _hashes(1)
    assert merkle_root([h]) == hashlib.sha256(b"\x00" + bytes.fromhex(h)).hexdigest()
    assert merkle_root([h]) != h


def test_merkle_root_two_leaves_by_hand():
    a, b = _hashes(2)
    expected = hashlib.sha256(b"\x01" + _ref_leaf(a) + _ref_leaf(b)).hexdigest()
    assert merkle_root([a, b]) == expected


def test_merkle_root_three_leaves_by_hand():
    a, b, c = _hashes(3)
    left = hashlib.sha256(b"\x01" + _ref_leaf(a) + _ref_leaf(b)).digest()
    assert merkle_root([a, b, c]) == hashlib.sha256(b"\x01" + left + _ref_leaf(c)).hexdigest()


def test_merkle_root_five_leaves_by_hand():
    h = [_ref_leaf(x) for x in _hashes(5)]
    ab = hashlib.sha256(b"\x01" + h[0] + h[1]).digest()
    cd = hashlib.sha256(b"\x01" + h[2] + h[3]).digest()
    abcd = hashlib.sha256(b"\x01" + ab + cd).digest()
    assert merkle_root(_hashes(5)) == hashlib.sha256(b"\x01" + abcd + h[4]).hexdigest()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 33])
def test_merkle_root_matches_reference(n):
    assert merkle_root(_hashes(n)) == _ref_root(_hashes(n))


def test_merkle_root_order_matters():
    hashes = _hashes(3)
    assert merkle_root(hashes) != merkle_root([hashes[1], hashes[0], hashes[2]])
    assert merkle_root(hashes) != merkle_root(list(reversed(hashes)))


def test_merkle_root_does_not_duplicate_the_last_leaf():
    """CVE-2012-2459: [a, b, c] and [a, b, c, c] must not share a root."""
    a, b, c = _hashes(3)
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])
    assert merkle_root([a]) != merkle_root([a, a])


def test_merkle_root_leaf_is_not_an_inner_node():
    """Domain separation: a two-leaf root is never the one-leaf root of its node hash."""
    a, b = _hashes(2)
    inner = hashlib.sha256(_ref_leaf(a) + _ref_leaf(b)).hexdigest()
    assert merkle_root([a, b]) != merkle_root([inner])


# Blocks


def test_make_block_decode_header_round_trip(node_key, genesis):
    block = make_block(0, GENESIS_PREV_HASH, [genesis], node_key.node_id, node_key, TS, nonce="11" * 16)
    header = decode_header(block.header.encoded)
    assert header == block.header
    assert header.hash == block.header.hash == hashlib.sha256(block.header.encoded).hexdigest()
    assert header.encoded == block.header.encoded
    assert header.merkle_root == merkle_root([genesis.hash])
    assert (header.height, header.timestamp, header.prev_hash, header.nonce, header.producer) == (
        0,
        TS,
        GENESIS_PREV_HASH,
        "11" * 16,
        "node-1",
    )
    node_key.verifier().verify(header.signature, header.signing_bytes())
    assert header.signing_bytes().startswith(b"medledger/block/v1\n")
    assert block.transactions == (genesis,)
    assert block.body_bytes() == b"[" + genesis.encoded + b"]"
    assert decode_canonical(block.body_bytes())[0] == decode_canonical(genesis.encoded)


def test_make_block_empty_body(node_key):
    block = make_block(1, "ab" * 32, [], node_key.node_id, node_key, TS)
    assert block.header.merkle_root == hashlib.sha256(b"").hexdigest()
    assert block.body_bytes() == b"[]"
    assert len(block.header.nonce) == 32


def test_block_header_to_dict(node_key, genesis):
    block = make_block(0, GENESIS_PREV_HASH, [genesis], node_key.node_id, node_key, TS, nonce="11" * 16)
    data = block.header.to_dict()
    assert data.pop("hash") == block.header.hash
    assert canonical(data) == block.header.encoded


def _header_dict(node_key: NodeKey, genesis: Transaction) -> dict:
    block = make_block(0, GENESIS_PREV_HASH, [genesis], node_key.node_id, node_key, TS, nonce="11" * 16)
    return decode_canonical(block.header.encoded)


INVALID_HEADER_CASES = [
    ("extra-field", lambda d: {**d, "extra": 0}, "header must have exactly the fields"),
    ("missing-root", lambda d: _without(d, "root"), "header must have exactly the fields"),
    ("not-an-object", lambda d: [d], "header must have exactly the fields"),
    ("version-2", lambda d: {**d, "v": 2}, "unknown header version 2"),
    ("version-true", lambda d: {**d, "v": True}, "header is not in canonical form"),
    ("height-negative", lambda d: {**d, "height": -1}, "bad height"),
    ("height-bool", lambda d: {**d, "height": False}, "bad height"),
    ("ts-string", lambda d: {**d, "ts": "0"}, "bad ts"),
    ("prev-short", lambda d: {**d, "prev": "0" * 63}, "bad prev"),
    ("prev-upper", lambda d: {**d, "prev": "A" * 64}, "bad prev"),
    ("root-int", lambda d: {**d, "root": 0}, "bad root"),
    ("nonce-long", lambda d: {**d, "nonce": "1" * 34}, "bad nonce"),
    ("producer-empty", lambda d: {**d, "producer": ""}, "bad producer"),
    ("producer-int", lambda d: {**d, "producer": 1}, "bad producer"),
    ("sig-padded", lambda d: {**d, "sig": d["sig"] + "=="}, "non-canonical base64url"),
    ("sig-list", lambda d: {**d, "sig": []}, "expected base64url text"),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [case[1:] for case in INVALID_HEADER_CASES], ids=[case[0] for case in INVALID_HEADER_CASES]
)
def test_invalid_decode_header(node_key, genesis, mutate, message):
    with pytest.raises(EncodingError) as info:
        decode_header(canonical(mutate(_header_dict(node_key, genesis))))
    assert message in str(info.value)


def test_invalid_decode_header_non_canonical(node_key, genesis):
    encoded = canonical(_header_dict(node_key, genesis))
    with pytest.raises(EncodingError, match=r"^not in canonical form$"):
        decode_header(encoded.replace(b",", b", ", 1))


# Key registry


def test_registry_learns_nodes_accounts_and_roles(registry, node_key, doctor_keys, patient_keys):
    assert registry.chain_id == "medledger-test"
    assert registry.node_verifier("node-1").key_id == node_key.key_id
    assert registry.roles == {doctor_keys.key_id: "doctor", patient_keys.key_id: "patient"}
    assert set(registry.accounts) == {doctor_keys.key_id, patient_keys.key_id}


def test_registry_accepts_doctor_record(registry, doctor_keys):
    registry.apply(sign_transaction("record", _record_payload(1), doctor_keys, TS), 2)


def test_registry_copy_is_independent(registry, stranger_keys):
    trial = registry.copy()
    trial.apply(sign_transaction("key", _key_payload(stranger_keys, "doctor"), stranger_keys, TS), 2)
    assert stranger_keys.key_id in trial.accounts
    assert stranger_keys.key_id not in registry.accounts
    assert stranger_keys.key_id not in registry.roles


def test_invalid_registry_unknown_node(registry):
    with pytest.raises(InvalidSignature, match=r"^unknown node 'node-2'$"):
        registry.node_verifier("node-2")


def test_invalid_registry_genesis_after_height_zero(genesis):
    with pytest.raises(InvalidTransaction, match=r"^genesis only in block 0$"):
        KeyRegistry().apply(genesis, 1)


def test_invalid_registry_second_genesis(registry, node_key):
    second = sign_transaction("genesis", {**_genesis_payload(node_key), "chain": "other"}, node_key, TS)
    with pytest.raises(InvalidTransaction, match=r"^genesis only in block 0$"):
        registry.apply(second, 0)
    assert registry.chain_id == "medledger-test"


def test_invalid_registry_genesis_signed_by_another_key(node_key, doctor_keys):
    forged = sign_transaction("genesis", _genesis_payload(node_key), doctor_keys, TS)
    with pytest.raises(InvalidTransaction, match=r"^genesis must be signed by its first node$"):
        KeyRegistry().apply(forged, 0)


def test_invalid_registry_transaction_before_genesis(doctor_key_tx):
    with pytest.raises(InvalidTransaction, match=r"^transaction before genesis$"):
        KeyRegistry().apply(doctor_key_tx, 0)


def test_invalid_registry_key_not_self_signed(registry, doctor_keys, stranger_keys):
    tx = sign_transaction("key", _key_payload(stranger_keys, "doctor"), doctor_keys, TS)
    with pytest.raises(InvalidTransaction, match=r"^a key registration must be signed by the key it registers$"):
        registry.apply(tx, 2)
    assert stranger_keys.key_id not in registry.accounts


def test_invalid_registry_duplicate_key(registry, doctor_keys):
    again = sign_transaction("key", _key_payload(doctor_keys, "patient"), doctor_keys, TS + 5)
    with pytest.raises(InvalidTransaction, match=r"^key already registered$"):
        registry.apply(again, 2)
    assert registry.roles[doctor_keys.key_id] == "doctor"


def test_invalid_registry_record_signed_by_patient(registry, patient_keys):
    tx = sign_transaction("record", _record_payload(1), patient_keys, TS)
    with pytest.raises(InvalidTransaction, match=r"^only doctor keys sign record transactions$"):
        registry.apply(tx, 2)


def test_invalid_registry_record_signed_by_unregistered_key(registry, stranger_keys):
    tx = sign_transaction("record", _record_payload(1), stranger_keys, TS)
    with pytest.raises(InvalidTransaction, match=r"^only doctor keys sign record transactions$"):
        registry.apply(tx, 2)


def test_invalid_registry_unknown_kind(registry, doctor_keys):
    tx = sign_transaction("ballot", {"yes": True}, doctor_keys, TS)
    with pytest.raises(InvalidTransaction, match=r"^unknown transaction kind 'ballot'$"):
        registry.apply(tx, 2)


def test_registry_node_key_signs_evidence(registry, node_key):
    """Node-signed transactions: a genesis node's key is known by its key id, with the role "node"."""
    assert set(registry.node_keys) == {node_key.key_id}
    tx = sign_transaction("evidence", {"a": b64e(b"header a"), "b": b64e(b"header b")}, node_key, TS)
    registry.apply(tx, 2)  # the headers themselves are checked against the consensus state, not here


def test_registry_accounts_sign_votes_and_evidence(registry, doctor_keys, patient_keys):
    registry.apply(sign_transaction("vote", {"nodes": ["node-1"]}, patient_keys, TS), 2)
    registry.apply(sign_transaction("vote", {"nodes": ["node-1"]}, doctor_keys, TS), 2)
    registry.apply(sign_transaction("evidence", {"a": b64e(b"a"), "b": b64e(b"b")}, patient_keys, TS), 2)


def test_invalid_registry_vote_signed_by_node(registry, node_key):
    tx = sign_transaction("vote", {"nodes": ["node-1"]}, node_key, TS)
    with pytest.raises(InvalidTransaction, match=r"^only patient or doctor or admin keys sign vote transactions$"):
        registry.apply(tx, 2)


def test_invalid_registry_record_signed_by_node(registry, node_key):
    tx = sign_transaction("record", _record_payload(1), node_key, TS)
    with pytest.raises(InvalidTransaction, match=r"^only doctor keys sign record transactions$"):
        registry.apply(tx, 2)


def test_invalid_registry_evidence_by_unregistered_key(registry, stranger_keys):
    tx = sign_transaction("evidence", {"a": b64e(b"a"), "b": b64e(b"b")}, stranger_keys, TS)
    with pytest.raises(InvalidTransaction, match=r"^only patient or doctor or admin or node keys sign evidence"):
        registry.apply(tx, 2)


def test_invalid_registry_node_signature_forged(registry, node_key):
    honest = sign_transaction("evidence", {"a": b64e(b"a"), "b": b64e(b"b")}, node_key, TS)
    other = NodeKey.generate("node-2")
    forged = transaction_module._build(honest.unsigned(), other.sign(honest.signing_bytes()))
    with pytest.raises(InvalidSignature, match=rf"^bad signature by {node_key.key_id[:16]}$"):
        registry.apply(forged, 2)


def test_invalid_registry_forged_signature(registry, doctor_keys, patient_keys):
    honest = sign_transaction("record", _record_payload(1), doctor_keys, TS)
    forged = transaction_module._build(honest.unsigned(), patient_keys.sign(honest.signing_bytes()))
    with pytest.raises(InvalidSignature, match=rf"^bad signature by {doctor_keys.key_id[:16]}$"):
        registry.apply(forged, 2)


def test_invalid_registry_signature_over_other_payload(registry, doctor_keys):
    honest = sign_transaction("record", _record_payload(1), doctor_keys, TS)
    edited = dataclasses.replace(honest, payload=_record_payload(2))
    with pytest.raises(InvalidSignature):
        registry.apply(edited, 2)


def test_invalid_registry_forged_self_registration(registry, stranger_keys, patient_keys):
    honest = sign_transaction("key", _key_payload(stranger_keys, "doctor"), stranger_keys, TS)
    forged = transaction_module._build(honest.unsigned(), patient_keys.sign(honest.signing_bytes()))
    with pytest.raises(InvalidSignature):
        registry.apply(forged, 2)
    assert stranger_keys.key_id not in registry.accounts


def test_registry_skips_signature_check_when_asked(registry, doctor_keys, patient_keys):
    honest = sign_transaction("record", _record_payload(1), doctor_keys, TS)
    forged = transaction_module._build(honest.unsigned(), patient_keys.sign(honest.signing_bytes()))
    registry.apply(forged, 2, verify_signature=False)


P = PARAMS.to_dict()
N = [{"id": "n", "key": b64e(bytes(32))}]
PARAMS_FIELDS = "params must have exactly delegates, epoch_slots, genesis_ms, miss_limit, slot_ms"


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("genesis", {"chain": "c", "params": P}, "payload must have exactly the fields chain, nodes, params"),
        ("genesis", {"chain": "c", "nodes": N}, "payload must have exactly the fields chain, nodes, params"),
        ("genesis", {"chain": "", "nodes": [], "params": P}, "genesis needs a chain id"),
        ("genesis", {"chain": "c", "nodes": [], "params": P}, "genesis needs at least one node"),
        ("genesis", {"chain": "c", "nodes": [{"id": "Node 1", "key": b64e(bytes(32))}], "params": P}, "bad node id"),
        ("genesis", {"chain": "c", "nodes": [{"id": "n", "key": b64e(bytes(31))}], "params": P}, "node keys are 32"),
        ("genesis", {"chain": "c", "nodes": [{"id": "n"}], "params": P}, "each genesis node needs exactly id and key"),
        ("genesis", {"chain": "c", "nodes": N, "params": None}, PARAMS_FIELDS),
        ("genesis", {"chain": "c", "nodes": N, "params": _without(P, "miss_limit")}, PARAMS_FIELDS),
        ("genesis", {"chain": "c", "nodes": N, "params": {**P, "extra": 1}}, PARAMS_FIELDS),
        ("genesis", {"chain": "c", "nodes": N, "params": {**P, "slot_ms": "1000"}}, "params must be whole numbers"),
        ("genesis", {"chain": "c", "nodes": N, "params": {**P, "delegates": True}}, "params must be whole numbers"),
        ("genesis", {"chain": "c", "nodes": N, "params": {**P, "delegates": 0}}, "consensus parameters out of range"),
        ("genesis", {"chain": "c", "nodes": N, "params": {**P, "slot_ms": 99}}, "consensus parameters out of range"),
        (
            "genesis",
            {"chain": "c", "nodes": N, "params": {**P, "delegates": 5, "epoch_slots": 4}},
            "consensus parameters out of range",
        ),
        ("genesis", {"chain": "c", "nodes": N, "params": {**P, "miss_limit": 0}}, "consensus parameters out of range"),
        ("genesis", {"chain": "c", "nodes": N, "params": {**P, "genesis_ms": -1}}, "consensus parameters out of range"),
        ("vote", {"nodes": ["node-1"], "extra": 1}, "payload must have exactly the fields nodes"),
        ("vote", {"nodes": []}, "a vote names one or more distinct nodes"),
        ("vote", {"nodes": "node-1"}, "a vote names one or more distinct nodes"),
        ("vote", {"nodes": ["node-1", "node-1"]}, "a vote names one or more distinct nodes"),
        ("vote", {"nodes": ["Node 1"]}, "bad node id in vote"),
        ("vote", {"nodes": [1]}, "bad node id in vote"),
        ("evidence", {"a": b64e(b"x")}, "payload must have exactly the fields a, b"),
        ("evidence", {"a": "a+b", "b": b64e(b"x")}, "payload field 'a' is not base64url"),
        ("evidence", {"a": b64e(b"x"), "b": None}, "payload field 'b' is not base64url"),
        (
            "key",
            {"account": "x", "role": "doctor", "rsa": "", "umbral": "", "home": "node-1", "endorsement": ""},
            "account must be a UUID",
        ),
        ("record", {**_record_payload(1), "record": "not-a-uuid"}, "record must be a UUID"),
        ("record", {**_record_payload(1), "body": "a+b"}, "payload field 'body' is not base64url"),
        ("record", {**_record_payload(1), "attachments": ["00" * 32] * 21}, "at most 20 hashes"),
        ("record", {**_record_payload(1), "attachments": ["XY"]}, "attachment hashes must be SHA-256 hex"),
    ],
    ids=[
        "genesis-no-nodes-field",
        "genesis-no-params",
        "genesis-chain",
        "genesis-no-nodes",
        "genesis-node-id",
        "genesis-key-length",
        "genesis-node-fields",
        "genesis-params-null",
        "genesis-params-missing-field",
        "genesis-params-extra-field",
        "genesis-params-string",
        "genesis-params-bool",
        "genesis-params-no-delegates",
        "genesis-params-short-slot",
        "genesis-params-short-epoch",
        "genesis-params-miss-limit-zero",
        "genesis-params-negative-start",
        "vote-fields",
        "vote-empty",
        "vote-not-a-list",
        "vote-duplicate",
        "vote-bad-id",
        "vote-int-id",
        "evidence-fields",
        "evidence-a-base64",
        "evidence-b-null",
        "key-account",
        "record-uuid",
        "record-base64",
        "record-too-many-attachments",
        "record-attachment-hash",
    ],
)
def test_invalid_registry_payload_shape(registry, doctor_keys, kind, payload, message):
    with pytest.raises(InvalidTransaction) as info:
        registry.apply(sign_transaction(kind, payload, doctor_keys, TS), 2)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "nurse"}, "unknown role"),
        ({"umbral": b64e(bytes(32))}, "umbral key must be a 33-byte compressed point"),
    ],
    ids=["role", "umbral-length"],
)
def test_invalid_registry_key_payload(registry, stranger_keys, change, message):
    tx = sign_transaction("key", {**_key_payload(stranger_keys, "doctor"), **change}, stranger_keys, TS)
    with pytest.raises(InvalidTransaction, match=rf"^{message}$"):
        registry.apply(tx, 2)


# Whole-chain validation


@pytest.fixture(scope="module")
def chain(node_key, doctor_keys, genesis, doctor_key_tx, patient_key_tx):
    bodies = [
        [genesis],
        [doctor_key_tx, patient_key_tx],
        [sign_transaction("record", _record_payload(1), doctor_keys, TS + 10)],
        [],
        [sign_transaction("record", _record_payload(i), doctor_keys, TS + 20) for i in (2, 3, 4)],
    ]
    stored, prev = [], GENESIS_PREV_HASH
    for height, txs in enumerate(bodies):
        block = make_block(height, prev, txs, node_key.node_id, node_key, TS + 1000 * height)
        stored.append(StoredBlock(height, block.header.hash, block.header.encoded, [tx.encoded for tx in txs]))
        prev = block.header.hash
    return stored


def test_validate_chain_good(chain):
    report = validate_chain(chain)
    assert report.valid
    assert report.blocks == 5
    assert report.tip_hash == chain[-1].hash
    assert (report.height, report.check, report.detail) == (None, None, None)
    assert report.to_dict() == {"valid": True, "blocks": 5, "tip_hash": chain[-1].hash}
    assert report.describe() == f"chain valid: 5 blocks, tip {chain[-1].hash}"


def test_validate_chain_accepts_an_iterator(chain):
    assert validate_chain(iter(chain)).blocks == 5


def test_validate_chain_genesis_only(chain):
    report = validate_chain(chain[:1])
    assert report.valid and report.blocks == 1 and report.tip_hash == chain[0].hash


def _two_blocks(node_key: NodeKey, genesis: Transaction, second_ts: int) -> list[StoredBlock]:
    first = make_block(0, GENESIS_PREV_HASH, [genesis], "node-1", node_key, TS)
    second = make_block(1, first.header.hash, [], "node-1", node_key, second_ts)
    return [
        StoredBlock(0, first.header.hash, first.header.encoded, [genesis.encoded]),
        StoredBlock(1, second.header.hash, second.header.encoded, []),
    ]


def test_validate_chain_equal_timestamps_pass_the_timestamp_check_but_not_the_schedule(node_key, genesis):
    """The timestamp check only forbids going back in time; since consensus, two blocks in one slot
    (here: the same millisecond as the genesis block, slot 0) are refused by the producer schedule."""
    report = validate_chain(_two_blocks(node_key, genesis, TS))
    assert (report.valid, report.height, report.check) == (False, 1, "producer schedule")
    assert report.detail == "slot 0 is not after the previous block's slot 0"


def test_invalid_validate_chain_second_block_in_the_same_slot(node_key, genesis):
    report = validate_chain(_two_blocks(node_key, genesis, TS + SLOT_MS - 1))
    assert (report.valid, report.height, report.check) == (False, 1, "producer schedule")


def test_validate_chain_next_slot_is_accepted(node_key, genesis):
    assert validate_chain(_two_blocks(node_key, genesis, TS + SLOT_MS)).valid
    assert validate_chain(_two_blocks(node_key, genesis, TS + 7 * SLOT_MS + 999)).valid


def test_invalid_validate_chain_empty():
    report = validate_chain([])
    assert not report.valid
    assert (report.blocks, report.tip_hash, report.height, report.check) == (0, None, 0, "missing block")
    assert report.detail == "the chain has no genesis block"
    assert report.describe() == "chain INVALID at height 0: missing block: the chain has no genesis block"


def test_invalid_validate_chain_report_keeps_last_good_tip(chain):
    broken = [*chain[:3], dataclasses.replace(chain[3], hash="00" * 32), chain[4]]
    report = validate_chain(broken)
    assert not report.valid
    assert (report.blocks, report.tip_hash, report.height, report.check) == (3, chain[2].hash, 3, "header hash")
    assert report.to_dict() == {
        "valid": False,
        "blocks": 3,
        "tip_hash": chain[2].hash,
        "height": 3,
        "check": "header hash",
        "detail": "stored hash does not match the header",
    }
