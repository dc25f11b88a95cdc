"""Validation decodes each header and transaction once: the quick paths give the same verdicts.

`decode_canonical` proves most bytes canonical without re-encoding them, `b64d` checks base64url
without encoding it back, decoded headers and transactions keep the bytes their signature covers,
and `ConsensusState.copy` copies containers instead of deep-copying. Each is checked here against
the slow way it replaced, on seeded random inputs and on the edge cases of each rule.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random

import pytest

from core.consensus import ConsensusState, Params
from core.encoding import _decode_and_compare, b64d, b64e, canonical, decode_canonical, is_b64
from core.errors import EncodingError, InvalidTransaction
from core.ledger import block as block_module
from core.ledger import decode_header, decode_transaction, sign_transaction
from core.ledger import transaction as transaction_module
from tests.core.chains import NODE, TS, build_blocks, record_payload

PIECES = [
    b" ", b"\\", b"\\u0041", b"\\u00e9", b"\\ud800", b"\\u001f", b"\\u001F", b"\\/", b"\\b", b"\\n", b"-0", b"0",
    b"1", b"-1", b"9999999999999999999", b"-9223372036854775809", b"[", b"]", b"{", b"}", b",", b":", b'"', b"\n",
    b"\t", b"\r", b"1.5", b"e5", b"true", b"null", b"\xff", b"\xc3\xa9", b'"a":1', b'"sig":"x"', b"[" * 33,
]  # fmt: skip
LEAVES = [None, True, False, 0, -1, 7, 2**63 - 1, -(2**63) + 1, "", "a", "é", "a b", "x\ny", "q\"", "\\", "-0", ":-0",
          "\x01", "\x7f", "\u2028", "😀"]  # fmt: skip
KEYS = ["a", "b", "aa", "A", "é", "sig", "-0", ""]


def _value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        return rng.choice(LEAVES)
    if roll < 0.7:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(3)):
        position = rng.randrange(len(out) + 1)
        step = rng.randrange(4)
        if step == 0:
            out[position:position] = rng.choice(PIECES)
        elif step == 1:
            del out[position : position + rng.randrange(1, 3)]
        elif step == 2:
            out[position : position + 1] = rng.choice(PIECES)
        elif len(out) > 1:
            other = rng.randrange(len(out))
            out[position : position + 1], out[other : other + 1] = out[other : other + 1], out[position : position + 1]
    return bytes(out)


def _verdict(decode, data: bytes) -> tuple[str, str]:
    try:
        return "value", repr(decode(data))
    except EncodingError as exc:
        return "error", str(exc)


@pytest.fixture(scope="module")
def stored(doctor_keys, patient_keys):
    return build_blocks(NODE, doctor_keys, patient_keys)


def test_decode_canonical_agrees_with_re_encoding(stored):
    rng = random.Random(20261203)
    samples = [b.header for b in stored] + [tx for b in stored for tx in b.transactions]
    for _ in range(6000):
        base = canonical(_value(rng)) if rng.random() < 0.7 else rng.choice(samples)
        data = _mutate(rng, base)
        assert _verdict(decode_canonical, data) == _verdict(_decode_and_compare, data), data


@pytest.mark.parametrize(
    "data",
    [b'{"b":1,"a":2}', b'{"a":1,"a":1}', b'{"b":{"a":1,"a":2},"a":0}', b"[-0]", b'{"a":-0}',
     b"[9223372036854775807]", b"[9223372036854775808]", b"[-9223372036854775808]", b"[123456789012345678]",
     b"[" * 32 + b"]" * 32, b"[" * 33 + b"]" * 33, b'"ab-0"', b'{"a":"x-0"}', b'"\\u0000"', b"[1,2.5]"],
)  # fmt: skip
def test_decode_canonical_edge_cases_agree(data):
    assert _verdict(decode_canonical, data) == _verdict(_decode_and_compare, data)


def _old_b64d(text: str) -> bytes:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise EncodingError("malformed base64url") from exc
    if b64e(data) != text:
        raise EncodingError("non-canonical base64url")
    return data


def test_b64d_agrees_with_re_encoding():
    rng = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \n.é"
    for _ in range(20000):
        text = list(b64e(rng.randbytes(rng.randrange(12))))
        for _ in range(rng.randrange(3)):
            if text and rng.random() < 0.5:
                text[rng.randrange(len(text))] = rng.choice(alphabet)
            else:
                text.insert(rng.randrange(len(text) + 1), rng.choice(alphabet))
        candidate = "".join(text)
        assert _verdict(b64d, candidate) == _verdict(_old_b64d, candidate), candidate
        assert is_b64(candidate) == (_verdict(_old_b64d, candidate)[0] == "value"), candidate


def test_decoded_signing_bytes_are_the_canonical_unsigned_encoding(stored):
    for block in stored:
        header = decode_header(block.header)
        assert header.signing_bytes() == block_module.SIGNING_DOMAIN + canonical(header.unsigned())
        for data in block.transactions:
            tx = decode_transaction(data)
            assert tx.encoded is data
            assert tx.signing_bytes() == transaction_module.SIGNING_DOMAIN + canonical(tx.unsigned())


def test_replaced_transaction_signs_its_own_fields(doctor_keys):
    honest = sign_transaction("record", record_payload(1), doctor_keys, TS)
    edited = dataclasses.replace(honest, payload=record_payload(2))
    assert edited.signing_bytes() == transaction_module.SIGNING_DOMAIN + canonical(edited.unsigned())
    assert edited.signing_bytes() != honest.signing_bytes()


def test_invalid_version_true_is_not_canonical(stored):
    header = json.loads(stored[0].header)
    header["v"] = True
    with pytest.raises(EncodingError, match=r"^header is not in canonical form$"):
        decode_header(canonical(header))
    tx = json.loads(stored[2].transactions[0])
    tx["v"] = True
    with pytest.raises(EncodingError, match=r"^transaction is not in canonical form$"):
        decode_transaction(canonical(tx))


def test_invalid_transaction_version_is_still_named():
    with pytest.raises(InvalidTransaction, match="unknown transaction version 2"):
        envelope = {"kind": "a", "nonce": "", "payload": {}, "sig": "", "signer": "", "ts": 0, "v": 2}
        decode_transaction(canonical(envelope))


def test_consensus_copy_is_independent():
    state = ConsensusState.from_genesis(Params(delegates=2), {"n1": bytes(32), "n2": bytes([1] * 32)}, "ab" * 32)
    state.admissions[("n3", "key")] = {"n1"}
    before = repr(state)
    trial = state.copy()
    assert repr(trial) == before
    for value in vars(trial).values():
        if isinstance(value, dict):
            value["x"] = 1
        elif isinstance(value, list):
            value.append("x")
        elif isinstance(value, set):
            value.add("x")
    trial.admissions[("n3", "key")].add("n2")
    trial.epoch, trial.last_hash = 99, "0" * 64
    assert repr(state) == before
