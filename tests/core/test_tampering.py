"""Every way of tampering with a stored chain is caught at the right height by the right check.

The chain (built once per module):

    0  genesis (node-1)
    1  key registrations: doctor, patient
    2  record 1
    3  records 2, 3, 4
    4  records 5, 6

Each case mutates a copy of the stored blocks and asserts the exact (height, check)
that `validate_chain` reports. Cases marked "attacker with the node key" re-sign
the header they touch, so the producer signature cannot be what catches them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from core.crypto import NodeKey, UserKeys
from core.encoding import b64d, b64e, canonical, decode_canonical
from core.ledger import GENESIS_PREV_HASH, StoredBlock, decode_header, make_block, sign_transaction, validate_chain
from core.ledger import transaction as transaction_module
from core.ledger.merkle import merkle_root
from tests.core.chains import TS, build_blocks, genesis_payload, key_payload, record_payload, rewrite_header

HEADER_LEN = 343


@dataclass(frozen=True)
class Chain:
    blocks: list[StoredBlock]
    node: NodeKey
    doctor: UserKeys
    patient: UserKeys


@pytest.fixture(scope="module")
def chain(node_key, doctor_keys, patient_keys) -> Chain:
    return Chain(build_blocks(node_key, doctor_keys, patient_keys), node_key, doctor_keys, patient_keys)


def test_untouched_chain_is_valid(chain):
    report = validate_chain(chain.blocks)
    assert report.valid
    assert report.blocks == 5
    assert report.tip_hash == chain.blocks[-1].hash
    assert len(chain.blocks[2].header) == HEADER_LEN


# Helpers that rebuild stored blocks the way an attacker would.


def _flip(data: bytes, position: int, mask: int) -> bytes:
    mutated = bytearray(data)
    mutated[position] ^= mask
    return bytes(mutated)


def _replace(blocks: list[StoredBlock], height: int, stored: StoredBlock) -> list[StoredBlock]:
    """A copy of the chain with the block at `height` (also its list index) replaced."""
    copy = list(blocks)
    copy[height] = stored
    return copy


def _reheader(chain: Chain, at: int, resign: bool = False, **changes: object) -> list[StoredBlock]:
    """Change header fields of block `at` and file it under its new hash, so only deeper checks can fail."""
    return _replace(chain.blocks, at, rewrite_header(chain.blocks[at], chain.node if resign else None, **changes))


def _with_signature(chain: Chain, height: int, signature: bytes) -> list[StoredBlock]:
    stored = chain.blocks[height]
    value = decode_canonical(stored.header)
    encoded = canonical({**value, "sig": b64e(signature)})
    return _replace(chain.blocks, height, dataclasses.replace(stored, header=encoded, hash=_sha(encoded)))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rebody(chain: Chain, height: int, txs: list[bytes], signer: NodeKey | None = None) -> list[StoredBlock]:
    """Replace a block's transactions; with a signer, also fix the Merkle root and re-sign (node key holder)."""
    stored = chain.blocks[height]
    if signer is None:
        return _replace(chain.blocks, height, dataclasses.replace(stored, transactions=txs))
    root = merkle_root([_sha(tx) for tx in txs])
    rebuilt = rewrite_header(stored, signer, root=root)
    return _replace(chain.blocks, height, dataclasses.replace(rebuilt, transactions=txs))


def _edit_payload(tx_bytes: bytes, **changes: object) -> bytes:
    """The same transaction with payload fields changed and its original signature kept."""
    value = decode_canonical(tx_bytes)
    value["payload"] = {**value["payload"], **changes}
    return canonical(value)


def _foreign_node() -> NodeKey:
    return NodeKey("node-1", ed25519.Ed25519PrivateKey.from_private_bytes(b"\x42" * 32))


# Single-byte flips anywhere in a header or a transaction.

