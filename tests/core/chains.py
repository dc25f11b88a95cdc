"""The small stored chain that the tamper and archive tests share, and the payloads it holds.

    0  genesis (node-1, consensus parameters)
    1  key registrations: doctor, patient
    2  record 1
    3  records 2, 3, 4
    4  records 5, 6

One block per slot of a consortium of one, so the chain is valid as built.
"""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives.asymmetric import ed25519

from core.consensus import Params
from core.crypto import NodeKey, UserKeys
from core.encoding import b64e, canonical
from core.ledger import GENESIS_PREV_HASH, StoredBlock, decode_header, make_block, sign_transaction
from core.ledger import block as block_module
from core.ledger import key_payload as endorsed_key

TS = 1_700_000_000_000
SLOT_MS = 1000
PARAMS = Params(delegates=1, slot_ms=SLOT_MS, epoch_slots=60, miss_limit=3, genesis_ms=TS).to_dict()
# The core tests' node-1, deterministic so that its endorsements are the same on every run.
NODE = NodeKey("node-1", ed25519.Ed25519PrivateKey.from_private_bytes(b"\x11" * 32))
PATIENT_ID = str(uuid.UUID(int=101, version=4))


def record_payload(seed: int) -> dict:
    return {
        "record": str(uuid.UUID(int=seed, version=4)),
        "patient": PATIENT_ID,
        "ctag": f"{seed:032x}",
        "body": b64e(bytes([seed]) * 48),
        "capsule": b64e(bytes([seed + 1]) * 98),
        "pkey": b64e(bytes([seed + 2]) * 72),
        "akey": b64e(bytes([seed + 3]) * 384),
        "attachments": [],
    }


def genesis_payload(node: NodeKey) -> dict:
    return {"chain": "medledger-test", "nodes": [{"id": "node-1", "key": b64e(node.public_raw)}], "params": PARAMS}


def key_payload(user: UserKeys, role: str, seed: int, home: NodeKey = NODE) -> dict:
    """A key registration endorsed by `home` (node-1 unless said otherwise)."""
    return endorsed_key(
        str(uuid.UUID(int=seed, version=4)), role, user.public.rsa_der, user.public.umbral, home, user.public.sign
    )


def build_blocks(node: NodeKey, doctor: UserKeys, patient: UserKeys) -> list[StoredBlock]:
    """The five blocks above, as a node stores them."""
    bodies = [
        [sign_transaction("genesis", genesis_payload(node), node, TS)],
        [
            sign_transaction("key", key_payload(doctor, "doctor", 100), doctor, TS + 1),
            sign_transaction("key", key_payload(patient, "patient", 101), patient, TS + 2),
        ],
        [sign_transaction("record", record_payload(1), doctor, TS + 10)],
        [sign_transaction("record", record_payload(seed), doctor, TS + 20) for seed in (2, 3, 4)],
        [sign_transaction("record", record_payload(seed), doctor, TS + 30) for seed in (5, 6)],
    ]
    blocks, prev = [], GENESIS_PREV_HASH
    for height, txs in enumerate(bodies):
        block = make_block(height, prev, txs, "node-1", node, TS + SLOT_MS * height)
        blocks.append(StoredBlock(height, block.header.hash, block.header.encoded, [tx.encoded for tx in txs]))
        prev = block.header.hash
    return blocks


def rewrite_header(stored: StoredBlock, signer: NodeKey | None = None, **changes: object) -> StoredBlock:
    """The block with header fields changed, re-signed by `signer` if given (else keeping the old
    signature), filed under its new hash."""
    header = decode_header(stored.header)
    unsigned = {**header.unsigned(), **changes}
    signature = header.signature
    if signer is not None:
        signature = signer.sign(block_module.SIGNING_DOMAIN + canonical(unsigned))
    rebuilt = block_module._build(unsigned, signature)
    return StoredBlock(stored.height, rebuilt.hash, rebuilt.encoded, list(stored.transactions))
