"""The consensus state machine, folded block by block.

Slots: slot s covers [genesis + s*slot_ms, genesis + (s+1)*slot_ms). A round is K
consecutive slots (round r = slots rK .. rK+K-1); an epoch is `epoch_slots` slots.

- **Voting power**: hospitals hold it, not accounts. A doctor's or admin's vote carries
  its stake (STAKE) only because its hospital's node endorsed its key; patients have
  none. The votes of all accounts one hospital endorsed are pooled into that
  hospital's one vote of weight FULL, split over the candidates they named in
  proportion to stake, so no hospital outweighs another by registering accounts.
- **Election** (each epoch start): candidates not banned, by score = (1000 + vote
  weight) * reliability / 1000, highest first (ties by node id); the top K are the
  delegates.
- **Order** (each round start): the active delegates, shuffled deterministically
  with SHA-256(round || hash of the last block before the round).
- **Misses**: when a block arrives, the slots between it and the previous block
  were missed by their scheduled delegates. `miss_limit` consecutive misses remove a
  delegate at once: the next candidate by score takes its place in the order, its
  reliability halves and it sits out the next epoch.
- **Equivocation**: an `evidence` transaction with two different headers signed by
  one producer for one slot removes it the same way, quartering its reliability.
- **Recovery**: a delegate that served a whole epoch without removal regains 100
  (of 1000) reliability.
- **Finality**: block f+1 is final once it is on a final block f and at least quorum
  (floor(2K/3) + 1) members of the *committee* have produced at its height or above, the
  committee being the delegates in office right after block f. A change to the delegates
  (drop, replacement, evidence, election) thus counts for finality only once the block that
  made it is final under the set before it. Two branches forking after block p both judge
  block p+1 by the same committee (a function of the chain up to p), so both can finalise
  only if more than K/3 of that committee produced on both: a split network cannot end
  with two final chains, however each side refills its delegates.
- **Handover**: an election keeps the best `quorum` of the committee that are still
  electable, so that enough of the set that can finalise its first block is still there to
  do it (at most K - quorum delegates change per epoch by votes).

Integers only (reliability in thousandths), so every node computes the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from core.consensus.params import Params
from core.crypto.keys import fingerprint, node_public_key_from_bytes
from core.encoding import b64d
from core.errors import CoreError, EncodingError, InvalidSignature, InvalidTransaction
from core.ledger.block import BlockHeader, decode_header
from core.ledger.merkle import merkle_root
from core.ledger.registry import KeyRegistry
from core.ledger.transaction import Transaction, decode_transaction

# A staff account's share of its own hospital's vote. Patients have none: they choose who reads
# their records, not who runs the infrastructure, and anyone can register as one.
STAKE = {"admin": 10, "doctor": 3}
FULL = 1000  # also the whole vote of one hospital: every member has the same say
RECOVERY = 100
BAN_EPOCHS = 2  # removed in epoch e: not electable in e + 1
MAX_REPLAYED_GAP = 10_000  # missed slots replayed one by one; past that, only the outcome matters
_CONTAINERS = (dict, list, set)  # what `copy` copies; every value inside one is immutable


def shuffle(members: Sequence[str], seed: bytes) -> list[str]:
    """Fisher-Yates driven by SHA-256(seed || counter): the same order on every node."""
    order = list(members)
    for i in range(len(order) - 1, 0, -1):
        digest = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        j = int.from_bytes(digest[:8], "big") % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


@dataclass(frozen=True)
class Removal:
    slot: int
    node: str
    reason: str


@dataclass
class ConsensusState:
    params: Params
    node_keys: dict[str, bytes]  # candidate -> raw Ed25519 key, in admission order
    votes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # voter key id -> candidates named
    stakes: dict[str, int] = field(default_factory=dict)  # voter key id -> stake when it voted (0: none)
    homes: dict[str, str] = field(default_factory=dict)  # voter key id -> the member node that endorsed it
    reliability: dict[str, int] = field(default_factory=dict)
    banned_until: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    epoch: int = -1
    elected: list[str] = field(default_factory=list)
    removed: set[str] = field(default_factory=set)
    round: int = -1
    order: list[str] = field(default_factory=list)
    last_slot: int = 0
    last_hash: str = "0" * 64
    removals: list[Removal] = field(default_factory=list)
    produced: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)  # admitted nodes' addresses
    admissions: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (id, key) -> members in favour
    punished: set[tuple[str, int]] = field(default_factory=set)  # (producer, slot) equivocations already judged
    final: int = 0  # the highest final height of this chain
    committee: frozenset[str] = frozenset()  # the delegates in office right after the final block
    built: dict[str, int] = field(default_factory=dict)  # producer -> height of its latest block on this chain
    # Changes to the delegates above `final`: (height of the block that made one, delegates after it).
    changes: list[tuple[int, frozenset[str]]] = field(default_factory=list)

    @classmethod
    def from_genesis(cls, params: Params, nodes: dict[str, bytes], genesis_hash: str) -> ConsensusState:
        state = cls(params=params, node_keys=dict(nodes))
        state.reliability = {n: FULL for n in nodes}
        state.last_hash = genesis_hash
        state._enter(0)
        state.committee = frozenset(state.order)
        return state

    def copy(self) -> ConsensusState:
        """An independent state (a trial that a rejected block leaves no trace of). What the
        containers hold is immutable, but for the admission sets, so copying the containers is
        enough; a deep copy cost more than all the other checks of a block together."""
        clone = object.__new__(ConsensusState)
        clone.__dict__.update(
            {name: value.copy() if type(value) in _CONTAINERS else value for name, value in vars(self).items()}
        )
        clone.admissions = {key: set(members) for key, members in self.admissions.items()}
        return clone

    # -- election and order -----------------------------------------------------------------

    def ballots(self) -> dict[str, list[tuple[int, tuple[str, ...]]]]:
        """The votes that carry stake, pooled by the hospital node that endorsed each voter:
        hospital -> [(stake, candidates named)]."""
        pools: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        for voter, chosen in self.votes.items():
            stake, home = self.stakes.get(voter, 0), self.homes.get(voter)
            if stake > 0 and home is not None:
                pools.setdefault(home, []).append((stake, chosen))
        return pools

    def vote_weight(self, node: str) -> int:
        """`node`'s votes in thousandths of one hospital's vote. Each hospital whose accounts voted
        gives FULL, split over the candidates they named: an account's stake is split equally over
        its candidates, and the hospital's FULL in proportion to those shares. So one hospital adds
        at most FULL to a candidate (and FULL in all), however many accounts it endorsed."""
        weight = 0
        for pool in self.ballots().values():
            total = sum(stake for stake, _ in pool)
            share = sum((Fraction(stake, len(chosen)) for stake, chosen in pool if node in chosen), Fraction(0))
            weight += FULL * share // total  # exact rationals, floored once: every node agrees
        return weight

    def score(self, node: str) -> int:
        return (FULL + self.vote_weight(node)) * self.reliability.get(node, FULL) // FULL

    def ranking(self) -> list[str]:
        """Candidates electable this epoch, best first."""
        eligible = [n for n in self.node_keys if self.banned_until.get(n, 0) <= self.epoch]
        return sorted(eligible, key=lambda n: (-self.score(n), n))

    def active(self) -> list[str]:
        """This epoch's delegates still serving, refilled from the ranking after removals."""
        serving = [n for n in self.elected if n not in self.removed]
        if len(serving) >= self.params.delegates:
            return serving
        for candidate in self.ranking():
            if len(serving) >= self.params.delegates:
                break
            if candidate not in serving and candidate not in self.removed:
                serving.append(candidate)
        return serving

    def _elect(self) -> list[str]:
        """The top K of the ranking, except that the best `quorum` committee members still
        electable stay: the first block of the epoch is final only once `quorum` of the committee
        have built on it, so an election that replaced more would stall finality for good."""
        ranked = self.ranking()
        keep = [n for n in ranked if n in self.committee][: self.params.quorum]
        rest = [n for n in ranked if n not in keep][: self.params.delegates - len(keep)]
        chosen = {*keep, *rest}
        return [n for n in ranked if n in chosen]

    def _new_epoch(self, epoch: int) -> None:
        for node in self.elected:
            if node not in self.removed:
                self.reliability[node] = min(FULL, self.reliability.get(node, FULL) + RECOVERY)
        self.epoch = epoch
        self.removed = set()
        self.elected = self._elect()
        self.round = -1

    def _new_round(self, round_: int) -> None:
        self.round = round_
        seed = round_.to_bytes(8, "big") + bytes.fromhex(self.last_hash)
        self.order = shuffle(sorted(self.active()), seed)

    def _enter(self, slot: int) -> None:
        epoch = slot // self.params.epoch_slots
        if epoch != self.epoch:
            self._new_epoch(epoch)
        if slot // self.params.delegates != self.round:
            self._new_round(slot // self.params.delegates)

    def scheduled(self, slot: int) -> str | None:
        """The delegate whose slot this is (for slots in the current round)."""
        if not self.order:
            return None
        return self.order[(slot % self.params.delegates) % len(self.order)]

    # -- removal ----------------------------------------------------------------------------

    def _remove(self, node: str, slot: int, reason: str, divisor: int, proven: bool = False) -> None:
        """Drop `node` from this epoch's delegates, lower its reliability and ban it for the next
        epoch. A proven fault (evidence) is punished even if the node was already dropped for
        missed slots; missing more slots once dropped changes nothing. A consortium never drops its
        last producer, nor, for missed slots, a committee member when that would leave fewer than
        `quorum` of the committee in office: nothing could be final again until the dropped one
        was back, two epochs later, whereas a member kept in office counts again as soon as it
        produces (after a partition heals, say)."""
        if node in self.removed and not proven:
            return
        if node not in self.removed:
            self.removed.add(node)
            serving = self.active()
            short = node in self.committee and len(self.committee.intersection(serving)) < self.params.quorum
            if not serving or (short and not proven):
                self.removed.discard(node)
                return
        self.reliability[node] = self.reliability.get(node, FULL) // divisor
        self.banned_until[node] = self.epoch + BAN_EPOCHS
        self.misses[node] = 0
        self.removals.append(Removal(slot, node, reason))
        replacements = [n for n in self.active() if n not in self.order]
        if node in self.order:
            index = self.order.index(node)
            if replacements:
                self.order[index] = replacements[0]
            else:
                del self.order[index]

    def _missed(self, slot: int) -> None:
        node = self.scheduled(slot)
        if node is None:
            return
        self.misses[node] = self.misses.get(node, 0) + 1
        if self.misses[node] >= self.params.miss_limit:
            self._remove(node, slot, f"missed {self.misses[node]} slots in a row", 2)

    def advance(self, slot: int) -> None:
        """Enter `slot`, counting every slot since the last block as missed."""
        gap_start = self.last_slot + 1
        if slot - gap_start > MAX_REPLAYED_GAP:
            gap_start = slot - MAX_REPLAYED_GAP
        for missed in range(gap_start, slot):
            self._enter(missed)
            self._missed(missed)
        self._enter(slot)

    # -- blocks and transactions -------------------------------------------------------------

    def check_producer(self, header: BlockHeader) -> int:
        """The header's slot, if its producer is the one scheduled for it; raises InvalidTransaction
        (turned into the "producer schedule" check by the validator) otherwise. Mutates: enters
        the slot, counting misses since the last block."""
        slot = self.params.slot_of(header.timestamp)
        if slot <= self.last_slot:
            raise InvalidTransaction(f"slot {slot} is not after the previous block's slot {self.last_slot}")
        self.advance(slot)
        expected = self.scheduled(slot)
        if header.producer != expected:
            raise InvalidTransaction(f"slot {slot} belongs to {expected}, not {header.producer}")
        return slot

    def apply(self, header: BlockHeader, txs: Sequence[Transaction], registry: KeyRegistry) -> list[str]:
        """Fold a block in (after `check_producer`); returns the nodes it admitted."""
        self.misses[header.producer] = 0
        self.produced[header.producer] = self.produced.get(header.producer, 0) + 1
        self.last_slot = self.params.slot_of(header.timestamp)
        admitted = [node for node in (self.apply_tx(tx, registry) for tx in txs) if node is not None]
        self.last_hash = header.hash
        self._finalise(header.height, header.producer)
        return admitted

    # -- finality ----------------------------------------------------------------------------

    def _finalise(self, height: int, producer: str) -> None:
        """Count the block at `height` by `producer` for finality, note whether it changed the
        delegates, and move the final height up as far as the rule allows: from final block f to
        f+1 when `quorum` members of the committee of f have built at f+1 or above; the committee
        then becomes the delegates after f+1 (unchanged unless a block in between changed them)."""
        self.built[producer] = height
        delegates = frozenset(self.order)
        if delegates != (self.changes[-1][1] if self.changes else self.committee):
            self.changes.append((height, delegates))
        while True:
            reach = self._reach()
            if reach <= self.final:
                return
            if not self.changes or self.changes[0][0] > reach:
                self.final = reach
                return
            self.final, self.committee = self.changes.pop(0)

    def _reach(self) -> int:
        """The highest height on which at least `quorum` committee members have built (-1: none)."""
        heights = sorted((self.built[n] for n in self.committee if n in self.built), reverse=True)
        quorum = self.params.quorum
        return heights[quorum - 1] if len(heights) >= quorum else -1

    def apply_tx(self, tx: Transaction, registry: KeyRegistry) -> str | None:
        """Check and fold one transaction; returns the node it admitted, if any. Raises
        InvalidTransaction. (Producers fold a candidate batch through a copy with this.)"""
        self.check(tx, registry)
        if tx.kind == "vote":
            self._vote(tx, registry)
        elif tx.kind == "evidence":
            self._evidence(tx, registry)
        elif tx.kind == "admit" and self._admit(tx):
            return tx.payload["node"]
        return None

    def _admit(self, tx: Transaction) -> bool:
        """Count a member's vote to admit a node; True when more than two thirds of the members
        have voted for the same id and key, and the node becomes a candidate."""
        member = self.node_for_key(tx.signer) or ""
        node, key = tx.payload["node"], tx.payload["key"]
        votes = self.admissions.setdefault((node, key), set())
        votes.add(member)
        if len(votes) < len(self.node_keys) * 2 // 3 + 1:
            return False
        self.node_keys[node] = b64d(key)
        self.reliability[node] = FULL
        self.urls[node] = tx.payload["url"]
        del self.admissions[(node, key)]
        return True

    def check(self, tx: Transaction, registry: KeyRegistry) -> None:
        """Would `tx` be accepted by consensus now? Raises InvalidTransaction saying why not.
        (Producers ask before putting a transaction in a block.)"""
        if tx.kind == "vote":
            chosen = tx.payload["nodes"]
            if any(n not in self.node_keys for n in chosen) or len(chosen) > self.params.delegates:
                raise InvalidTransaction(f"a vote names at most {self.params.delegates} known nodes")
        elif tx.kind == "evidence":
            node, slot, _ = self.culprit(tx.payload, registry)
            if (node, slot) in self.punished:
                raise InvalidTransaction(f"{node}'s equivocation in slot {slot} was already punished")
        elif tx.kind == "admit":
            if self.node_for_key(tx.signer) is None:
                raise InvalidTransaction("only member nodes vote to admit a node")
            if tx.payload["node"] in self.node_keys:
                raise InvalidTransaction(f"{tx.payload['node']} is already a member")

    def _vote(self, tx: Transaction, registry: KeyRegistry) -> None:
        """Record the signer's vote, replacing any earlier one, with the stake and home it has now:
        STAKE by role if a member node endorsed its key, else none (the vote is kept, so the
        account sees it, but weighs nothing)."""
        home = registry.homes.get(tx.signer)
        self.votes[tx.signer] = tuple(tx.payload["nodes"])
        if home in self.node_keys:
            self.stakes[tx.signer] = STAKE.get(registry.roles.get(tx.signer, ""), 0)
            self.homes[tx.signer] = home
        else:
            self.stakes[tx.signer] = 0
            self.homes.pop(tx.signer, None)

    def equivocator(self, payload: dict[str, Any]) -> tuple[str, int]:
        """The producer (and slot) that two different headers for one slot prove guilty; raises
        InvalidTransaction."""
        try:
            first, second = decode_header(b64d(payload["a"])), decode_header(b64d(payload["b"]))
        except (EncodingError, CoreError) as exc:
            raise InvalidTransaction(f"evidence headers: {exc}") from exc
        if first.hash == second.hash or first.producer != second.producer:
            raise InvalidTransaction("evidence needs two different headers from one producer")
        if self.params.slot_of(first.timestamp) != self.params.slot_of(second.timestamp):
            raise InvalidTransaction("evidence headers are for different slots")
        key = self.node_keys.get(first.producer)
        if key is None:
            raise InvalidTransaction("evidence names an unknown producer")
        verifier = node_public_key_from_bytes(key)
        try:
            verifier.verify(first.signature, first.signing_bytes())
            verifier.verify(second.signature, second.signing_bytes())
        except InvalidSignature as exc:
            raise InvalidTransaction("evidence headers are not both signed by the producer") from exc
        return first.producer, self.params.slot_of(first.timestamp)

    def culprit(self, payload: dict[str, Any], registry: KeyRegistry) -> tuple[str, int, str]:
        """Who the evidence convicts, for which slot, and of what; raises InvalidTransaction."""
        if "a" in payload:
            node, slot = self.equivocator(payload)
            return node, slot, "signed two blocks for one slot"
        node, slot = self.invalid_block_producer(payload, registry)
        return node, slot, "signed an invalid block"

    def _signed_header(self, data: bytes) -> BlockHeader:
        try:
            header = decode_header(data)
        except (EncodingError, CoreError) as exc:
            raise InvalidTransaction(f"evidence header: {exc}") from exc
        key = self.node_keys.get(header.producer)
        if key is None:
            raise InvalidTransaction("evidence names an unknown producer")
        try:
            node_public_key_from_bytes(key).verify(header.signature, header.signing_bytes())
        except InvalidSignature as exc:
            raise InvalidTransaction("evidence header is not signed by its producer") from exc
        return header

    def invalid_block_producer(self, payload: dict[str, Any], registry: KeyRegistry) -> tuple[str, int]:
        """The producer of a signed header whose body (matching its Merkle root) holds a
        transaction that is malformed or wrongly signed; raises InvalidTransaction otherwise."""
        header = self._signed_header(b64d(payload["header"]))
        body = [b64d(t) for t in payload["transactions"]]
        if merkle_root([hashlib.sha256(t).hexdigest() for t in body]) != header.merkle_root:
            raise InvalidTransaction("evidence body does not match the header's Merkle root")
        for data in body:
            try:
                tx = decode_transaction(data)
            except (EncodingError, InvalidTransaction):
                return header.producer, self.params.slot_of(header.timestamp)
            verifier = registry.accounts.get(tx.signer) or registry.node_keys.get(tx.signer)
            if verifier is None:
                continue
            try:
                verifier.verify(tx.signature, tx.signing_bytes())
            except InvalidSignature:
                return header.producer, self.params.slot_of(header.timestamp)
        raise InvalidTransaction("evidence block holds no malformed or wrongly signed transaction")

    def _evidence(self, tx: Transaction, registry: KeyRegistry) -> None:
        node, slot, reason = self.culprit(tx.payload, registry)
        self.punished.add((node, slot))
        self._remove(node, self.last_slot, reason, 4, proven=True)

    def node_for_key(self, key_id: str) -> str | None:
        for node, key in self.node_keys.items():
            if fingerprint(key) == key_id:
                return node
        return None