HEIGHT_DIGIT = len(b'{"height":')  # position of the "2" in block 2's header
HEADER_POSITIONS = sorted({*range(0, HEADER_LEN, 7), HEADER_LEN // 2, HEADER_LEN - 1, HEIGHT_DIGIT})


def _header_flip_cases() -> list:
    cases = []
    for position in HEADER_POSITIONS:
        allowed = {"reordered"} if position == HEIGHT_DIGIT else {"encoding", "header hash"}
        cases.append(pytest.param(position, 0x01, allowed, id=f"header-byte{position}-xor01"))
    for position, name in ((0, "first"), (HEADER_LEN // 2, "middle"), (HEADER_LEN - 1, "last")):
        for mask in (0x80, 0xFF, 0x20):
            cases.append(pytest.param(position, mask, {"encoding"}, id=f"header-{name}-xor{mask:02x}"))
    return cases


@pytest.mark.parametrize(("position", "mask", "allowed"), _header_flip_cases())
def test_header_byte_flip(chain, position, mask, allowed):
    stored = chain.blocks[2]
    assert position < len(stored.header)
    blocks = _replace(chain.blocks, 2, dataclasses.replace(stored, header=_flip(stored.header, position, mask)))
    report = validate_chain(blocks)
    assert not report.valid
    assert report.height == 2
    assert report.check in allowed
    assert report.blocks == 2
    assert report.tip_hash == chain.blocks[1].hash


TX_FRACTIONS = 64


@pytest.mark.parametrize("step", [*range(TX_FRACTIONS), TX_FRACTIONS], ids=lambda s: f"tx-byte-at-{s}of{TX_FRACTIONS}")
def test_transaction_byte_flip(chain, step):
    stored = chain.blocks[3]
    tx = stored.transactions[1]
    position = min(step * len(tx) // TX_FRACTIONS, len(tx) - 1)
    txs = list(stored.transactions)
    txs[1] = _flip(tx, position, 0x01)
    report = validate_chain(_replace(chain.blocks, 3, dataclasses.replace(stored, transactions=txs)))
    assert not report.valid
    assert report.height == 3
    assert report.check in {"encoding", "body hash"}
    assert report.blocks == 3


# Whole-block and structural tampering, each with one exact expected outcome.

Mutation = Callable[[Chain], list[StoredBlock]]


def _drop(height: int) -> Mutation:
    return lambda c: [b for b in c.blocks if b.height != height]


def _swap_contents(c: Chain) -> list[StoredBlock]:
    """Block 3's bytes filed at height 2 and block 2's at height 3."""
    b = c.blocks
    return [b[0], b[1], dataclasses.replace(b[3], height=2), dataclasses.replace(b[2], height=3), b[4]]


def _tx_signature_forged(c: Chain, at: int = 3) -> list[StoredBlock]:
    """The patient's signature on the doctor's record, under a header re-signed with the node key."""
    txs = list(c.blocks[at].transactions)
    honest = decode_canonical(txs[0])
    unsigned = {k: v for k, v in honest.items() if k != "sig"}
    forged = c.patient.sign(transaction_module.SIGNING_DOMAIN + canonical(unsigned))
    txs[0] = canonical({**honest, "sig": b64e(forged)})
    return _rebody(c, at, txs, signer=c.node)


def _edited_payload(c: Chain) -> list[StoredBlock]:
    txs = list(c.blocks[3].transactions)
    txs[0] = _edit_payload(txs[0], body=b64e(b"forged diagnosis"))
    return _rebody(c, 3, txs, signer=c.node)


def _edited_role(c: Chain) -> list[StoredBlock]:
    txs = list(c.blocks[1].transactions)
    txs[1] = _edit_payload(txs[1], role="doctor")
    return _rebody(c, 1, txs, signer=c.node)


def _patient_record(c: Chain) -> list[StoredBlock]:
    tx = sign_transaction("record", record_payload(50), c.patient, TS + 40)
    return _rebody(c, 4, [*c.blocks[4].transactions, tx.encoded], signer=c.node)


def _unknown_kind(c: Chain) -> list[StoredBlock]:
    tx = sign_transaction("ballot", {"yes": True}, c.doctor, TS + 40)
    return _rebody(c, 4, [*c.blocks[4].transactions, tx.encoded], signer=c.node)


def _replayed_genesis(c: Chain) -> list[StoredBlock]:
    return _rebody(c, 4, [*c.blocks[4].transactions, c.blocks[0].transactions[0]], signer=c.node)


def _stranger_key_registration(c: Chain) -> list[StoredBlock]:
    tx = sign_transaction("key", key_payload(c.patient, "doctor", 200), c.doctor, TS + 40)
    return _rebody(c, 4, [tx.encoded], signer=c.node)


def _foreign_genesis(c: Chain) -> list[StoredBlock]:
    other = _foreign_node()
    genesis = sign_transaction("genesis", genesis_payload(other), other, TS)
    block = make_block(0, GENESIS_PREV_HASH, [genesis], "node-1", other, TS)
    return [StoredBlock(0, block.header.hash, block.header.encoded, [genesis.encoded]), *c.blocks[1:]]


def _genesis_signed_by_doctor(c: Chain) -> list[StoredBlock]:
    genesis = sign_transaction("genesis", genesis_payload(c.node), c.doctor, TS)
    block = make_block(0, GENESIS_PREV_HASH, [genesis], "node-1", c.node, TS)
    return [StoredBlock(0, block.header.hash, block.header.encoded, [genesis.encoded]), *c.blocks[1:]]


def _unsigned_tx_field(c: Chain) -> list[StoredBlock]:
    """Same signature, later timestamp: the tx hash changes, root and header follow."""
    txs = list(c.blocks[2].transactions)
    value = decode_canonical(txs[0])
    txs[0] = canonical({**value, "ts": value["ts"] + 1})
    return _rebody(c, 2, txs, signer=c.node)


def _lone_surrogate(c: Chain) -> list[StoredBlock]:
    txs = list(c.blocks[4].transactions)
    txs[0] = txs[0].replace(b'"attachments":[]', b'"attachments":["\\ud800"]', 1)
    return _rebody(c, 4, txs, signer=c.node)


def _foreign_resign(c: Chain, height: int) -> list[StoredBlock]:
    return _replace(c.blocks, height, rewrite_header(c.blocks[height], _foreign_node()))


def _new_genesis(c: Chain) -> list[StoredBlock]:
    genesis = sign_transaction("genesis", genesis_payload(c.node), c.node, TS + 40)
    return _rebody(c, 4, [genesis.encoded], signer=c.node)


STRUCTURE_CASES = [
    # (id, mutation, height, check)
    ("delete-middle-block", _drop(2), 2, "missing block"),
    ("delete-block-3", _drop(3), 3, "missing block"),
    ("delete-genesis", _drop(0), 0, "missing block"),
    ("swap-block-contents", _swap_contents, 2, "reordered"),
    ("swap-list-order", lambda c: [*c.blocks[:2], c.blocks[3], c.blocks[2], c.blocks[4]], 2, "missing block"),
    ("duplicate-block", lambda c: [*c.blocks[:3], c.blocks[2], *c.blocks[3:]], 2, "reordered"),
    ("duplicate-genesis", lambda c: [c.blocks[0], *c.blocks], 0, "reordered"),
    ("block-filed-higher", lambda c: [*c.blocks[:2], dataclasses.replace(c.blocks[2], height=5)], 2, "missing block"),
    (
        "stored-hash-changed",
        lambda c: _replace(c.blocks, 2, dataclasses.replace(c.blocks[2], hash="0" * 64)),
        2,
        "header hash",
    ),
    (
        "stored-hash-of-other-block",
        lambda c: _replace(c.blocks, 2, dataclasses.replace(c.blocks[2], hash=c.blocks[3].hash)),
        2,
        "header hash",
    ),
    (
        "header-of-other-block",
        lambda c: _replace(c.blocks, 2, dataclasses.replace(c.blocks[3], height=2)),
        2,
        "reordered",
    ),
    (
        "header-replaced-by-genesis",
        lambda c: _replace(c.blocks, 2, dataclasses.replace(c.blocks[0], height=2)),
        2,
        "reordered",
    ),
    ("remove-transaction", lambda c: _rebody(c, 3, list(c.blocks[3].transactions[:2])), 3, "body hash"),
    ("remove-all-transactions", lambda c: _rebody(c, 3, []), 3, "body hash"),
    ("reorder-transactions", lambda c: _rebody(c, 3, [c.blocks[3].transactions[i] for i in (1, 0, 2)]), 3, "body hash"),
    (
        "add-transaction",
        lambda c: _rebody(c, 4, [*c.blocks[4].transactions, c.blocks[2].transactions[0]]),
        4,
        "body hash",
    ),
    (
        "move-transaction-between-blocks",
        lambda c: _rebody(c, 3, [*c.blocks[3].transactions, c.blocks[4].transactions[0]]),
        3,
        "body hash",
    ),
    ("transaction-not-json", lambda c: _rebody(c, 3, [b"junk", *c.blocks[3].transactions[1:]]), 3, "encoding"),
    (
        "transaction-reencoded-with-spaces",
        lambda c: _rebody(c, 2, [c.blocks[2].transactions[0].replace(b",", b", ", 1)]),
        2,
        "encoding",
    ),
    # Attackers holding the node key: the header is re-signed, the records are not.
    ("edit-record-payload", _edited_payload, 3, "transaction signature"),
    ("edit-tx-timestamp", _unsigned_tx_field, 2, "transaction signature"),
    ("forge-record-signature", _tx_signature_forged, 3, "transaction signature"),
    # The role is endorsed by the home node as well as signed by the key: the endorsement fails first.
    ("promote-patient-to-doctor", _edited_role, 1, "transaction"),
    (
        "copy-earlier-tx-into-later-block",
        lambda c: _rebody(c, 4, [*c.blocks[4].transactions, c.blocks[2].transactions[0]], signer=c.node),
        4,
        "duplicate transaction",
    ),
    (
        "copy-key-registration-into-later-block",
        lambda c: _rebody(c, 4, [c.blocks[1].transactions[0]], signer=c.node),
        4,
        "duplicate transaction",
    ),
    (
        "same-tx-twice-in-a-block",
        lambda c: _rebody(c, 3, [*c.blocks[3].transactions, c.blocks[3].transactions[0]], signer=c.node),
        3,
        "duplicate transaction",
    ),
    ("record-signed-by-patient", _patient_record, 4, "transaction"),
    ("unknown-transaction-kind", _unknown_kind, 4, "transaction"),
    ("replayed-genesis", _replayed_genesis, 4, "duplicate transaction"),
    ("new-genesis-in-later-block", _new_genesis, 4, "transaction"),
    ("key-registration-not-self-signed", _stranger_key_registration, 4, "transaction"),
    ("rewrite-block-with-node-key", lambda c: _reheader(c, 2, resign=True, nonce="ab" * 16), 3, "link"),
    ("genesis-of-another-node", _foreign_genesis, 1, "link"),
    ("genesis-tx-signed-by-doctor", _genesis_signed_by_doctor, 0, "transaction"),
    ("header-signed-by-foreign-key", lambda c: _foreign_resign(c, 2), 2, "producer signature"),
    ("header-signature-zeroed", lambda c: _with_signature(c, 2, bytes(64)), 2, "producer signature"),
    ("header-signature-empty", lambda c: _with_signature(c, 2, b""), 2, "producer signature"),
    (
        "header-signature-truncated",
        lambda c: _with_signature(c, 2, decode_header(c.blocks[2].header).signature[:63]),
        2,
        "producer signature",
    ),
    (
        "header-signature-of-block-3",
        lambda c: _with_signature(c, 2, decode_header(c.blocks[3].header).signature),
        2,
        "producer signature",
    ),
]


# Header fields changed and re-encoded, the stored hash updated to match.
HEADER_FIELD_CASES = [
    ("height", lambda c: _reheader(c, 2, height=7), 2, "reordered"),
    ("height-down", lambda c: _reheader(c, 2, height=1), 2, "reordered"),
    ("prev", lambda c: _reheader(c, 2, prev="ab" * 32), 2, "link"),
    ("prev-genesis", lambda c: _reheader(c, 2, prev=GENESIS_PREV_HASH), 2, "link"),
    ("prev-of-genesis-block", lambda c: _reheader(c, 0, prev=c.blocks[1].hash), 0, "link"),
    ("root", lambda c: _reheader(c, 3, root="cd" * 32), 3, "body hash"),
    ("root-of-empty-body", lambda c: _reheader(c, 3, root=merkle_root([])), 3, "body hash"),
    ("ts-before-previous", lambda c: _reheader(c, 3, ts=TS + 1000), 3, "timestamp"),
    ("ts-zero", lambda c: _reheader(c, 3, ts=0), 3, "timestamp"),
    ("ts-later", lambda c: _reheader(c, 3, ts=TS + 3500), 3, "producer signature"),
    ("nonce", lambda c: _reheader(c, 2, nonce="ff" * 16), 2, "producer signature"),
    ("producer-unknown", lambda c: _reheader(c, 2, producer="node-2"), 2, "producer signature"),
    ("producer-unknown-resigned", lambda c: _reheader(c, 2, resign=True, producer="node-2"), 2, "producer signature"),
    (
        "sig-bit-flip",
        lambda c: _with_signature(c, 2, _flip(decode_header(c.blocks[2].header).signature, 10, 1)),
        2,
        "producer signature",
    ),
    ("genesis-nonce", lambda c: _reheader(c, 0, nonce="ff" * 16), 0, "producer signature"),
    # The same changes by an attacker with the node key: checks that do not rely on the signature still fire.
    ("height-resigned", lambda c: _reheader(c, 2, resign=True, height=7), 2, "reordered"),
    ("prev-resigned", lambda c: _reheader(c, 2, resign=True, prev="ab" * 32), 2, "link"),
    ("root-resigned", lambda c: _reheader(c, 3, resign=True, root="cd" * 32), 3, "body hash"),
    ("ts-before-previous-resigned", lambda c: _reheader(c, 3, resign=True, ts=TS + 1000), 3, "timestamp"),
    # Slots (one block per slot, slot = (ts - genesis) // slot_ms): re-signed timestamps that pass the
    # timestamp check are caught by the producer schedule, or by the next block's link.
    ("ts-equal-to-previous-resigned", lambda c: _reheader(c, 3, resign=True, ts=TS + 2000), 3, "producer schedule"),
    ("ts-in-previous-slot-resigned", lambda c: _reheader(c, 3, resign=True, ts=TS + 2999), 3, "producer schedule"),
    ("tip-ts-in-previous-slot-resigned", lambda c: _reheader(c, 4, resign=True, ts=TS + 3500), 4, "producer schedule"),
    ("ts-later-in-own-slot-resigned", lambda c: _reheader(c, 3, resign=True, ts=TS + 3999), 4, "link"),
]


@pytest.mark.parametrize(
    ("mutate", "height", "check"),
    [pytest.param(*case[1:], id=case[0]) for case in STRUCTURE_CASES]
    + [pytest.param(*case[1:], id=f"header-field-{case[0]}") for case in HEADER_FIELD_CASES],
)
def test_tampering_is_caught(chain, mutate, height, check):
    blocks = mutate(chain)
    assert blocks != chain.blocks
    report = validate_chain(blocks)
    assert not report.valid
    assert (report.height, report.check) == (height, check), report.describe()
    # The report counts the blocks accepted before the bad one and names the last of them as the tip.
    assert report.tip_hash == (blocks[report.blocks - 1].hash if report.blocks else None)
    if report.blocks:
        prefix = validate_chain(blocks[: report.blocks])
        assert prefix.valid and prefix.tip_hash == report.tip_hash


def test_node_key_holder_can_rewrite_the_tip(chain):
    """Known limit: re-signing the tip with the node key is indistinguishable from producing it."""
    report = validate_chain(_reheader(chain, 4, resign=True, nonce="ff" * 16))
    assert report.valid
    assert report.tip_hash != chain.blocks[-1].hash


def test_truncated_chain_is_still_a_valid_prefix(chain):
    """Cutting blocks off the tip cannot be detected from the chain alone; the shorter chain is valid."""
    report = validate_chain(chain.blocks[:3])
    assert report.valid
    assert (report.blocks, report.tip_hash) == (3, chain.blocks[2].hash)


def test_signatures_can_be_skipped_but_structure_cannot(chain):
    forged = _tx_signature_forged(chain, at=4)
    assert validate_chain(forged).check == "transaction signature"
    assert validate_chain(forged, verify_signatures=False).valid
    broken = _drop(2)(chain)
    report = validate_chain(broken, verify_signatures=False)
    assert (report.valid, report.height, report.check) == (False, 2, "missing block")


def test_transaction_with_lone_surrogate_is_reported(chain):
    report = validate_chain(_lone_surrogate(chain))
    assert (report.valid, report.height, report.check) == (False, 4, "encoding")


def test_rebuild_helpers_are_faithful(chain):
    """Guard for the helpers above: rewriting nothing reproduces the stored header byte for byte."""
    rebuilt = rewrite_header(chain.blocks[2])
    assert rebuilt == chain.blocks[2]
    assert b64d(decode_canonical(rebuilt.header)["sig"]) == decode_header(rebuilt.header).signature
    assert _rebody(chain, 3, list(chain.blocks[3].transactions), signer=None) == chain.blocks
