"""MedLedger consensus at scale, simulated: the real rules of core/ on a simulated network.

Consortia of 4, 21 and 100 hospitals (and 100 hospitals with 21 delegates) run in one process
on a discrete-event clock, far faster than real time. What is real and what is simulated:

- **Real**: every block is made with `core.ledger.make_block` and signed with the producer's
  Ed25519 key; every node decides whether to accept it with `core.ledger.validate.ChainValidator`
  (encoding, hashes, link, producer signature, producer schedule from `ConsensusState`,
  transactions, evidence); who may produce a slot is `ConsensusState.advance` + `scheduled` on the
  node's own tip; what is final is the `ConsensusState`'s final height; evidence is a real `evidence`
  transaction checked by `ConsensusState.check` and folded by the validator, which drops the
  producer. Validation is a pure function of (parent chain, block), so its verdict is computed
  once per block and shared by every node that receives that block; likewise the schedule per
  (tip, slot).
- **Simulated**: time (integer-free milliseconds on an event queue), links (a one-way base
  latency per pair of nodes, jitter per message, loss per message, a partition cutting a group
  off for a while), each node's upload bandwidth (a block pushed to N - 1 peers goes out one copy
  after another), and the node's loops as `portal/producer.py` runs them: a production check four
  times a slot, a push of each new block to every peer, a pull-sync twice a slot from a peer
  that is ahead (peers asked in a random order), switching to the longer branch when the fork
  point is not below the node's final height (`portal/services/network.py: catch_up`). Blocks
  carry the evidence transactions of the run plus `--tx-per-block` nominal records that count
  only as bytes on the wire.
- **Faults** (scenarios): loss and jitter; a partition of the delegates beyond a quorum (and a
  share of the other hospitals) for 45 % of the run, then healed; slow delegates (everything they
  send or receive is 0.7 slot late); lying delegates that sign two blocks for one slot (one to
  each half of the peers) or send blocks holding a wrongly signed transaction. An honest node
  that sees two headers of one producer for one slot, or an invalid block its producer signed,
  turns it into evidence signed with its node key and gossips it, as the portal does.

Reported per consortium and scenario: finality time (block timestamp -> final on a node, p50 and
p95 over every block and honest node, in slots and seconds), the throughput ceiling (500
transactions per block, the producer's limit, times the final blocks per second; and what the
upload bandwidth allows), missed slots, forks (competing blocks seen, branch switches, blocks
orphaned, tips still apart at the end), removals and evidence, bytes per node, and any safety
violation (two different final blocks at one height, or a node reverting a block it saw final),
printed loudly. Exit code 1 when there is one.

    cd /work/main && .venv/bin/python bench/simulate.py [--consortia 4 21 100 100:21]
        [--slots 360] [--slot-ms 1000] [--seed 1] [--scenarios calm lossy ...] [--jobs 2] [--json]

Deterministic for a seed (and the same options). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so that `core` imports

from cryptography.hazmat.primitives.asymmetric import ed25519

from core.consensus import Params
from core.consensus.messages import sign_request
from core.crypto import NodeKey
from core.encoding import b64e, canonical
from core.errors import CoreError, InvalidBlock
from core.ledger import GENESIS_PREV_HASH, StoredBlock, Transaction, make_block, sign_transaction
from core.ledger.validate import ChainValidator

T0 = 1_800_000_000_000  # genesis_ms of every simulated consortium
MAX_TX = 500  # transactions per block: the producer's limit (portal/services/ledger.py produce_block)
MISS_LIMIT = 3
LATENCY_MS = (5.0, 60.0)  # one-way base latency of a link, drawn once per pair of nodes
TX_PER_BLOCK = 10  # nominal records per block: bytes on the wire only
UPLINK_MBPS = 100.0
SLOTS = 360
SLOT_MS = 1000
CONSORTIA = ("4", "21", "100", "100:21")
SYNC_TIMEOUT_MS = 1000  # a peer call times out after 1 s (portal.services.network.Peers.timeout)

REASONS = {"missed row": "missed slots", "signed slot": "equivocation", "signed block": "invalid block"}
# Event kinds on the queue.
TICK, SYNC, BLOCK, SYNCED, GOSSIP = range(5)


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    loss: float = 0.0  # each message lost with this probability
    jitter_ms: float = 10.0  # mean of the exponential extra delay per message
    partition: tuple[float, float] | None = None  # cut off from .. to, as fractions of the run
    slow_slots: float = 0.0  # slow delegates: extra delay on all they send and receive, in slots
    liars: str = ""  # "equivocate" or "invalid"
    halves: bool = False  # the partition cuts off every other hospital, delegates included


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("calm", "links 5-60 ms one way, jitter 10 ms, no loss"),
        Scenario("lossy", "5 % of messages lost, jitter 50 ms", loss=0.05, jitter_ms=50.0),
        Scenario(
            "partition",
            "K - quorum delegates (and their share of hospitals) cut off 15-60 % of the run",
            partition=(0.15, 0.60),
        ),
        Scenario("slow", "a tenth of the delegates (at least one) 0.7 slot late both ways", slow_slots=0.7),
        Scenario("equivocate", "a tenth of the delegates (at least one) sign two blocks per slot", liars="equivocate"),
        Scenario("invalid", "a tenth of the delegates (at least one) send blocks with a forged tx", liars="invalid"),
        Scenario(
            "split",
            "every other hospital (so about half the delegates) cut off 15-60 % of the run: no side has a quorum",
            partition=(0.15, 0.60),
            halves=True,
        ),
    )
}
DEFAULT_SCENARIOS = ("calm", "lossy", "partition", "slow", "equivocate", "invalid")


@dataclass(frozen=True)
class Config:
    nodes: int
    delegates: int
    scenario: Scenario
    slots: int = SLOTS
    slot_ms: int = SLOT_MS
    seed: int = 1
    tx_per_block: int = TX_PER_BLOCK
    uplink_mbps: float = UPLINK_MBPS

    @property
    def label(self) -> str:
        return f"N={self.nodes} K={self.delegates}"


@dataclass(slots=True)
class SimBlock:
    hash: str
    height: int
    prev: str
    producer: str
    slot: int
    ts: int
    stored: StoredBlock
    wire: int  # bytes of its announcement (POST /node/v1/blocks, answer included)


@dataclass(slots=True)
class Node:
    index: int
    name: str
    key: NodeKey
    role: str = "honest"  # honest, slow, equivocate, invalid
    tip: str = ""
    final: int = 0  # the highest height this node has seen final
    pool: dict[str, tuple[float, Transaction]] = field(default_factory=dict)
    headers: dict[tuple[str, int], str] = field(default_factory=dict)  # (producer, slot) -> header hash seen
    accused: set[tuple[str, int]] = field(default_factory=set)
    uplink_free: float = 0.0
    phase: float = 0.0
    sent: int = 0  # bytes sent (simulated messages)
    final_seen: dict[int, tuple[str, float]] = field(default_factory=dict)  # height -> (hash, when)


class WrongSigner:
    """Signs as a node's key id with bytes that are not its signature: a forged transaction."""

    def __init__(self, key_id: str, rng: random.Random) -> None:
        self.key_id, self._rng = key_id, rng

    def sign(self, message: bytes) -> bytes:
        return self._rng.randbytes(64)


