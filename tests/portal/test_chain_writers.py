"""One writer of a node's chain at a time, across threads and processes, and rollbacks that
leave no gap: the rules that keep a node's chain whole under concurrent peers and producer."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from core.crypto import UserKeys
from core.ledger import key_payload, sign_transaction
from core.ledger.validate import ChainValidator
from portal import runtime
from portal.extensions import db
from portal.models import LedgerBlock, LedgerTransaction, User, utcnow
from portal.services import ledger, locks
from portal.services.errors import ValidationFailed
from tests.conftest import RECORD, Person, produce

HOLDER = """
import fcntl, sys
with open(sys.argv[1], "a+b") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.readline()
"""
# On PostgreSQL the chain lock is an advisory lock (portal/services/locks.py), held by another session here.
PG_HOLDER = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (int(sys.argv[2]), int(sys.argv[3])))
    print("locked", flush=True)
    sys.stdin.readline()
"""


def write_record(client: FlaskClient, doctor: Person, patient: Person, title: str) -> None:
    answer = client.post(
        f"/api/v1/patients/{patient.id}/records", json={**RECORD, "title": title}, headers=doctor.headers
    )
    assert answer.status_code == 201, answer.json


def heights() -> list[int]:
    return list(db.session.scalars(select(LedgerBlock.height).order_by(LedgerBlock.height)))


def test_a_chain_write_waits_while_another_process_holds_the_chain(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person
) -> None:
    write_record(client, doctor, patient, "waits")
    if locks.on_postgresql():
        url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        key = locks.lock_key(app.config["NODE_ID"], "chain")
        args = ["-c", PG_HOLDER, url, str(locks.NAMESPACE), str(key)]
    else:
        args = ["-c", HOLDER, str(Path(app.instance_path) / "ledger.lock")]
    holder = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        produced: list[int | None] = []

        def producer() -> None:
            with app.app_context():
                produced.append(ledger.seal_pending(runtime.node_key()))

        worker = threading.Thread(target=producer)
        worker.start()
        worker.join(timeout=1.5)
        assert worker.is_alive() and produced == []  # blocked on the other process's lock
        assert holder.stdin is not None
        holder.stdin.write("release\n")
        holder.stdin.flush()
        worker.join(timeout=30)
        assert not worker.is_alive()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert produced and produced[0] is not None
    assert ledger.verify_chain().valid


def test_rollback_never_reverts_a_final_block(app: Flask, client: FlaskClient, doctor: Person, patient: Person) -> None:
    write_record(client, doctor, patient, "final")
    produce(app)
    before = heights()
    assert ledger.final_height() == before[-1]  # a consortium of one: each block is final at once
    with pytest.raises(ValidationFailed, match="final block"):
        ledger.rollback_above(before[-1] - 1)
    assert heights() == before


def test_rollback_removes_exactly_the_blocks_above_and_returns_their_transactions(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    produce(app)
    for n in range(3):
        write_record(client, doctor, patient, f"R{n}")
        produce(app)
    top = heights()[-1]
    # In a consortium of one every block is final at once; pretend a larger consortium whose
    # last blocks are not final yet (the finality guard has its own test above).
    monkeypatch.setattr(ledger, "final_height", lambda: top - 2)
    moved = list(db.session.scalars(select(LedgerTransaction.hash).where(LedgerTransaction.block_height > top - 2)))
    assert ledger.rollback_above(top - 2) == 2
    db.session.expire_all()
    assert heights() == list(range(top - 1))
    states = {h: s for h, s in db.session.execute(select(LedgerTransaction.hash, LedgerTransaction.status))}
    assert moved and all(states[h] == "pending" for h in moved)
    assert ledger.verify_chain().valid
    # The node goes on from the cut: the undone transactions are sealed again, each once.
    produce(app)
    db.session.expire_all()
    assert ledger.verify_chain().valid
    rows = db.session.execute(
        select(LedgerTransaction.status, LedgerTransaction.block_height).where(LedgerTransaction.hash.in_(moved))
    )
    assert {(status, height) for status, height in rows} == {("committed", top - 1)}


def stale_view(height: int) -> ChainValidator:
    """What another process's cache holds when it last looked at the chain at `height`."""
    validator = ChainValidator(verify_signatures=False)
    for stored in ledger.stored_blocks():
        if stored.height <= height:
            validator.append(stored)
    validator.verify_signatures = True
    return validator


def test_blocks_stored_by_another_process_are_replayed_incrementally(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person
) -> None:
    produce(app)
    seen = ledger.tip()
    assert seen is not None
    for n in range(2):
        write_record(client, doctor, patient, f"later {n}")
        produce(app)
    current = ledger.tip()
    assert current is not None and current.height == seen.height + 2
    stale = stale_view(seen.height)
    ledger._cache.validator = stale
    ledger._cache.at(seen.height, seen.hash)
    validator = ledger._validator_at_tip(current)
    assert validator is stale  # carried forward, not rebuilt from genesis
    assert validator.tip is not None and validator.tip.hash == current.hash
    assert validator.verify_signatures is True
    # A cache from a branch that is no longer stored is dropped and the chain replayed.
    ledger._cache.validator = stale_view(seen.height)
    ledger._cache.at(seen.height, "0" * 64)
    rebuilt = ledger._validator_at_tip(current)
    assert rebuilt.tip is not None and rebuilt.tip.hash == current.hash
    write_record(client, doctor, patient, "after the replay")
    assert produce(app) == current.height + 1
    assert ledger.verify_chain().valid


def test_a_node_gossips_only_what_it_or_its_own_accounts_signed(
    app: Flask, client: FlaskClient, key_pool: list[UserKeys], patient: Person
) -> None:
    node = runtime.node_key()
    elsewhere = key_pool[-1]  # an account of another hospital: not in this node's users
    # Endorsed by this node's key but not one of its users (as a peer's account would look here).
    payload = key_payload(
        str(uuid.uuid4()), "patient", elsewhere.public.rsa_der, elsewhere.public.umbral, node, elsewhere.public.sign
    )
    foreign = sign_transaction("key", payload, elsewhere, 1)
    assert ledger.accept_from_peer(foreign.encoded, utcnow())
    pending = {h for h, _ in ledger.pending_encoded()}
    mine = {h for h, _ in ledger.pending_from_here(node)}
    own_key = db.session.scalar(select(User.key_tx_hash).where(User.public_id == patient.id))
    assert foreign.hash in pending and foreign.hash not in mine
    assert own_key in mine
