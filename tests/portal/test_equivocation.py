"""A node that sees two different headers one producer signed for one slot reports it: pushed to
it (POST /node/v1/blocks) or found while catching up, the pair becomes an `evidence` transaction
signed with the node's key, and once that is in a block the producer is dropped. Catching up asks
the peers in a new random order each time.

Node-1 here is one app with its own database in a consortium of four whose genesis lies two
minutes back, so that the other three members' blocks (signed with their real keys, built on a
copy of node-1's chain by the real rules) can be pushed to it slot after slot without waiting."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from core.consensus import Params
from core.consensus.messages import sign_request
from core.crypto import NodeKey
from core.encoding import b64d, b64e
from core.ledger import Block, StoredBlock, decode_header, decode_transaction, make_block
from core.ledger.validate import ChainValidator
from portal import consortium, create_app, runtime
from portal.extensions import db
from portal.models import LedgerTransaction, utcnow
from portal.services import ledger, network
from tests.conftest import RequestClient, make_config

SLOT_MS = 1000
MEMBERS = ("node-1", "node-2", "node-3", "node-4")


@pytest.fixture
def member(tmp_path: Path) -> Iterator[tuple[Flask, dict[str, NodeKey]]]:
    """Node-1 of a consortium of four (K = 4), and every member's key."""
    keys = {name: NodeKey.generate(name) for name in MEMBERS}
    params = Params(4, SLOT_MS, 400, 3, (int(time.time() * 1000) - 120_000) // SLOT_MS * SLOT_MS)
    block, peers = consortium.create("equivocation-test", [(k, f"http://{n}.invalid") for n, k in keys.items()], params)
    consortium.write(tmp_path / "genesis.json", block, peers)
    keys["node-1"].save(tmp_path / "node.key", None)

    class Config(make_config(tmp_path)):  # type: ignore[misc,valid-type]
        NODE_ID = "node-1"
        GENESIS_PATH = str(tmp_path / "genesis.json")

    app = create_app(Config)
    app.test_client_class = RequestClient
    with app.app_context():
        db.drop_all()
        db.create_all()
        runtime.ensure_chain(utcnow())
        yield app, keys
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


class Copy:
    """A copy of node-1's chain, validated by the real rules, to build the next blocks on."""

    def __init__(self, client: FlaskClient, keys: dict[str, NodeKey]) -> None:
        self.keys, self.validator = keys, ChainValidator()
        self._nonce = 0
        for item in client.get("/node/v1/blocks?from=0&limit=100").json["blocks"]:
            header = b64d(item["header"])
            self.append(make_stored(header, [b64d(t) for t in item["transactions"]]))

    def append(self, stored: StoredBlock) -> None:
        self.validator.append(stored)

    def fork(self) -> Copy:
        other = object.__new__(Copy)
        v = self.validator
        assert v.consensus is not None
        other.keys, other._nonce = self.keys, 1000
        other.validator = ChainValidator(
            registry=v.registry.copy(), tip=v.tip, seen=set(v.seen), consensus=v.consensus.copy()
        )
        return other

    @property
    def params(self) -> Params:
        assert self.validator.consensus is not None
        return self.validator.consensus.params

    def scheduled(self, slot: int) -> str:
        assert self.validator.consensus is not None
        trial = self.validator.consensus.copy()
        trial.advance(slot)
        found = trial.scheduled(slot)
        assert found is not None
        return found

    def next_slot_of(self, name: str) -> int:
        assert self.validator.consensus is not None
        return next(s for s in range(self.validator.consensus.last_slot + 1, 10_000) if self.scheduled(s) == name)

    def block(self, slot: int, producer: str | None = None) -> Block:
        """An empty block for `slot` on this copy's tip (not appended), by its scheduled producer."""
        tip = self.validator.tip
        assert tip is not None
        self._nonce += 1
        name = producer or self.scheduled(slot)
        return make_block(
            tip.height + 1, tip.hash, [], name, self.keys[name], self.params.slot_start(slot), f"{self._nonce:032x}"
        )


def make_stored(header: bytes, transactions: list[bytes]) -> StoredBlock:
    decoded = decode_header(header)
    return StoredBlock(decoded.height, decoded.hash, header, transactions)


def stored(block: Block) -> StoredBlock:
    return make_stored(block.header.encoded, [tx.encoded for tx in block.transactions])


def push(client: FlaskClient, block: Block, sender: NodeKey) -> Any:
    """POST /node/v1/blocks signed by `sender`, as a peer announces a block."""
    path = "/node/v1/blocks"
    data = json.dumps({"header": b64e(block.header.encoded), "transactions": []}).encode()
    headers = sign_request(sender, "POST", path, data, int(time.time() * 1000))
    return client.post(path, data=data, headers=headers, content_type="application/json")


def evidence_rows() -> list[LedgerTransaction]:
    db.session.commit()  # a fresh read of what the requests stored
    return list(db.session.scalars(select(LedgerTransaction).where(LedgerTransaction.kind == "evidence")))


def grow(client: FlaskClient, copy: Copy, slots: int) -> None:
    """Fill the next `slots` slots on node-1 and on the copy, each block pushed by its producer."""
    assert copy.validator.consensus is not None
    start = copy.validator.consensus.last_slot + 1
    for slot in range(start, start + slots):
        block = copy.block(slot)
        assert push(client, block, copy.keys[block.header.producer]).json == {"outcome": "appended"}
        copy.append(stored(block))


def at(copy: Copy, slot: int) -> datetime:
    return datetime.fromtimestamp(copy.params.slot_start(slot) / 1000, UTC)


def test_two_blocks_for_one_slot_pushed_to_a_node_drop_their_producer(member: tuple[Flask, dict[str, NodeKey]]) -> None:
    app, keys = member
    client = app.test_client()
    copy = Copy(client, keys)
    grow(client, copy, 8)

    slot = copy.next_slot_of("node-2")
    first, second = copy.block(slot), copy.block(slot)
    assert first.header.hash != second.header.hash and first.header.producer == second.header.producer == "node-2"
    assert push(client, first, keys["node-2"]).json == {"outcome": "appended"}
    copy.append(stored(first))
    assert push(client, second, keys["node-2"]).json == {"outcome": "fork"}

    [row] = evidence_rows()
    assert row.status == "pending"
    evidence = decode_transaction(row.encoded)
    assert evidence.signer == keys["node-1"].key_id  # signed with the node's own key: its to gossip
    assert evidence.payload == {"a": b64e(first.header.encoded), "b": b64e(second.header.encoded)}
    assert row.hash in {h for h, _ in ledger.pending_from_here(runtime.node_key())}
    # The same pair again, pushed by another member: already reported, not queued twice.
    assert push(client, second, keys["node-3"]).json == {"outcome": "fork"}
    assert len(evidence_rows()) == 1

    mine = copy.next_slot_of("node-1")
    height = ledger.produce_block(runtime.node_key(), at(copy, mine))
    assert height == first.header.height + 1
    [row] = evidence_rows()
    assert (row.status, row.block_height) == ("committed", height)
    state = ledger.consensus_state()
    assert [(r.node, r.reason) for r in state.removals] == [("node-2", "signed two blocks for one slot")]
    assert "node-2" not in state.active() and state.reliability["node-2"] == 250
    assert ledger.verify_chain().valid


def test_invalid_forks_that_prove_nothing_are_not_reported(member: tuple[Flask, dict[str, NodeKey]]) -> None:
    """A competing block by another producer, and a second header for a slot that is not signed by
    the producer it names, are forks, not evidence."""
    app, keys = member
    client = app.test_client()
    copy = Copy(client, keys)
    grow(client, copy, 6)
    rival = copy.fork()
    slot = copy.next_slot_of("node-2")
    ours = copy.block(slot)
    assert push(client, ours, keys["node-2"]).json == {"outcome": "appended"}

    other = next(n for n in MEMBERS[2:] if n != "node-2")
    competing = rival.block(slot + 1, producer=other)
    assert push(client, competing, keys[other]).json == {"outcome": "fork"}
    forged = rival.block(slot, producer="node-2")
    forged = make_block(
        forged.header.height, forged.header.prev_hash, [], "node-2", keys["node-3"], forged.header.timestamp, "ee" * 16
    )
    assert push(client, forged, keys["node-3"]).json == {"outcome": "fork"}
    assert evidence_rows() == []
    assert network.report_equivocation(runtime.node_key(), b"not a header", utcnow()) is None


class Branch:
    """A peer whose chain is `blocks` (by height), answering status and block pages only."""

    def __init__(self, node: NodeKey, name: str, blocks: list[StoredBlock]) -> None:
        self.node, self.blocks = node, blocks
        self.urls = {name: f"http://{name}.invalid"}

    def get(self, peer: str, path: str) -> dict[str, Any] | None:
        if path == "/node/v1/status":
            tip = self.blocks[-1]
            return {"node": peer, "height": tip.height, "tip": tip.hash, "final": 0}
        query = dict(part.split("=") for part in path.split("?", 1)[1].split("&"))
        start, limit = int(query["from"]), int(query["limit"])
        page = self.blocks[start : start + limit]
        return {"blocks": [{"header": b64e(s.header), "transactions": [b64e(t) for t in s.transactions]} for s in page]}


def test_catching_up_reports_an_equivocation_on_the_peers_branch(member: tuple[Flask, dict[str, NodeKey]]) -> None:
    """Node-1 holds node-2's block for a slot; a peer's longer branch starts with node-2's other
    block for that slot. Catching up finds the fork point, reports the pair, and switches."""
    app, keys = member
    client = app.test_client()
    copy = Copy(client, keys)
    grow(client, copy, 8)
    theirs = copy.fork()
    slot = copy.next_slot_of("node-2")
    ours = copy.block(slot)
    assert push(client, ours, keys["node-2"]).json == {"outcome": "appended"}
    twin = theirs.block(slot)
    theirs.append(stored(twin))
    after = theirs.block(slot + 1)
    theirs.append(stored(after))
    below = list(ledger.stored_blocks(0))[:-1]  # node-1's chain up to the fork
    chain = [*below, stored(twin), stored(after)]

    network.catch_up(Branch(runtime.node_key(), "node-3", chain), utcnow, 10_000)

    [row] = evidence_rows()
    evidence = decode_transaction(row.encoded)
    assert evidence.signer == keys["node-1"].key_id
    assert {evidence.payload["a"], evidence.payload["b"]} == {b64e(ours.header.encoded), b64e(twin.header.encoded)}
    tip = ledger.tip()
    assert tip is not None and tip.hash == after.header.hash  # on the peer's longer branch now


class Statuses:
    """Peers that are all at our height: catching up only asks each for its status."""

    def __init__(self, node: NodeKey, names: list[str]) -> None:
        self.node = node
        self.urls = {name: f"http://{name}.invalid" for name in names}
        self.asked: list[str] = []

    def get(self, peer: str, path: str) -> dict[str, Any] | None:
        assert path == "/node/v1/status"
        self.asked.append(peer)
        return {"node": peer, "height": 0, "tip": "ab" * 32, "final": 0}


def test_catching_up_asks_the_peers_in_a_random_order_each_time(app: Flask) -> None:
    names = [f"node-{i}" for i in range(2, 6)]
    peers = Statuses(runtime.node_key(), names)
    orders = []
    for _ in range(40):
        peers.asked = []
        network.catch_up(peers, utcnow, 1000)
        assert sorted(peers.asked) == names  # every peer, once
        orders.append(tuple(peers.asked))
    firsts = Counter(order[0] for order in orders)
    assert len(set(orders)) > 5 and set(firsts) == set(names), firsts
