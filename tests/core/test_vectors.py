"""Known-answer vectors for the ledger formats, stored in vectors/ledger.json.

Everything here is computed from fixed inputs (Ed25519 signatures are
deterministic), so any change to the canonical encoding, the Merkle tree, the
transaction or block envelope, a signing domain, the genesis consensus parameters
or the delegates' shuffle (which every node must compute alike) shows up as a
mismatch.
After a deliberate format change, regenerate the file and review the diff:

    .venv/bin/python -c "from tests.core.test_vectors import write_vectors; write_vectors()"
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from core.consensus import Params, shuffle
from core.crypto import NodeKey
from core.encoding import b64d, b64e, canonical, decode_canonical
from core.ledger import (
    GENESIS_PREV_HASH,
    StoredBlock,
    decode_header,
    decode_transaction,
    make_block,
    merkle_root,
    sign_transaction,
    validate_chain,
)

VECTORS = Path(__file__).parent / "vectors" / "ledger.json"
SEED = bytes(range(32))
TS = 1_700_000_000_000

CANONICAL_INPUTS: list[Any] = [
    None,
    True,
    0,
    -9223372036854775807,
    9223372036854775807,
    "",
    "Zoë \u65e5\u672c \U0001f600",
    'quote " backslash \\ newline \n control \x1f',
    [],
    {},
    [1, [2, [3]], {"b": None, "a": False}],
    {"\U0001f600": 1, "\uff61": 2, "a": 3, "B": 4, "é": 5, "": 6},
    {"v": 1, "kind": "record", "payload": {"z": "last", "a": "first"}},
]
MERKLE_SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9]
PARAMS = Params(delegates=1, slot_ms=1000, epoch_slots=60, miss_limit=3, genesis_ms=TS)
SHUFFLE_MEMBERS = ["node-1", "node-2", "node-3", "node-4", "node-5"]
SHUFFLE_ROUNDS = range(4)


def _node() -> NodeKey:
    return NodeKey("node-1", ed25519.Ed25519PrivateKey.from_private_bytes(SEED))


def _leaf_hashes(n: int) -> list[str]:
    return [hashlib.sha256(bytes([i])).hexdigest() for i in range(n)]


def _compute_vectors() -> dict[str, Any]:
    """Every known answer, from fixed inputs only."""
    node = _node()
    genesis = sign_transaction(
        "genesis",
        {
            "chain": "medledger-vectors",
            "nodes": [{"id": node.node_id, "key": b64e(node.public_raw)}],
            "params": PARAMS.to_dict(),
        },
        node,
        timestamp_ms=TS,
        nonce="00" * 16,
    )
    block0 = make_block(0, GENESIS_PREV_HASH, [genesis], node.node_id, node, timestamp_ms=TS, nonce="11" * 16)
    block1 = make_block(
        1, block0.header.hash, [], node.node_id, node, timestamp_ms=PARAMS.slot_start(1), nonce="22" * 16
    )
    # The round seeds as ConsensusState derives them: round number || hash of the last block before it.
    seeds = [r.to_bytes(8, "big") + bytes.fromhex(block0.header.hash) for r in SHUFFLE_ROUNDS]
    return {
        "node": {
            "id": node.node_id,
            "seed": SEED.hex(),
            "public": node.public_raw.hex(),
            "key_id": node.key_id,
        },
        "canonical": [
            {
                "value": value,
                "encoded": canonical(value).decode("utf-8"),
                "sha256": hashlib.sha256(canonical(value)).hexdigest(),
            }
            for value in CANONICAL_INPUTS
        ],
        "merkle": [{"leaves": _leaf_hashes(n), "root": merkle_root(_leaf_hashes(n))} for n in MERKLE_SIZES],
        "genesis_tx": {
            "encoded": genesis.encoded.decode("utf-8"),
            "hash": genesis.hash,
            "sig": b64e(genesis.signature),
        },
        "blocks": [
            {
                "height": block.header.height,
                "header": block.header.encoded.decode("utf-8"),
                "hash": block.header.hash,
                "root": block.header.merkle_root,
                "transactions": [tx.encoded.decode("utf-8") for tx in block.transactions],
            }
            for block in (block0, block1)
        ],
        "shuffle": [
            {"members": SHUFFLE_MEMBERS, "seed": seed.hex(), "order": shuffle(SHUFFLE_MEMBERS, seed)} for seed in seeds
        ],
    }


def write_vectors() -> None:
    """Regenerate vectors/ledger.json (only after a deliberate format change)."""
    VECTORS.parent.mkdir(exist_ok=True)
    VECTORS.write_text(json.dumps(_compute_vectors(), indent=2, ensure_ascii=False, sort_keys=True) + "\n", "utf-8")


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    return json.loads(VECTORS.read_text("utf-8"))


@pytest.fixture(scope="module")
def computed() -> dict[str, Any]:
    return _compute_vectors()


def test_vectors_file_is_complete(stored):
    assert set(stored) == {"node", "canonical", "merkle", "genesis_tx", "blocks", "shuffle"}
    assert len(stored["canonical"]) == len(CANONICAL_INPUTS)
    assert [len(case["leaves"]) for case in stored["merkle"]] == MERKLE_SIZES
    assert len(stored["blocks"]) == 2
    assert len(stored["shuffle"]) == len(SHUFFLE_ROUNDS)


def test_node_key_vector(stored, computed):
    assert computed["node"] == stored["node"]


@pytest.mark.parametrize("index", range(len(CANONICAL_INPUTS)))
def test_canonical_vector(stored, computed, index):
    case = stored["canonical"][index]
    assert computed["canonical"][index] == case
    assert canonical(case["value"]).decode("utf-8") == case["encoded"]
    assert decode_canonical(case["encoded"].encode("utf-8")) == case["value"]


@pytest.mark.parametrize("index", range(len(MERKLE_SIZES)), ids=[f"{n}-leaves" for n in MERKLE_SIZES])
def test_merkle_vector(stored, index):
    case = stored["merkle"][index]
    assert merkle_root(case["leaves"]) == case["root"]


def test_merkle_vectors_are_distinct(stored):
    roots = [case["root"] for case in stored["merkle"]]
    assert len(set(roots)) == len(roots)


def test_genesis_transaction_vector(stored, computed):
    assert computed["genesis_tx"] == stored["genesis_tx"]
    encoded = stored["genesis_tx"]["encoded"].encode("utf-8")
    tx = decode_transaction(encoded)
    assert tx.hash == stored["genesis_tx"]["hash"] == hashlib.sha256(encoded).hexdigest()
    assert (tx.kind, tx.timestamp, tx.nonce, tx.signer) == ("genesis", TS, "00" * 16, stored["node"]["key_id"])
    _node().verifier().verify(b64d(stored["genesis_tx"]["sig"]), tx.signing_bytes())
    assert sorted(tx.payload) == ["chain", "nodes", "params"]
    assert tx.payload["params"] == {
        "delegates": 1,
        "slot_ms": 1000,
        "epoch_slots": 60,
        "miss_limit": 3,
        "genesis_ms": TS,
    }
    assert Params.from_dict(tx.payload["params"]) == PARAMS


@pytest.mark.parametrize("index", range(len(SHUFFLE_ROUNDS)))
def test_shuffle_vector(stored, computed, index):
    case = stored["shuffle"][index]
    assert computed["shuffle"][index] == case
    assert shuffle(case["members"], bytes.fromhex(case["seed"])) == case["order"]
    assert sorted(case["order"]) == case["members"]


def test_shuffle_vectors_differ_by_round(stored):
    assert len({tuple(case["order"]) for case in stored["shuffle"]}) > 1
    assert stored["shuffle"][0]["seed"][16:] == stored["blocks"][0]["hash"]


@pytest.mark.parametrize("height", [0, 1])
def test_block_vector(stored, computed, height):
    assert computed["blocks"][height] == stored["blocks"][height]


def test_stored_headers_decode_and_validate(stored):
    """The bytes in the file are themselves a valid two-block chain, independent of the generator."""
    chain = []
    for case in stored["blocks"]:
        header = decode_header(case["header"].encode("utf-8"))
        assert header.hash == case["hash"]
        assert header.height == case["height"]
        assert header.merkle_root == case["root"]
        chain.append(
            StoredBlock(
                case["height"],
                case["hash"],
                case["header"].encode("utf-8"),
                [t.encode("utf-8") for t in case["transactions"]],
            )
        )
    assert chain[0].transactions == [stored["genesis_tx"]["encoded"].encode("utf-8")]
    assert decode_header(chain[1].header).prev_hash == chain[0].hash
    slots = [PARAMS.slot_of(decode_header(b.header).timestamp) for b in chain]
    assert slots == [0, 1]
    report = validate_chain(chain)
    assert report.valid
    assert (report.blocks, report.tip_hash) == (2, stored["blocks"][1]["hash"])