def node_key(name: str) -> NodeKey:
    """Deterministic Ed25519 keys, so a seed gives the same blocks, hashes and schedule."""
    seed = hashlib.sha256(b"medledger-simulate/" + name.encode()).digest()
    return NodeKey(name, ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def http_bytes(method: str, path: str, body: bytes, answer: bytes, key: NodeKey) -> int:
    """One signed node-to-node call on the wire (HTTP/1.1, no TLS framing): request line, the
    real signature headers, body, and the answer."""
    headers = sign_request(key, method, path, body, T0)
    head = f"{method} {path} HTTP/1.1\r\nHost: {key.node_id}.hospital.example\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    reply = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n\r\n"
    return len(head) + 2 + len(body) + len(reply) + len(answer)


def record_tx_bytes() -> int:
    """The canonical size of one typical `record` transaction: the bench's ~600-byte note sealed
    (AES-GCM), an Umbral capsule, the wrapped keys, and an RSA-3072 signature."""
    from bench.harness import record_json

    class RsaSized:
        key_id = "ab" * 32

        def sign(self, message: bytes) -> bytes:
            return bytes(384)

    plain = canonical(record_json(1))
    payload = {
        "record": "12345678-1234-4234-8234-123456789abc",
        "patient": "12345678-1234-4234-8234-123456789abd",
        "ctag": "00" * 16,
        "body": b64e(bytes(len(plain) + 28)),
        "capsule": b64e(bytes(98)),
        "pkey": b64e(bytes(72)),
        "akey": b64e(bytes(384)),
        "attachments": [],
    }
    return len(sign_transaction("record", payload, RsaSized(), T0, nonce="00" * 16).encoded)


def pct(values: Sequence[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class Simulation:
    def __init__(self, config: Config) -> None:
        self.c = config
        run_seed = hashlib.sha256(f"{config.seed}/{config.nodes}/{config.delegates}/{config.scenario.name}".encode())
        self.rng = random.Random(int.from_bytes(run_seed.digest()[:8], "big"))
        self.params = Params(config.delegates, config.slot_ms, 30 * config.nodes, MISS_LIMIT, T0)
        self.quorum = self.params.quorum
        self.max_skew = config.slot_ms // 2 + 500  # portal.runtime.max_skew_ms
        self.end = T0 + config.slots * config.slot_ms
        self.nodes = [Node(i, f"h-{i + 1:03d}", node_key(f"h-{i + 1:03d}")) for i in range(config.nodes)]
        self.by_name = {n.name: n for n in self.nodes}
        self.blocks: dict[str, SimBlock] = {}
        self.after: dict[str, ChainValidator] = {}  # block hash -> validator state after it (valid blocks)
        self.verdicts: dict[str, str | None] = {}  # block hash -> None (valid) or the failed check
        self.schedule_memo: dict[tuple[str, int], str | None] = {}
        self.queue: list[tuple[float, int, int, int, Any]] = []
        self.seq = 0
        self.links: dict[tuple[int, int], float] = {}
        for i in range(config.nodes):
            for j in range(i + 1, config.nodes):
                self.links[(i, j)] = self.rng.uniform(*LATENCY_MS)
        self.stats: Counter[str] = Counter()
        self.final_blocks: dict[int, str] = {}
        self.violations: list[str] = []
        self.split_heights: set[int] = set()
        self.tx_bytes = record_tx_bytes()
        status = canonical({"final": 10**6, "height": 10**6, "node": "h-001", "tip": "0" * 64})
        self.status_bytes = http_bytes("GET", "/node/v1/status", b"", status, self.nodes[0].key)
        self._roles_and_partition()
        self._genesis()

    # -- set-up -------------------------------------------------------------------------------

    def _roles_and_partition(self) -> None:
        c, k = self.c, self.c.delegates
        delegates = list(range(k))  # equal scores, ties by node id: h-001 .. h-K are elected
        faulty = max(1, k // 10)
        chosen = sorted(self.rng.sample(delegates, faulty))
        role = "slow" if c.scenario.slow_slots else c.scenario.liars
        if role:
            for i in chosen:
                self.nodes[i].role = role
        # Cut off the delegates beyond a quorum (the most the rest can lose and still finalise),
        # and the same share of the other hospitals.
        self.cut = {i for i in range(c.nodes) if i % k >= self.quorum} if c.scenario.partition else set()
        if c.scenario.halves:
            self.cut = set(range(1, c.nodes, 2))
        if c.scenario.partition:
            start, stop = c.scenario.partition
            self.cut_from = T0 + int(start * c.slots) * c.slot_ms
            self.cut_until = T0 + int(stop * c.slots) * c.slot_ms
        for n in self.nodes:
            n.phase = self.rng.uniform(0, c.slot_ms / 4)

    def _genesis(self) -> None:
        first = self.nodes[0]
        payload = {
            "chain": "medledger-simulated",
            "nodes": [{"id": n.name, "key": b64e(n.key.public_raw)} for n in self.nodes],
            "params": self.params.to_dict(),
        }
        genesis = sign_transaction("genesis", payload, first.key, T0, nonce="00" * 16)
        block = make_block(0, GENESIS_PREV_HASH, [genesis], first.name, first.key, T0, nonce="00" * 16)
        stored = StoredBlock(0, block.header.hash, block.header.encoded, [genesis.encoded])
        validator = ChainValidator()
        validator.append(stored)
        self.blocks[block.header.hash] = SimBlock(block.header.hash, 0, "", first.name, 0, T0, stored, 0)
        self.after[block.header.hash] = validator
        self.verdicts[block.header.hash] = None
        self.genesis = block.header.hash
        for n in self.nodes:
            n.tip = block.header.hash
            self.push(T0 + self.c.slot_ms + n.phase, TICK, n.index)
            self.push(T0 + self.c.slot_ms + n.phase + self.c.slot_ms / 2 * self.rng.random(), SYNC, n.index)

    # -- the rules (real, evaluated once per input) -------------------------------------------

    def verdict(self, block_hash: str) -> str | None:
        """None if the block is valid on its parent chain, else the failed check (ChainValidator)."""
        if block_hash not in self.verdicts:
            block = self.blocks[block_hash]
            parent = self.after[block.prev]
            validator = ChainValidator(
                registry=parent.registry, tip=parent.tip, seen=set(parent.seen), consensus=parent.consensus
            )
            try:
                validator.append(block.stored)
            except InvalidBlock as exc:
                self.verdicts[block_hash] = f"{exc.check}: {exc.detail}"
            else:
                self.verdicts[block_hash] = None
                self.after[block_hash] = validator
        return self.verdicts[block_hash]

    def scheduled(self, tip: str, slot: int) -> str | None:
        """Whose slot `slot` is on the chain ending at `tip` (None if not after the tip's slot)."""
        memo = (tip, slot)
        if memo not in self.schedule_memo:
            state = self.after[tip].consensus
            assert state is not None
            if slot <= state.last_slot:
                self.schedule_memo[memo] = None
            else:
                trial = state.copy()
                trial.advance(slot)
                self.schedule_memo[memo] = trial.scheduled(slot)
        return self.schedule_memo[memo]

    def final_of(self, tip: str) -> int:
        """The final height of the chain ending at `tip`, as its consensus state counts it."""
        state = self.after[tip].consensus
        assert state is not None
        return state.final

    def ancestor(self, block_hash: str, height: int) -> str:
        block = self.blocks[block_hash]
        while block.height > height:
            block = self.blocks[block.prev]
        return block.hash

    def fork_point(self, a: str, b: str) -> int:
        x, y = self.blocks[a], self.blocks[b]
        while x.height > y.height:
            x = self.blocks[x.prev]
        while y.height > x.height:
            y = self.blocks[y.prev]
        while x.hash != y.hash:
            x, y = self.blocks[x.prev], self.blocks[y.prev]
        return x.height

    # -- the network ---------------------------------------------------------------------------

    def push(self, when: float, kind: int, node: int, data: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (when, self.seq, kind, node, data))

    def cut_off(self, a: int, b: int, when: float) -> bool:
        return bool(self.cut) and self.cut_from <= when < self.cut_until and ((a in self.cut) != (b in self.cut))

    def delay(self, a: int, b: int) -> float:
        base = self.links[(a, b) if a < b else (b, a)]
        extra = self.rng.expovariate(1 / self.c.scenario.jitter_ms) if self.c.scenario.jitter_ms else 0.0
        late = self.c.scenario.slow_slots * self.c.slot_ms
        slow = late * ((self.nodes[a].role == "slow") + (self.nodes[b].role == "slow"))
        return base + extra + slow

    def delivered(self, a: int, b: int, when: float) -> bool:
        if self.cut_off(a, b, when):
            self.stats["messages cut off"] += 1
            return False
        if self.c.scenario.loss and self.rng.random() < self.c.scenario.loss:
            self.stats["messages lost"] += 1
            return False
        return True

    def broadcast(self, sender: Node, now: float, size: int, kind: int, data: Any, to: Sequence[Node]) -> None:
        """Send one copy to each of `to`, one after another through the sender's uplink."""
        per_copy = size * 8 / (self.c.uplink_mbps * 1000)  # ms
        start = max(now, sender.uplink_free)
        order = list(to)
        self.rng.shuffle(order)
        for position, peer in enumerate(order):
            leaves = start + (position + 1) * per_copy
            if self.delivered(sender.index, peer.index, leaves):
                self.push(leaves + self.delay(sender.index, peer.index), kind, peer.index, data)
        sender.uplink_free = start + len(order) * per_copy
        sender.sent += size * len(order)

    def peers(self, node: Node) -> list[Node]:
        return [n for n in self.nodes if n is not node]

    # -- a node's loops --------------------------------------------------------------------------

    def adopt(self, node: Node, tip: str, now: float) -> None:
        node.tip = tip
        final = self.final_of(tip)
        if final <= node.final:
            return
        block = self.blocks[self.ancestor(tip, final)]
        while block.height > node.final:
            node.final_seen[block.height] = (block.hash, now)
            first = self.final_blocks.setdefault(block.height, block.hash)
            if first != block.hash and block.height not in self.split_heights:
                self.split_heights.add(block.height)  # one line per height, however many nodes
                self.violations.append(
                    f"two final blocks at height {block.height}: {first[:12]} and {block.hash[:12]} "
                    f"({node.name} at {(now - T0) / 1000:.1f} s)"
                )
            block = self.blocks[block.prev]
        node.final = final

    def see_header(self, node: Node, block: SimBlock, now: float) -> None:
        """Two headers of one producer for one slot: equivocation, turned into evidence."""
        if block.height == 0 or node.role in ("equivocate", "invalid"):
            return
        seen = node.headers.setdefault((block.producer, block.slot), block.hash)
        if seen == block.hash or (block.producer, block.slot) in node.accused:
            return
        other = self.blocks[seen]
        payload = {"a": b64e(other.stored.header), "b": b64e(block.stored.header)}
        self.stats["equivocations detected"] += 1
        self.accuse(node, payload, (block.producer, block.slot), now)

    def accuse(self, node: Node, payload: dict[str, Any], culprit: tuple[str, int], now: float) -> None:
        evidence = sign_transaction("evidence", payload, node.key, int(now), nonce=self.rng.randbytes(16).hex())
        state, registry = self.after[node.tip].consensus, self.after[node.tip].registry
        assert state is not None
        try:
            state.check(evidence, registry)  # what accept_from_peer asks before it queues evidence
        except CoreError:
            self.stats["evidence not attributable or already judged"] += 1
            return
        node.accused.add(culprit)
        node.pool[evidence.hash] = (now, evidence)
        self.stats["evidence made"] += 1
        size = http_bytes("POST", "/node/v1/transactions", canonical({"transactions": [b64e(evidence.encoded)]}),
                          b'{"accepted":1,"rejected":0}', node.key)  # fmt: skip
        self.broadcast(node, now, size, GOSSIP, (evidence, culprit), self.peers(node))

    def tick(self, node: Node, now: float) -> None:
        """The production check (four times a slot in the portal; here once, at a random phase)."""
        self.push(now + self.c.slot_ms, TICK, node.index)
        slot = self.params.slot_of(int(now))
        if self.scheduled(node.tip, slot) != node.name:
            return
        liar = node.role in ("equivocate", "invalid")
        txs = [] if liar else self.acceptable(node)
        tip = self.blocks[node.tip]
        if node.role == "invalid":
            self.send_invalid(node, tip, slot, now)
            return
        block = self.make(node, tip, slot, now, txs)
        if self.verdict(block.hash) is not None:
            raise RuntimeError(f"{node.name} made an invalid block: {self.verdicts[block.hash]}")
        self.stats["blocks made"] += 1
        node.headers[(node.name, slot)] = block.hash
        self.adopt(node, block.hash, now)
        peers = self.peers(node)
        if node.role == "equivocate":
            twin = self.make(node, tip, slot, now, txs)
            self.verdict(twin.hash)
            self.stats["equivocations"] += 1
            half = len(peers) // 2
            self.broadcast(node, now, block.wire, BLOCK, block.hash, peers[:half])
            self.broadcast(node, now, twin.wire, BLOCK, twin.hash, peers[half:])
            return
        self.broadcast(node, now, block.wire, BLOCK, block.hash, peers)

    def make(self, node: Node, tip: SimBlock, slot: int, now: float, txs: list[Transaction]) -> SimBlock:
        made = make_block(tip.height + 1, tip.hash, txs, node.name, node.key, int(now), self.rng.randbytes(16).hex())
        header = made.header
        stored = StoredBlock(header.height, header.hash, header.encoded, [tx.encoded for tx in txs])
        return self.register(header.hash, header.height, tip.hash, node, slot, int(now), stored)

    def register(self, h: str, height: int, prev: str, node: Node, slot: int, ts: int, stored: StoredBlock) -> SimBlock:
        body = canonical({"header": b64e(stored.header), "transactions": [b64e(t) for t in stored.transactions]})
        nominal = self.c.tx_per_block * (4 * self.tx_bytes // 3 + 4)  # base64 text, quotes and comma
        wire = http_bytes("POST", "/node/v1/blocks", body, b'{"outcome":"appended"}', node.key) + nominal
        block = SimBlock(h, height, prev, node.name, slot, ts, stored, wire)
        self.blocks[h] = block
        return block

    def send_invalid(self, node: Node, tip: SimBlock, slot: int, now: float) -> None:
        """A block whose body holds a transaction signed as this node with a forged signature."""
        rng = self.rng
        payload = {"node": node.name, "box": b64e(rng.randbytes(32)), "emergency": b64e(b"\x02" + rng.randbytes(32)),
                   "hospital": f"Hospital {node.name}"}  # fmt: skip
        forged = sign_transaction(
            "node_info", payload, WrongSigner(node.key.key_id, rng), int(now), rng.randbytes(16).hex()
        )
        block = self.make(node, tip, slot, now, [forged])
        self.stats["invalid blocks sent"] += 1
        self.broadcast(node, now, block.wire, BLOCK, block.hash, self.peers(node))

    def acceptable(self, node: Node) -> list[Transaction]:
        """Pending transactions valid on top of the tip, as `_acceptable` picks them; the others
        are dropped for good."""
        if not node.pool:
            return []
        validator = self.after[node.tip]
        assert validator.consensus is not None
        registry, state = validator.registry.copy(), validator.consensus.copy()
        height, chosen = self.blocks[node.tip].height + 1, []
        for tx_hash, (_, tx) in sorted(node.pool.items(), key=lambda item: (item[1][0], item[0])):
            if tx_hash in validator.seen:
                continue
            try:
                state.check(tx, registry)
                registry.apply(tx, height)
                state.apply_tx(tx, registry)
            except CoreError:
                del node.pool[tx_hash]
                continue
            chosen.append(tx)
        return chosen[:MAX_TX]

    def receive(self, node: Node, block_hash: str, now: float) -> None:
        """A pushed block (`receive_block`): appended, known, ahead, fork, or refused."""
        block = self.blocks[block_hash]
        self.see_header(node, block, now)
        tip = self.blocks[node.tip]
        if block.ts > now + self.max_skew:
            self.stats["pushes refused: from the future"] += 1
        elif block.height > tip.height + 1:
            self.stats["pushes ahead (healed by pull)"] += 1
        elif block.height <= tip.height or block.prev != tip.hash:
            if self.ancestor(node.tip, block.height) != block_hash:
                self.stats["competing blocks seen (fork)"] += 1
        elif self.verdict(block_hash) is not None:
            self.stats["pushes refused: invalid"] += 1
            if node.role == "honest" or node.role == "slow":
                self.report_invalid(node, block, now)
        else:
            self.adopt(node, block_hash, now)

    def report_invalid(self, node: Node, block: SimBlock, now: float) -> None:
        culprit = (block.producer, block.slot)
        if culprit in node.accused:
            return
        payload = {"header": b64e(block.stored.header), "transactions": [b64e(t) for t in block.stored.transactions]}
        self.accuse(node, payload, culprit, now)

    def sync(self, node: Node, now: float) -> None:
        """Pull twice a slot: ask every peer's status and fetch from the first, in a new random
        order each time, that is ahead and answers (lost, cut-off or timed-out calls are skipped, as
        the portal skips them). Its answer goes out through that peer's uplink."""
        self.push(now + self.c.slot_ms / 2, SYNC, node.index)
        node.sent += self.status_bytes * (len(self.nodes) - 1)  # every peer's status, each time
        height = self.blocks[node.tip].height
        ahead = [peer for peer in self.nodes if peer is not node and self.blocks[peer.tip].height > height]
        self.rng.shuffle(ahead)  # the peers that are not ahead are skipped whatever their place
        for peer in ahead:
            there, back = self.delay(node.index, peer.index), self.delay(peer.index, node.index)
            if there + back > SYNC_TIMEOUT_MS or not self.delivered(node.index, peer.index, now):
                continue
            if not self.delivered(peer.index, node.index, now + there):
                continue
            start = max(now + there, peer.uplink_free)
            if start - (now + there) > SYNC_TIMEOUT_MS:  # its uplink is busy: the call times out
                self.stats["pulls timed out: peer's uplink busy"] += 1
                continue
            missing = self.blocks[peer.tip].height - self.fork_point(node.tip, peer.tip)
            size = missing * self.blocks[peer.tip].wire
            leaves = start + size * 8 / (self.c.uplink_mbps * 1000)
            peer.uplink_free = leaves
            peer.sent += size
            self.push(leaves + back, SYNCED, node.index, peer.tip)
            return

    def synced(self, node: Node, target: str, now: float) -> None:
        """`catch_up` with a peer's blocks up to `target`: extend, or switch to its longer branch
        unless the fork point is below this node's final height."""
        if self.blocks[target].height <= self.blocks[node.tip].height:
            return
        point = self.fork_point(node.tip, target)
        if point < self.final_of(node.tip):
            self.stats["branches ignored: would revert final blocks"] += 1
            return
        path = []
        cursor = self.blocks[target]
        while cursor.height > point:
            path.append(cursor)
            cursor = self.blocks[cursor.prev]
        new_tip = cursor.hash
        for block in reversed(path):
            self.see_header(node, block, now)
            if block.ts > now + self.max_skew or self.verdict(block.hash) is not None:
                break
            new_tip = block.hash
        tip_height = self.blocks[node.tip].height
        if point < tip_height:
            self.stats["branch switches"] += 1
            self.stats["blocks undone by switches"] += tip_height - point
            self.stats["deepest switch (blocks)"] = max(self.stats["deepest switch (blocks)"], tip_height - point)
            if point < node.final:
                self.violations.append(
                    f"{node.name} reverted blocks above {point} it had seen final up to {node.final}"
                )
        if new_tip != node.tip:
            self.adopt(node, new_tip, now)

    def gossip(self, node: Node, data: tuple[Transaction, tuple[str, int]], now: float) -> None:
        tx, culprit = data
        node.accused.add(culprit)
        node.pool.setdefault(tx.hash, (now, tx))

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        handlers = {
            TICK: lambda n, d, t: self.tick(n, t),
            SYNC: lambda n, d, t: self.sync(n, t),
            BLOCK: lambda n, d, t: self.receive(n, d, t),
            SYNCED: lambda n, d, t: self.synced(n, d, t),
            GOSSIP: lambda n, d, t: self.gossip(n, d, t),
        }
        events = 0
        while self.queue:
            when, _, kind, index, data = heapq.heappop(self.queue)
            if when >= self.end:
                break
            events += 1
            handlers[kind](self.nodes[index], data, when)
        return self.report(events, time.perf_counter() - started)

    def report(self, events: int, wall: float) -> dict[str, Any]:
        c, slot_s = self.c, self.c.slot_ms / 1000
        honest = [n for n in self.nodes if n.role == "honest"]  # slow and lying delegates are the faults
        top_final = max(self.final_blocks, default=0)
        canonical_chain = [self.final_blocks[h] for h in range(1, top_final + 1) if h in self.final_blocks]
        on_chain = set(canonical_chain) | {self.genesis}
        delays, all_nodes = [], []
        for height in range(1, top_final + 1):
            block = self.blocks[self.final_blocks[height]]
            times = [
                n.final_seen[height][1] - block.ts for n in honest if n.final_seen.get(height, ("",))[0] == block.hash
            ]
            delays += times
            if len(times) == len(honest):
                all_nodes.append(max(times))
        last = self.blocks[canonical_chain[-1]] if canonical_chain else self.blocks[self.genesis]
        missed = last.slot - len(canonical_chain)
        valid_made = [b for b in self.blocks.values() if b.height > 0 and self.verdicts.get(b.hash) is None]
        orphaned = sum(1 for b in valid_made if b.hash not in on_chain and b.slot <= last.slot)
        final_state = self.after[last.hash].consensus
        assert final_state is not None
        removals = Counter(
            REASONS.get(r.reason.split(" ")[0] + " " + r.reason.split(" ")[-1], r.reason)
            + ("" if self.by_name[r.node].role in ("equivocate", "invalid") else " (not a liar)")
            for r in final_state.removals
        )
        liars = [n.name for n in self.nodes if n.role in ("equivocate", "invalid")]
        caught = sorted({r.node for r in final_state.removals if r.node in liars and "signed" in r.reason})
        tips = {n.tip for n in honest}
        low = min(self.blocks[t].height for t in tips)
        apart = len({self.ancestor(t, low) for t in tips})
        blocks_per_s = len(canonical_chain) / (last.slot * slot_s) if last.slot else 0.0
        block_bytes = statistics.mean(b.wire for b in valid_made) if valid_made else 0
        bw_tx = (c.uplink_mbps * 1e6 / 8 * slot_s / 2 / max(1, c.nodes - 1) - (block_bytes - c.tx_per_block *
                 (4 * self.tx_bytes // 3 + 4))) / (4 * self.tx_bytes // 3 + 4)  # fmt: skip
        seconds = c.slots * slot_s
        return {
            "consortium": c.label,
            "nodes": c.nodes,
            "delegates": c.delegates,
            "quorum": self.quorum,
            "scenario": c.scenario.name,
            "faulty": [n.name for n in self.nodes if n.role != "honest"],
            "cut_off": len(self.cut),
            "final_height": top_final,
            "final_p50_s": pct(delays, 50) / 1000,
            "final_p95_s": pct(delays, 95) / 1000,
            "final_all_p95_s": pct(all_nodes, 95) / 1000,
            "final_p50_slots": pct(delays, 50) / c.slot_ms,
            "final_p95_slots": pct(delays, 95) / c.slot_ms,
            "slots_to_last_final": last.slot,
            "missed_slots": missed,
            "missed_pct": 100 * missed / last.slot if last.slot else float("nan"),
            "final_blocks_per_s": blocks_per_s,
            "ceiling_rule_tps": MAX_TX * blocks_per_s,
            "ceiling_bandwidth_tps": max(0.0, min(float(MAX_TX), bw_tx)) * blocks_per_s,
            "blocks_made": self.stats["blocks made"],
            "orphaned": orphaned,
            "competing_seen": self.stats["competing blocks seen (fork)"],
            "switches": self.stats["branch switches"],
            "deepest_switch": self.stats["deepest switch (blocks)"],
            "tips_apart_at_end": apart,
            "removals": dict(sorted(removals.items())),
            "liars_caught": f"{len(caught)}/{len(liars)}" if liars else "-",
            "evidence_made": self.stats["evidence made"],
            "block_bytes": block_bytes,
            "tx_bytes": self.tx_bytes,
            "status_bytes": self.status_bytes,
            "upload_kBps_mean": statistics.mean(n.sent for n in self.nodes) / seconds / 1000,
            "upload_kBps_max": max(n.sent for n in self.nodes) / seconds / 1000,
            "stats": dict(sorted(self.stats.items())),
            "violations": self.violations,
            "events": events,
            "wall_s": wall,
        }


def simulate(config: Config) -> dict[str, Any]:
    return Simulation(config).run()


# --- the command line -------------------------------------------------------------------------


def consortia(specs: Sequence[str]) -> list[tuple[int, int]]:
    out = []
    for spec in specs:
        nodes, _, delegates = spec.partition(":")
        n, k = int(nodes), int(delegates or nodes)
        if not (1 <= k <= n and k <= 101):
            raise argparse.ArgumentTypeError(f"{spec}: need 1 <= K <= N and K <= 101")
        out.append((n, k))
    return out


ROWS = (
    ("final_p50_s", "finality p50 (s)", "{:.2f}"),
    ("final_p95_s", "finality p95 (s)", "{:.2f}"),
    ("final_p50_slots", "finality p50 (slots)", "{:.1f}"),
    ("final_p95_slots", "finality p95 (slots)", "{:.1f}"),
    ("final_all_p95_s", "final on all honest p95 (s)", "{:.2f}"),
    ("final_height", "final height at the end", "{}"),
    ("missed_pct", "missed slots (%)", "{:.1f}"),
    ("ceiling_rule_tps", "ceiling: 500 tx x final blocks/s", "{:.0f}"),
    ("ceiling_bandwidth_tps", "ceiling: uplink allows (tx/s)", "{:.0f}"),
    ("orphaned", "blocks orphaned", "{}"),
    ("competing_seen", "competing blocks seen (pushes)", "{}"),
    ("switches", "branch switches (all nodes)", "{}"),
    ("deepest_switch", "deepest switch (blocks)", "{}"),
    ("tips_apart_at_end", "honest tips apart at end", "{}"),
    ("removals", "removals by reason", "{}"),
    ("liars_caught", "liars removed on evidence", "{}"),
    ("upload_kBps_mean", "upload per node, mean (kB/s)", "{:.0f}"),
    ("upload_kBps_max", "upload per node, max (kB/s)", "{:.0f}"),
    ("wall_s", "wall time (s)", "{:.1f}"),
)


def print_tables(results: list[dict[str, Any]], header: str) -> None:
    print(header)
    for label in dict.fromkeys(r["consortium"] for r in results):
        group = [r for r in results if r["consortium"] == label]
        first = group[0]
        print(f"\n{label} (quorum {first['quorum']}), {first['block_bytes']:,.0f} bytes per block announcement")
        names = [r["scenario"] for r in group]
        width = max(len(label) for _, label, _ in ROWS) + 2
        print(" " * width + "".join(f"{name:>14}" for name in names))
        for key, title, form in ROWS:
            cells = []
            for r in group:
                value = r[key]
                if isinstance(value, dict):
                    value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
                    cells.append(f"{value:>14}" if len(value) <= 13 else " " + value)
                else:
                    cells.append(f"{form.format(value):>14}")
            print(f"{title:<{width}}" + "".join(cells))
        bad = [r for r in group if r["violations"]]
        print(f"{'safety violations':<{width}}" + "".join(f"{len(r['violations']):>14}" for r in group))
        for r in bad:
            print(f"\n!!! SAFETY VIOLATION in {label} / {r['scenario']}: {len(r['violations'])} !!!", flush=True)
            for line in r["violations"][:10]:
                print(f"!!!   {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consortia", nargs="+", default=list(CONSORTIA), help="N or N:K (default 4 21 100 100:21)")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(DEFAULT_SCENARIOS))
    parser.add_argument("--slots", type=int, default=SLOTS, help=f"simulated slots per run (default {SLOTS})")
    parser.add_argument("--slot-ms", type=int, default=SLOT_MS, help=f"slot length (default {SLOT_MS})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tx-per-block", type=int, default=TX_PER_BLOCK, help="nominal records per block (bytes)")
    parser.add_argument("--uplink-mbps", type=float, default=UPLINK_MBPS, help="each node's upload bandwidth")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    try:
        sizes = consortia(args.consortia)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    if args.slots < 20 or args.slot_ms < 100 or args.jobs < 1 or args.uplink_mbps <= 0 or args.tx_per_block < 0:
        parser.error("need --slots >= 20, --slot-ms >= 100, --jobs >= 1, --uplink-mbps > 0, --tx-per-block >= 0")
    configs = [
        Config(n, k, SCENARIOS[name], args.slots, args.slot_ms, args.seed, args.tx_per_block, args.uplink_mbps)
        for n, k in sizes
        for name in args.scenarios
    ]
    load_before = os.getloadavg()
    started = time.perf_counter()
    # The biggest runs first, so that two workers finish together.
    order = sorted(range(len(configs)), key=lambda i: -configs[i].nodes * configs[i].delegates)
    results: list[dict[str, Any] | None] = [None] * len(configs)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {i: pool.submit(simulate, configs[i]) for i in order}
        for i in order:
            results[i] = futures[i].result()
            r = results[i]
            print(f"[{time.perf_counter() - started:6.1f} s] {r['consortium']} {r['scenario']}: "
                  f"{r['events']:,} events in {r['wall_s']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    done = [r for r in results if r is not None]
    load_after = os.getloadavg()
    header = (
        f"MedLedger consensus simulation: {args.slots} slots of {args.slot_ms} ms, seed {args.seed}, "
        f"{args.tx_per_block} nominal records per block ({done[0]['tx_bytes']:,} bytes each), uplink "
        f"{args.uplink_mbps:g} Mbit/s per node; {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores, "
        f"{args.jobs} workers; load average {' '.join(f'{x:.2f}' for x in load_before)} -> "
        f"{' '.join(f'{x:.2f}' for x in load_after)}"
    )
    if args.json:
        print(json.dumps({"header": header, "results": done}, indent=2, default=str))
    else:
        print_tables(done, header)
    return 1 if any(r["violations"] for r in done) else 0


if __name__ == "__main__":
    sys.exit(main())
