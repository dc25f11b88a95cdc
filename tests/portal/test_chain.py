"""The ledger as stored by a node: reading it, verifying it, and catching tampering in the database."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from core.encoding import canonical, decode_canonical
from core.ledger import sign_transaction
from portal.extensions import db
from portal.models import LedgerBlock, LedgerTransaction, utcnow
from portal.services import ledger
from tests.conftest import RECORD, Person, produce


@pytest.fixture
def chain(app: Flask, client: FlaskClient, doctor: Person, patient: Person) -> int:
    """Genesis, a block of key registrations, then three blocks of one record each."""
    produce(app)
    for n in range(3):
        client.post(f"/api/v1/patients/{patient.id}/records", json={**RECORD, "title": f"R{n}"}, headers=doctor.headers)
        produce(app)
    return 4


def test_headers_and_blocks(client: FlaskClient, chain: int) -> None:
    page = client.get("/api/v1/chain/blocks?from=1&limit=2").json
    assert page["height"] == chain
    assert [b["height"] for b in page["blocks"]] == [1, 2]
    assert page["blocks"][1]["prev"] == page["blocks"][0]["hash"]
    assert set(page["blocks"][0]) >= {"height", "ts", "prev", "root", "nonce", "producer", "sig", "hash", "tx_count"}
    # The node's own node_info and two key registrations, then one record.
    assert [b["tx_count"] for b in page["blocks"]] == [3, 1]
    block = client.get("/api/v1/chain/blocks/2").json
    assert block["hash"] == page["blocks"][1]["hash"]
    [tx] = block["transactions"]
    assert tx["kind"] == "record" and len(tx["hash"]) == 64
    assert set(tx["payload"]) == {"record", "patient", "ctag", "body", "capsule", "pkey", "akey", "attachments"}
    assert client.get("/api/v1/chain/blocks/99").status_code == 404


@pytest.mark.parametrize("query", ["from=-1", "limit=0", "limit=101", "from=abc", "limit=1.5"])
def test_invalid_block_paging(client: FlaskClient, query: str) -> None:
    answer = client.get(f"/api/v1/chain/blocks?{query}")
    assert answer.status_code == 422
    assert answer.json["error"]["code"] == "validation_failed"


def test_verify_endpoint_and_cli_on_a_valid_chain(app: Flask, client: FlaskClient, chain: int) -> None:
    report = client.get("/api/v1/chain/verify").json
    assert report["valid"] is True and report["blocks"] == chain + 1
    result = app.test_cli_runner().invoke(args=["medledger", "verify"])
    assert result.exit_code == 0
    assert f"chain valid: {chain + 1} blocks" in result.output


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def tamper_header(height: int, position: int) -> None:
    row = db.session.get(LedgerBlock, height)
    row.header = flip(row.header, position)


def tamper_tx(height: int, position: int) -> None:
    row = db.session.scalar(select(LedgerTransaction).where(LedgerTransaction.block_height == height))
    row.encoded = flip(row.encoded, position)


def edit_header_field(height: int, field: str, value: object) -> None:
    """Rewrite a header field and refile the block under the new hash, as a careful attacker would."""
    row = db.session.get(LedgerBlock, height)
    header = decode_canonical(row.header)
    header[field] = value
    row.header = canonical(header)
    import hashlib

    row.hash = hashlib.sha256(row.header).hexdigest()


def delete_block(height: int) -> None:
    for tx in db.session.scalars(select(LedgerTransaction).where(LedgerTransaction.block_height == height)):
        tx.block_height = tx.position = None
    db.session.flush()
    db.session.delete(db.session.get(LedgerBlock, height))


@pytest.mark.parametrize(
    ("damage", "height", "checks"),
    [
        (lambda: tamper_header(2, 0), 2, {"encoding"}),
        (lambda: tamper_header(2, 40), 2, {"encoding", "header hash"}),
        (lambda: tamper_header(3, -3), 3, {"encoding", "header hash"}),
        (lambda: tamper_tx(2, 5), 2, {"encoding", "body hash"}),
        (lambda: tamper_tx(3, 300), 3, {"encoding", "body hash"}),
        (lambda: tamper_tx(4, -5), 4, {"encoding", "body hash"}),
        (lambda: edit_header_field(3, "prev", "ab" * 32), 3, {"link"}),
        (lambda: edit_header_field(2, "root", "cd" * 32), 2, {"body hash"}),
        (lambda: edit_header_field(2, "nonce", "ef" * 16), 2, {"producer signature"}),
        (lambda: edit_header_field(1, "producer", "intruder"), 1, {"producer signature"}),
        (lambda: delete_block(2), 2, {"missing block"}),
    ],
    ids=[
        "header-byte-0", "header-byte-40", "header-byte-end", "tx-byte-5", "tx-byte-300", "tx-byte-end",
        "prev-hash", "merkle-root", "nonce", "producer", "deleted-block",
    ],
)  # fmt: skip
def test_tampering_in_the_database_is_pinpointed(
    app: Flask, client: FlaskClient, chain: int, damage, height: int, checks: set[str]
) -> None:
    damage()
    db.session.commit()
    report = client.get("/api/v1/chain/verify").json
    assert report["valid"] is False
    assert report["height"] == height
    assert report["check"] in checks, report
    result = app.test_cli_runner().invoke(args=["medledger", "verify"])
    assert result.exit_code == 1
    assert f"chain INVALID at height {height}: {report['check']}" in result.output


def test_swapped_blocks_are_pinpointed(client: FlaskClient, chain: int) -> None:
    a, b = db.session.get(LedgerBlock, 2), db.session.get(LedgerBlock, 3)
    headers = (a.header, b.header)
    a.hash, b.hash = "a" * 64, "b" * 64
    db.session.flush()
    a.header, b.header = headers[1], headers[0]
    a.hash, b.hash = decode_hash(a.header), decode_hash(b.header)
    db.session.commit()
    report = client.get("/api/v1/chain/verify").json
    assert (report["valid"], report["height"], report["check"]) == (False, 2, "reordered")


def decode_hash(header: bytes) -> str:
    import hashlib

    return hashlib.sha256(header).hexdigest()


def test_forged_transaction_is_rejected_by_the_producer(
    app: Flask, client: FlaskClient, chain: int, patient: Person
) -> None:
    """A pending transaction with a forged signature never reaches a block."""
    from core.crypto import generate_user_keys

    intruder = generate_user_keys()
    doctor_tx = db.session.scalar(select(LedgerTransaction).where(LedgerTransaction.kind == "record"))
    payload = decode_canonical(doctor_tx.encoded)["payload"]
    forged = sign_transaction("record", {**payload, "record": "0" * 8 + "-0000-4000-8000-" + "0" * 12}, intruder, 1)
    # Claim the real doctor as signer while signing with another key.
    raw = decode_canonical(forged.encoded)
    raw["signer"] = decode_canonical(doctor_tx.encoded)["signer"]
    encoded = canonical(raw)
    import hashlib

    db.session.add(
        LedgerTransaction(
            hash=hashlib.sha256(encoded).hexdigest(), kind="record", encoded=encoded, received_at=utcnow()
        )
    )
    db.session.commit()
    assert produce(app) is None
    row = db.session.get(LedgerTransaction, hashlib.sha256(encoded).hexdigest())
    assert row.status == "rejected" and "bad signature" in row.reject_reason
    assert ledger.verify_chain().valid


def test_conflicting_pending_transactions_do_not_stall_the_producer(app: Flask, client: FlaskClient) -> None:
    """Two reports of one equivocation are each valid alone; the block takes the first and the
    second is rejected, instead of every block failing."""
    from core.encoding import b64e
    from core.ledger import make_block
    from portal import runtime

    node = runtime.node_key()
    one = make_block(1, "ab" * 32, [], node.node_id, node, 1_000, nonce="01" * 16)
    two = make_block(1, "cd" * 32, [], node.node_id, node, 1_000, nonce="02" * 16)
    first = sign_transaction("evidence", {"a": b64e(one.header.encoded), "b": b64e(two.header.encoded)}, node, 1)
    second = sign_transaction("evidence", {"a": b64e(two.header.encoded), "b": b64e(one.header.encoded)}, node, 2)
    for tx in (first, second):
        assert ledger.accept_from_peer(tx.encoded, utcnow())
    height = produce(app)
    assert height == 1
    assert db.session.get(LedgerTransaction, first.hash).status == "committed"
    rejected = db.session.get(LedgerTransaction, second.hash)
    assert rejected.status == "rejected" and "already punished" in rejected.reject_reason
    assert ledger.verify_chain().valid


def test_gossip_is_judged_per_transaction_in_one_batch(app: Flask, client: FlaskClient, patient: Person) -> None:
    """A peer's batch is taken in one turn of the chain lock: a record signed by a key that an
    earlier transaction of the batch registers is kept, a forged one and garbage are refused,
    a repeat and a transaction already held are known, and only the kept ones are stored."""
    import os
    import uuid

    from core.crypto import generate_user_keys
    from core.encoding import b64e
    from core.ledger.kinds import key_payload
    from portal import runtime

    keys = generate_user_keys()
    public = keys.public
    registration = sign_transaction(
        "key", key_payload(str(uuid.uuid4()), "doctor", public.rsa_der, public.umbral, runtime.node_key(), public.sign),
        keys, 1,
    )  # fmt: skip

    def record(n: int) -> dict[str, object]:
        return {"record": str(uuid.uuid4()), "patient": patient.id, "ctag": os.urandom(16).hex(),
                "body": b64e(os.urandom(600)), "capsule": b64e(os.urandom(98)), "pkey": b64e(os.urandom(48)),
                "akey": b64e(os.urandom(384)), "attachments": []}  # fmt: skip

    written = sign_transaction("record", record(1), keys, 2)
    forged = sign_transaction("record", record(2), generate_user_keys(), 3)  # a key nobody registered
    outcomes = ledger.accept_from_peers(
        [registration.encoded, written.encoded, forged.encoded, b"{", written.encoded], utcnow()
    )
    assert outcomes[:2] == [True, True] and outcomes[4] is False
    assert isinstance(outcomes[2], Exception) and isinstance(outcomes[3], Exception)
    assert ledger.accept_from_peers([written.encoded], utcnow()) == [False]  # held already
    pending = set(db.session.scalars(select(LedgerTransaction.hash).where(LedgerTransaction.status == "pending")))
    assert {registration.hash, written.hash} <= pending and forged.hash not in pending
    assert produce(app) is not None
    assert db.session.get(LedgerTransaction, written.hash).status == "committed"
    assert ledger.verify_chain().valid
