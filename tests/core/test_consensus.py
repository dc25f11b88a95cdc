"""Consensus (improved DPoS): the shuffle, the parameters, the producer schedule as `validate_chain`
enforces it, removals for missed slots and for equivocation, votes, finality and recovery.

Chains are built with core only: deterministic Ed25519 node keys, a genesis naming every node and
the parameters, then each block signed by the node a copy of the chain's `ConsensusState` says is
scheduled for its slot (`Chain.scheduled`). Every block goes through a `ChainValidator` as it is
added, and the tests re-validate whole chains from scratch with `validate_chain`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import uuid
from collections.abc import Iterable, Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from core.consensus import ConsensusState, Params, shuffle
from core.consensus.state import FULL, Removal
from core.crypto import NodeKey, UserKeys
from core.encoding import b64e
from core.errors import InvalidBlock, InvalidTransaction
from core.ledger import (
    GENESIS_PREV_HASH,
    Block,
    BlockHeader,
    ChainReport,
    KeyRegistry,
    StoredBlock,
    Transaction,
    decode_header,
    key_payload,
    make_block,
    sign_transaction,
    validate_chain,
)
from core.ledger import block as block_module
from core.ledger.transaction import Signer
from core.ledger.validate import ChainValidator

T0 = 1_700_000_000_000
SLOT_MS = 1000
NAMES = ("n1", "n2", "n3", "n4", "n5")
MORE = ("n6", "n7")  # hospitals beyond the five, for fewer delegates than hospitals
# Deterministic node keys: the schedule (which depends on block hashes) is the same on every run.
KEYS = {
    name: NodeKey(name, ed25519.Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32))
    for i, name in enumerate(NAMES + MORE)
}
OUTSIDER = NodeKey("node-9", ed25519.Ed25519PrivateKey.from_private_bytes(b"\x09" * 32))


def _params(**changes: int) -> Params:
    values = {"delegates": 4, "slot_ms": SLOT_MS, "epoch_slots": 40, "miss_limit": 3, "genesis_ms": T0}
    return Params(**{**values, **changes})


def _stored(block: Block) -> StoredBlock:
    return StoredBlock(
        block.header.height, block.header.hash, block.header.encoded, [tx.encoded for tx in block.transactions]
    )


class Chain:
    """A chain under construction, validated block by block."""

    def __init__(self, names: Sequence[str], params: Params, genesis_ts: int | None = None) -> None:
        self.params = params
        self.keys = {name: KEYS[name] for name in names}
        self._nonces = itertools.count(1)
        first = self.keys[names[0]]
        payload = {
            "chain": "medledger-consensus",
            "nodes": [{"id": name, "key": b64e(key.public_raw)} for name, key in self.keys.items()],
            "params": params.to_dict(),
        }
        ts = params.genesis_ms if genesis_ts is None else genesis_ts
        genesis = sign_transaction("genesis", payload, first, ts, nonce=self._nonce())
        block = make_block(0, GENESIS_PREV_HASH, [genesis], first.node_id, first, ts, nonce=self._nonce())
        self.validator = ChainValidator()
        self.blocks: list[StoredBlock] = []
        self._accept(_stored(block))

    def _nonce(self) -> str:
        return f"{next(self._nonces):032x}"

    def fork(self) -> Chain:
        """A second chain sharing this one's blocks so far, to grow a competing branch on."""
        other = object.__new__(Chain)
        other.params, other.keys, other.blocks = self.params, self.keys, list(self.blocks)
        other._nonces = itertools.count(1_000_000)  # its blocks differ from this chain's
        v = self.validator
        assert v.consensus is not None
        other.validator = ChainValidator(
            registry=v.registry.copy(), tip=v.tip, seen=set(v.seen), consensus=v.consensus.copy()
        )
        return other

    def _accept(self, stored: StoredBlock) -> None:
        self.validator.append(stored)  # raises InvalidBlock: a builder mistake or a rule broken
        self.blocks.append(stored)

    @property
    def state(self) -> ConsensusState:
        assert self.validator.consensus is not None
        return self.validator.consensus

    @property
    def tip(self) -> BlockHeader:
        assert self.validator.tip is not None
        return self.validator.tip

    def producers(self) -> list[str]:
        return [decode_header(b.header).producer for b in self.blocks]

    def slots(self) -> list[int]:
        return [self.params.slot_of(decode_header(b.header).timestamp) for b in self.blocks]

    def entered(self, slot: int) -> ConsensusState:
        """A copy of the state entered into `slot` (the slots since the tip counted as missed)."""
        trial = self.state.copy()
        trial.advance(slot)
        return trial

    def scheduled(self, slot: int) -> str:
        producer = self.entered(slot).scheduled(slot)
        assert producer is not None
        return producer

    def block(
        self, slot: int, txs: Iterable[Transaction] = (), producer: str | None = None, ts: int | None = None
    ) -> StoredBlock:
        """The next block (not added), by the scheduled producer unless told otherwise."""
        name = producer or self.scheduled(slot)
        key = self.keys.get(name, OUTSIDER)
        timestamp = self.params.slot_start(slot) if ts is None else ts
        block = make_block(self.tip.height + 1, self.tip.hash, list(txs), name, key, timestamp, nonce=self._nonce())
        return _stored(block)

    def add(self, slot: int, txs: Iterable[Transaction] = ()) -> str:
        """Add the scheduled producer's block for `slot`; returns the producer."""
        stored = self.block(slot, txs)
        self._accept(stored)
        return decode_header(stored.header).producer

    def fill(self, until: int, skip: Iterable[str] = ()) -> list[int]:
        """A block in every slot after the tip up to `until` whose producer is not in `skip`; returns
        the slots skipped."""
        skipped, skipping = [], set(skip)
        for slot in range(self.state.last_slot + 1, until + 1):
            if self.scheduled(slot) in skipping:
                skipped.append(slot)
            else:
                self.add(slot)
        return skipped

    def tx(self, kind: str, payload: dict, signer: Signer) -> Transaction:
        return sign_transaction(kind, payload, signer, self.params.slot_start(self.state.last_slot), self._nonce())

    def report_with(self, *extra: StoredBlock) -> ChainReport:
        return validate_chain([*self.blocks, *extra])


def _key_payload(user: UserKeys, role: str, home: NodeKey = KEYS["n1"]) -> dict:
    return key_payload(
        str(uuid.UUID(int=len(role), version=4)), role, user.public.rsa_der, user.public.umbral, home, user.public.sign
    )


def _header(
    producer: str, slot: int, nonce: str, height: int = 1, signer: NodeKey | None = None, offset: int = 0
) -> BlockHeader:
    """A header by `producer` for `slot` (not on any chain), signed by `signer` (default: the producer)."""
    key = signer or KEYS.get(producer, OUTSIDER)
    block = make_block(height, "ab" * 32, [], producer, key, T0 + slot * SLOT_MS + offset, nonce=nonce)
    return block.header


def _evidence(first: BlockHeader | bytes, second: BlockHeader | bytes) -> dict:
    def raw(h: BlockHeader | bytes) -> str:
        return b64e(h if isinstance(h, bytes) else h.encoded)

    return {"a": raw(first), "b": raw(second)}


# The shuffle


MEMBERS = ["n1", "n2", "n3", "n4", "n5", "n6"]


def test_shuffle_is_deterministic():
    seed = hashlib.sha256(b"round 7").digest()
    assert shuffle(MEMBERS, seed) == shuffle(list(MEMBERS), seed) == shuffle(tuple(MEMBERS), seed)


@pytest.mark.parametrize("size", range(8))
def test_shuffle_is_a_permutation(size):
    members = [f"node-{i}" for i in range(size)]
    for seed in range(20):
        order = shuffle(members, seed.to_bytes(8, "big"))
        assert sorted(order) == sorted(members)
        assert len(order) == size
    assert members == [f"node-{i}" for i in range(size)]  # the input is left alone


def test_shuffle_depends_on_the_seed():
    orders = {tuple(shuffle(MEMBERS, seed.to_bytes(8, "big"))) for seed in range(30)}
    assert len(orders) >= 20  # 720 orders: 30 seeds almost never collide much
    assert shuffle(MEMBERS, b"\x00" * 40) != shuffle(MEMBERS, b"\x00" * 39 + b"\x01")


def test_shuffle_reaches_every_order():
    members = ["a", "b", "c", "d"]
    orders = {tuple(shuffle(members, seed.to_bytes(4, "big"))) for seed in range(480)}
    assert orders == set(itertools.permutations(members))


def test_shuffle_of_two_by_hand():
    """Fisher-Yates over SHA-256(seed || i): for two members, one draw decides the swap."""
    outcomes = set()
    for seed in (bytes([i]) * 8 for i in range(16)):
        j = int.from_bytes(hashlib.sha256(seed + (1).to_bytes(4, "big")).digest()[:8], "big") % 2
        expected = ["a", "b"] if j == 1 else ["b", "a"]
        assert shuffle(["a", "b"], seed) == expected
        outcomes.add(tuple(expected))
    assert len(outcomes) == 2


def test_shuffle_of_none_and_one():
    assert shuffle([], b"s" * 40) == []
    assert shuffle(["only"], b"s" * 40) == ["only"]


# Parameters


def test_params_defaults_and_round_trip():
    params = Params()
    assert params.to_dict() == {"delegates": 1, "slot_ms": 2000, "epoch_slots": 60, "miss_limit": 3, "genesis_ms": 0}
    custom = _params()
    assert Params.from_dict(custom.to_dict()) == custom
    with pytest.raises(dataclasses.FrozenInstanceError):
        custom.delegates = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "values",
    [
        {"delegates": 101, "epoch_slots": 101},
        {"delegates": 1, "epoch_slots": 1},
        {"delegates": 7, "epoch_slots": 7},
        {"slot_ms": 100},
        {"miss_limit": 1},
        {"genesis_ms": 0},
    ],
    ids=["most-delegates", "one-delegate", "epoch-of-one-round", "shortest-slot", "miss-limit-one", "epoch-zero"],
)
def test_params_boundaries_are_accepted(values):
    params = _params(**values)
    assert Params.from_dict(params.to_dict()) == params


@pytest.mark.parametrize(
    "values",
    [
        {"delegates": 0},
        {"delegates": -1},
        {"delegates": 102, "epoch_slots": 200},
        {"slot_ms": 99},
        {"slot_ms": 0},
        {"delegates": 5, "epoch_slots": 4},
        {"miss_limit": 0},
        {"miss_limit": -3},
        {"genesis_ms": -1},
    ],
    ids=[
        "no-delegates",
        "negative-delegates",
        "too-many-delegates",
        "slot-99ms",
        "slot-zero",
        "epoch-shorter-than-a-round",
        "miss-limit-zero",
        "miss-limit-negative",
        "negative-genesis",
    ],
)
def test_invalid_params_out_of_range(values):
    with pytest.raises(InvalidTransaction, match=r"^consensus parameters out of range$"):
        _params(**values)
    with pytest.raises(InvalidTransaction, match=r"^consensus parameters out of range$"):
        Params.from_dict({**Params().to_dict(), "epoch_slots": 200, **values})


FIELDS_MESSAGE = r"^params must have exactly delegates, epoch_slots, genesis_ms, miss_limit, slot_ms$"


@pytest.mark.parametrize(
    "data",
    [None, [], "params", {}, {"delegates": 1}, {**Params().to_dict(), "extra": 0}, {**Params().to_dict(), "K": 1}],
    ids=["none", "list", "string", "empty", "one-field", "extra-field", "renamed-field"],
)
def test_invalid_params_fields(data):
    with pytest.raises(InvalidTransaction, match=FIELDS_MESSAGE):
        Params.from_dict(data)


@pytest.mark.parametrize(
    ("name", "value"),
    [("delegates", True), ("slot_ms", "1000"), ("epoch_slots", 60.0), ("miss_limit", None), ("genesis_ms", [0])],
)
def test_invalid_params_not_whole_numbers(name, value):
    with pytest.raises(InvalidTransaction, match=r"^params must be whole numbers$"):
        Params.from_dict({**Params().to_dict(), name: value})


def test_slot_of_and_slot_start():
    params = _params(genesis_ms=5000, slot_ms=1000)
    assert [params.slot_of(ts) for ts in (5000, 5999, 6000, 6001, 14_999, 15_000)] == [0, 0, 1, 1, 9, 10]
    assert params.slot_of(4999) == -1
    assert [params.slot_start(s) for s in (0, 1, 3, 10)] == [5000, 6000, 8000, 15_000]
    for slot in (0, 1, 2, 59, 60, 61, 12_345):
        start = params.slot_start(slot)
        assert params.slot_of(start) == slot
        assert params.slot_of(start + params.slot_ms - 1) == slot
        assert params.slot_of(start - 1) == slot - 1


@pytest.mark.parametrize(
    ("delegates", "quorum"), [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (6, 5), (7, 5), (10, 7), (21, 15), (101, 68)]
)
def test_quorum(delegates, quorum):
    assert _params(delegates=delegates, epoch_slots=101).quorum == quorum


def test_quorum_is_the_smallest_count_above_two_thirds():
    for k in range(1, 102):
        q = _params(delegates=k, epoch_slots=101).quorum
        assert 3 * q > 2 * k >= 3 * (q - 1), k


# The producer schedule, four delegates


@pytest.fixture(scope="module")
def four() -> Chain:
    """Four nodes, K = 4, every slot filled for 8 rounds (epochs of 8 slots)."""
    chain = Chain(NAMES[:4], _params(epoch_slots=8))
    chain.fill(31)
    return chain


def test_full_chain_is_valid(four):
    report = validate_chain(four.blocks)
    assert report.valid and report.blocks == 32
    assert four.slots() == list(range(32))
    assert four.state.removals == []
    assert four.state.reliability == dict.fromkeys(NAMES[:4], FULL)
    # Rounds 1-7 give each delegate one block; round 0 has three (slot 0 is the genesis block's).
    assert sorted(four.state.produced.values()) == [7, 8, 8, 8]
    assert set(four.state.produced) == set(NAMES[:4])


def test_every_slot_in_a_round_has_a_distinct_producer(four):
    producers, slots = four.producers(), four.slots()
    by_slot = dict(zip(slots, producers, strict=True))
    assert len({by_slot[s] for s in (1, 2, 3)}) == 3  # round 0 after the genesis slot
    orders = []
    for r in range(1, 8):
        order = [by_slot[s] for s in range(4 * r, 4 * r + 4)]
        assert sorted(order) == list(NAMES[:4]), (r, order)
        orders.append(tuple(order))
    assert len(set(orders)) > 1  # re-shuffled each round


def test_round_order_is_the_shuffle_seeded_by_round_and_previous_block(four):
    """Recomputed from the rule, not from the state: shuffle(sorted(delegates), round || hash before)."""
    by_slot = dict(zip(four.slots(), four.producers(), strict=True))
    hash_by_slot = dict(zip(four.slots(), [b.hash for b in four.blocks], strict=True))
    for r in range(1, 8):
        seed = r.to_bytes(8, "big") + bytes.fromhex(hash_by_slot[4 * r - 1])
        assert shuffle(sorted(NAMES[:4]), seed) == [by_slot[s] for s in range(4 * r, 4 * r + 4)]


def test_invalid_block_by_the_wrong_producer(four):
    slot = four.state.last_slot + 1
    expected = four.scheduled(slot)
    for wrong in sorted(set(NAMES[:4]) - {expected}):
        report = four.report_with(four.block(slot, producer=wrong))
        assert (report.valid, report.height, report.check) == (False, 32, "producer schedule")
        assert report.detail == f"slot {slot} belongs to {expected}, not {wrong}"
        assert (report.blocks, report.tip_hash) == (32, four.tip.hash)
    assert four.report_with(four.block(slot)).valid


def test_invalid_block_by_the_producer_of_another_slot_of_the_round(four):
    """Each delegate owns one position: producing in a neighbour's slot is refused."""
    base = four.state.last_slot + 1  # slot 32: the start of a round
    owners = [four.scheduled(s) for s in range(base, base + 4)]  # from the tip, as if the round were missed
    for offset in range(1, 4):
        report = four.report_with(four.block(base + offset, producer=owners[0]))
        assert (report.height, report.check) == (32, "producer schedule")


def test_invalid_block_by_a_node_outside_the_consortium(four):
    slot = four.state.last_slot + 1
    report = four.report_with(four.block(slot, producer="node-9"))
    assert (report.height, report.check) == (32, "producer signature")  # unknown producers fail before the schedule


def test_invalid_block_in_a_reused_slot(four):
    slot = four.state.last_slot
    for offset in (0, 1, SLOT_MS - 1):
        for producer in NAMES[:4]:
            report = four.report_with(four.block(slot, producer=producer, ts=four.params.slot_start(slot) + offset))
            assert (report.valid, report.height, report.check) == (False, 32, "producer schedule")
            assert report.detail == f"slot {slot} is not after the previous block's slot {slot}"


def test_invalid_block_in_an_earlier_slot(four):
    """Back-dating below the previous block is caught by the timestamp check, which runs first."""
    slot = four.state.last_slot - 2
    report = four.report_with(four.block(slot, producer=four.producers()[-3]))
    assert (report.valid, report.height, report.check) == (False, 32, "timestamp")


def test_check_producer_refuses_an_earlier_slot(four):
    state = four.state.copy()
    assert four.state.last_slot == 31
    header = _header(NAMES[0], 29, "aa" * 16, height=32)
    with pytest.raises(InvalidTransaction, match=r"^slot 29 is not after the previous block's slot 31$"):
        state.check_producer(header)
    assert state == four.state  # refused before entering anything


def test_invalid_block_in_a_slot_before_the_genesis_slot():
    """A genesis block dated before `genesis_ms`: a block after it in time but in slot -1 is refused."""
    chain = Chain(NAMES[:4], _params(), genesis_ts=T0 - 5 * SLOT_MS)
    for slot in (-1, 0):
        report = chain.report_with(chain.block(slot, producer="n1"))
        assert (report.height, report.check) == (1, "producer schedule")
        assert report.detail == f"slot {slot} is not after the previous block's slot 0"


def test_validator_rejection_leaves_the_state_alone(four):
    before = four.state.copy()
    validator = ChainValidator()
    for stored in four.blocks:
        validator.append(stored)
    slot = four.state.last_slot + 1
    wrong = next(n for n in NAMES[:4] if n != four.scheduled(slot))
    with pytest.raises(InvalidBlock) as info:
        validator.append(four.block(slot, producer=wrong))
    assert (info.value.height, info.value.check) == (32, "producer schedule")
    assert validator.consensus == before
    validator.append(four.block(slot))  # the right block still goes on


# Missed slots


def test_miss_limit_consecutive_misses_remove_a_delegate():
    chain = Chain(NAMES[:4], _params(epoch_slots=16, miss_limit=3))
    victim = "n3"
    missed: list[int] = []
    slot = 0
    while not chain.state.removals:
        slot += 1
        if chain.scheduled(slot) == victim:
            missed.append(slot)
            assert chain.state.reliability[victim] == FULL
        else:
            chain.add(slot)
    assert len(missed) == 3
    epoch = missed[-1] // 16
    state = chain.state
    assert state.removals == [Removal(missed[-1], victim, "missed 3 slots in a row")]
    assert state.reliability[victim] == FULL // 2
    assert state.score(victim) == FULL // 2
    assert state.banned_until[victim] == epoch + 2
    assert state.misses[victim] == 0
    assert victim in state.removed
    assert victim not in state.active() and victim not in state.order
    assert sorted(state.active()) == sorted(set(NAMES[:4]) - {victim})
    assert all(state.reliability[n] == FULL for n in NAMES[:4] if n != victim)
    assert validate_chain(chain.blocks).valid

    # For the rest of the epoch and the next one the victim is never scheduled, and its blocks are refused.
    ban_end = (epoch + 2) * 16
    for s in range(chain.state.last_slot + 1, ban_end):
        if chain.scheduled(s) == victim:
            pytest.fail(f"removed delegate scheduled in slot {s}")
        report = chain.report_with(chain.block(s, producer=victim))
        assert (report.height, report.check) == (len(chain.blocks), "producer schedule")
        chain.add(s)
        if s // 16 == epoch + 1:
            assert victim not in chain.state.elected
    assert all(p != victim for s, p in zip(chain.slots(), chain.producers(), strict=True) if s > missed[-1])

    # Two epochs after the removal it is elected again, at half reliability.
    chain.fill(ban_end + 15)
    assert chain.state.epoch == epoch + 2
    assert victim in chain.state.elected
    assert chain.state.reliability[victim] == FULL // 2
    assert victim in chain.producers()[-16:]
    assert validate_chain(chain.blocks).valid


def test_misses_must_be_consecutive():
    chain = Chain(NAMES[:4], _params(epoch_slots=200, miss_limit=3))
    victim = "n3"

    def run(misses: int) -> None:
        """Fill slots, the victim missing its next `misses` slots and then filling the one after."""
        slot = chain.state.last_slot
        while True:
            slot += 1
            if chain.scheduled(slot) != victim:
                chain.add(slot)
            elif misses:
                misses -= 1
            else:
                chain.add(slot)
                return

    run(2)
    assert chain.state.misses[victim] == 0  # two misses, then a block: the count starts again
    run(2)
    assert chain.state.removals == []
    run(2)
    assert chain.state.removals == []
    assert chain.state.misses[victim] == 0
    assert chain.state.removals == []
    assert chain.state.reliability[victim] == FULL
    assert validate_chain(chain.blocks).valid


def test_a_fifth_candidate_replaces_a_removed_delegate():
    chain = Chain(NAMES, _params(epoch_slots=40, miss_limit=1))
    assert chain.state.elected == ["n1", "n2", "n3", "n4"]  # equal scores: by node id
    assert sorted(chain.state.order) == ["n1", "n2", "n3", "n4"]
    victim = chain.scheduled(1)
    before = chain.entered(1).order
    position = before.index(victim)
    assert position == 1

    chain.add(2)  # slot 1 missed: with miss_limit 1 the victim is removed at once
    state = chain.state
    assert state.removals == [Removal(1, victim, "missed 1 slots in a row")]
    assert state.order == [*before[:position], "n5", *before[position + 1 :]]  # n5 takes the old position
    assert sorted(state.active()) == sorted({*NAMES} - {victim})
    assert state.elected == ["n1", "n2", "n3", "n4"]  # the election itself waits for the next epoch

    chain.add(3)
    chain.fill(11)
    assert "n5" in chain.producers()
    assert victim not in chain.producers()[1:]
    assert validate_chain(chain.blocks).valid
    # The replacement stands in for the rest of the epoch; at the next one n5 is elected outright.
    chain.fill(40)
    assert chain.state.epoch == 1
    assert victim not in chain.state.elected and "n5" in chain.state.elected


def test_the_replacement_takes_the_old_position_within_the_round():
    """Evidence in a round's first slot removes the delegate of its third slot: that slot is now the
    replacement's, whose block validate_chain accepts, while the removed node's is refused."""
    chain = Chain(NAMES, _params(epoch_slots=40))
    chain.fill(3)
    round_start = 4
    victim = chain.scheduled(round_start + 2)
    first = chain.scheduled(round_start)
    assert first != victim
    evidence = chain.tx(
        "evidence", _evidence(_header(victim, 1, "aa" * 16), _header(victim, 1, "bb" * 16)), KEYS[first]
    )
    chain.add(round_start, [evidence])
    chain.add(round_start + 1)
    assert chain.scheduled(round_start + 2) == "n5"
    refused = chain.report_with(chain.block(round_start + 2, producer=victim))
    assert (refused.height, refused.check) == (len(chain.blocks), "producer schedule")
    assert refused.detail == f"slot {round_start + 2} belongs to n5, not {victim}"
    accepted = chain.block(round_start + 2, producer="n5")
    assert chain.report_with(accepted).valid


def test_last_producer_is_never_removed():
    chain = Chain(NAMES[:2], _params(delegates=2, epoch_slots=100, miss_limit=1))
    victim, survivor = "n2", "n1"
    slot = next(s for s in range(1, 9) if chain.scheduled(s) == survivor)
    proof = _evidence(_header(victim, 3, "aa" * 16), _header(victim, 3, "bb" * 16))
    chain.add(slot, [chain.tx("evidence", proof, KEYS[survivor])])
    assert chain.state.removals == [Removal(slot, victim, "signed two blocks for one slot")]
    assert chain.state.active() == [survivor]

    # The survivor now misses ten slots in a row: far past miss_limit, but it is the last producer.
    gap_end = chain.state.last_slot + 11
    assert chain.scheduled(gap_end) == survivor
    chain.add(gap_end)
    assert len(chain.state.removals) == 1
    assert chain.state.reliability[survivor] == FULL
    # Evidence against it (signed by the removed node's key) is valid but cannot remove it either.
    evidence = chain.tx(
        "evidence", _evidence(_header(survivor, 3, "aa" * 16), _header(survivor, 3, "bb" * 16)), KEYS[victim]
    )
    chain.add(gap_end + 1, [evidence])
    assert len(chain.state.removals) == 1
    assert chain.state.reliability[survivor] == FULL
    assert chain.state.active() == [survivor]
    assert validate_chain(chain.blocks).valid


def test_single_node_consortium_survives_a_long_gap():
    chain = Chain(NAMES[:1], _params(delegates=1, epoch_slots=10, miss_limit=1))
    chain.add(1)
    chain.add(500)  # 498 missed slots across 50 epochs
    chain.add(501)
    assert chain.state.removals == []
    assert chain.state.epoch == 50
    assert chain.state.elected == ["n1"]
    assert validate_chain(chain.blocks).valid


def test_a_silent_single_delegate_is_not_replaced():
    """With K = 1 the quorum is the one delegate: a standby's blocks could never be final, so the
    silent delegate keeps its slots."""
    chain = Chain(NAMES[:2], _params(delegates=1, epoch_slots=100, miss_limit=3))
    assert chain.state.elected == ["n1"]
    trial = chain.entered(5)  # slots 1-4 missed by n1
    assert trial.removals == []
    assert trial.scheduled(5) == "n1"


# Votes


@pytest.fixture(scope="module")
def voters(patient_keys, doctor_keys, stranger_keys) -> dict[str, UserKeys]:
    return {"patient": patient_keys, "doctor": doctor_keys, "admin": stranger_keys}


def _with_voters(voters: dict[str, UserKeys], homes: dict[str, str] | None = None, **params: int) -> Chain:
    """A chain whose block 1 registers the voters' keys, each endorsed by its home node (by role in
    `homes`; n1 otherwise)."""
    chain = Chain(NAMES, _params(**{"epoch_slots": 8, **params}))
    home = {role: KEYS[(homes or {}).get(role, "n1")] for role in voters}
    chain.add(1, [chain.tx("key", _key_payload(keys, role, home[role]), keys) for role, keys in voters.items()])
    return chain


def test_votes_change_the_election_at_the_next_epoch(voters):
    """Hospitals n2 (by its doctor) and n3 (by its admin) each give one hospital's vote, FULL; n1's
    patient gives nothing. A vote counts from the next epoch's election, through validate_chain."""
    chain = _with_voters(voters, homes={"doctor": "n2", "admin": "n3"})
    assert chain.state.elected == ["n1", "n2", "n3", "n4"]
    votes = [
        chain.tx("vote", {"nodes": ["n5"]}, voters["patient"]),  # a patient: no stake
        chain.tx("vote", {"nodes": ["n5", "n1"]}, voters["doctor"]),  # n2's whole vote: 500 each
        chain.tx("vote", {"nodes": ["n4"]}, voters["admin"]),  # n3's whole vote: 1000 to n4
    ]
    chain.add(2, votes)
    state = chain.state
    assert state.stakes == {voters["patient"].key_id: 0, voters["doctor"].key_id: 3, voters["admin"].key_id: 10}
    assert state.homes == {voters["patient"].key_id: "n1", voters["doctor"].key_id: "n2", voters["admin"].key_id: "n3"}
    assert [state.vote_weight(n) for n in NAMES] == [500, 0, 0, FULL, 500]
    assert [state.score(n) for n in NAMES] == [1500, 1000, 1000, 2000, 1500]
    assert state.ranking() == ["n4", "n1", "n5", "n2", "n3"]

    chain.fill(7)  # the rest of epoch 0: the old delegates
    assert chain.state.elected == ["n1", "n2", "n3", "n4"]
    assert "n5" not in chain.producers()

    chain.fill(8)  # the first slot of epoch 1
    assert chain.state.epoch == 1
    assert chain.state.elected == ["n4", "n1", "n5", "n2"]
    report = chain.report_with(chain.block(9, producer="n3"))
    assert (report.height, report.check) == (len(chain.blocks), "producer schedule")
    assert report.detail == f"slot 9 belongs to {chain.scheduled(9)}, not n3"
    chain.fill(15)
    assert set(chain.producers()[-8:]) == {"n1", "n2", "n4", "n5"}
    assert validate_chain(chain.blocks).valid


def test_a_new_vote_replaces_the_old(voters):
    """The admin's hospital (n1) moves its whole vote, FULL, from n4 to n3 and n5: nothing stays on n4."""
    chain = _with_voters(voters)
    chain.add(2, [chain.tx("vote", {"nodes": ["n4"]}, voters["admin"])])
    assert chain.state.vote_weight("n4") == FULL
    chain.add(3, [chain.tx("vote", {"nodes": ["n3", "n5"]}, voters["admin"])])
    assert [chain.state.vote_weight(n) for n in NAMES] == [0, 0, 500, 0, 500]
    chain.fill(8)
    assert chain.state.elected == ["n3", "n5", "n1", "n2"]
    assert validate_chain(chain.blocks).valid


# Voting power, on the state alone: `apply_tx` takes the registry's word for roles and homes (the
# registry checked the endorsements and signatures), so many accounts cost no RSA keys here.


@dataclasses.dataclass(frozen=True)
class _Account:
    """A voter known by its key id only: consensus never checks a vote's signature itself."""

    key_id: str

    def sign(self, message: bytes) -> bytes:
        return bytes(64)


def _electorate(accounts: dict[str, tuple[str, str | None]]) -> KeyRegistry:
    """A registry of accounts by key id -> (role, home node or None for no endorsement)."""
    registry = KeyRegistry()
    for key_id, (role, home) in accounts.items():
        registry.roles[key_id] = role
        if home is not None:
            registry.homes[key_id] = home
    return registry


def _five() -> ConsensusState:
    return ConsensusState.from_genesis(_params(epoch_slots=8), {n: KEYS[n].public_raw for n in NAMES}, "00" * 32)


def _cast(state: ConsensusState, registry: KeyRegistry, key_id: str, *nodes: str) -> None:
    state.apply_tx(sign_transaction("vote", {"nodes": list(nodes)}, _Account(key_id), T0), registry)


def test_a_hundred_patient_votes_weigh_nothing_and_one_admin_vote_does():
    patients = {f"patient-{i}": ("patient", NAMES[i % 5]) for i in range(100)}
    registry = _electorate({**patients, "admin-n2": ("admin", "n2")})
    state = _five()
    for key_id in patients:
        _cast(state, registry, key_id, "n5")
    assert [state.vote_weight(n) for n in NAMES] == [0, 0, 0, 0, 0]
    assert state.ranking() == ["n1", "n2", "n3", "n4", "n5"]
    assert len(state.votes) == 100  # recorded (each patient sees their vote), but without stake

    _cast(state, registry, "admin-n2", "n5")
    assert [state.vote_weight(n) for n in NAMES] == [0, 0, 0, 0, FULL]
    assert state.ranking()[0] == "n5"
    state.advance(8)  # epoch 1: one hospital's admin got n5 elected, a hundred patients did not
    assert state.elected == ["n5", "n1", "n2", "n3"]


def test_a_hospital_minting_admins_cannot_outweigh_another_hospitals_single_admin():
    minted = {f"n1-admin-{i}": ("admin", "n1") for i in range(50)}
    minted |= {f"n1-doctor-{i}": ("doctor", "n1") for i in range(50)}
    registry = _electorate({**minted, "n2-admin": ("admin", "n2")})
    state = _five()
    _cast(state, registry, "n2-admin", "n4")
    _cast(state, registry, "n1-admin-0", "n5")
    assert (state.vote_weight("n5"), state.vote_weight("n4")) == (FULL, FULL)

    for key_id in minted:
        _cast(state, registry, key_id, "n5")
    assert (state.vote_weight("n5"), state.vote_weight("n4")) == (FULL, FULL)  # a hundred accounts: no more
    assert state.ranking()[:2] == ["n4", "n5"]  # a tie, broken by node id: n1 gained nothing by minting


def test_one_hospitals_vote_is_split_over_its_accounts_candidates_by_stake():
    """n1's admin (stake 10) names n4, its doctor (stake 3) n4 and n5: n1's FULL is split 11.5 : 1.5;
    n2's doctor gives n2's whole vote to n3. No hospital gives more than FULL in all."""
    registry = _electorate({"admin": ("admin", "n1"), "doctor": ("doctor", "n1"), "other": ("doctor", "n2")})
    state = _five()
    _cast(state, registry, "admin", "n4")
    _cast(state, registry, "doctor", "n4", "n5")
    _cast(state, registry, "other", "n3")
    assert [state.vote_weight(n) for n in NAMES] == [0, 0, FULL, FULL * 23 // 26, FULL * 3 // 26]
    assert state.vote_weight("n4") + state.vote_weight("n5") <= FULL


@pytest.mark.parametrize(
    ("role", "home"),
    [("admin", None), ("doctor", None), ("admin", "node-9")],
    ids=["admin-without-home", "doctor-without-home", "admin-of-a-non-member"],
)
def test_a_vote_without_a_members_endorsement_counts_nothing(role, home):
    registry = _electorate({"voter": (role, home), "witness": ("doctor", "n2")})
    state = _five()
    _cast(state, registry, "voter", "n5")
    assert state.votes == {"voter": ("n5",)}
    assert (state.stakes, state.homes) == ({"voter": 0}, {})
    assert [state.vote_weight(n) for n in NAMES] == [0, 0, 0, 0, 0]
    _cast(state, registry, "witness", "n5")  # the same vote from an endorsed account does count
    assert state.vote_weight("n5") == FULL


def test_a_new_vote_replaces_the_old_within_the_hospitals_pool():
    """Re-voting moves the account's share; it is never counted twice, and a copy taken before is
    left alone."""
    registry = _electorate({"a": ("admin", "n1"), "b": ("admin", "n1")})
    state = _five()
    _cast(state, registry, "a", "n4")
    _cast(state, registry, "b", "n5")
    assert (state.vote_weight("n4"), state.vote_weight("n5")) == (500, 500)
    before = state.copy()
    _cast(state, registry, "a", "n5")
    assert (state.vote_weight("n4"), state.vote_weight("n5")) == (0, FULL)
    assert state.votes == {"a": ("n5",), "b": ("n5",)}
    assert (before.vote_weight("n4"), before.vote_weight("n5")) == (500, 500)


@pytest.mark.parametrize(
    ("nodes", "signer", "detail"),
    [
        (["n1", "node-9"], "patient", "a vote names at most 4 known nodes"),
        (["node-9"], "admin", "a vote names at most 4 known nodes"),
        (list(NAMES), "doctor", "a vote names at most 4 known nodes"),
        (["n1"], "node", "transaction 0: only patient or doctor or admin keys sign vote transactions"),
        (["n1"], "outsider", "transaction 0: only patient or doctor or admin keys sign vote transactions"),
        (["N1"], "patient", "transaction 0: bad node id in vote"),
    ],
    ids=["unknown-node", "only-unknown", "more-than-k", "node-key", "unregistered-key", "bad-id"],
)
def test_invalid_vote(voters, node_key, nodes, signer, detail):
    chain = _with_voters(voters)
    key = {"node": KEYS["n2"], "outsider": node_key}.get(signer) or voters[signer]
    report = chain.report_with(chain.block(2, [chain.tx("vote", {"nodes": nodes}, key)]))
    assert (report.valid, report.height, report.check, report.detail) == (False, 2, "transaction", detail)


# Equivocation


@pytest.mark.parametrize("signer", ["patient", "node"])
def test_evidence_removes_the_equivocating_node(voters, signer):
    chain = _with_voters(voters, epoch_slots=40)
    chain.fill(5)
    victim = "n2"
    witness = voters["patient"] if signer == "patient" else KEYS["n3"]
    a, b = _header(victim, 3, "aa" * 16), _header(victim, 3, "bb" * 16, offset=SLOT_MS - 1)
    assert a.hash != b.hash
    chain.add(6, [chain.tx("evidence", _evidence(a, b), witness)])
    state = chain.state
    assert state.removals == [Removal(6, victim, "signed two blocks for one slot")]
    assert state.reliability[victim] == FULL // 4
    assert state.banned_until[victim] == 2
    assert victim not in state.active() and victim not in state.order
    assert "n5" in state.order
    for slot in range(7, 40):
        assert chain.scheduled(slot) != victim
        chain.add(slot)
    assert victim not in chain.producers()[7:]
    chain.fill(79)
    assert victim not in chain.state.elected  # banned in epoch 1
    chain.fill(80)  # epoch 2: electable again, but at a quarter of its reliability it ranks last
    assert chain.state.ranking()[-1] == victim
    assert chain.state.score(victim) == FULL // 4
    assert chain.state.elected == ["n1", "n3", "n4", "n5"]
    assert validate_chain(chain.blocks).valid


def test_evidence_against_the_blocks_own_producer(voters):
    chain = _with_voters(voters, epoch_slots=40)
    producer = chain.scheduled(2)
    evidence = chain.tx(
        "evidence", _evidence(_header(producer, 1, "aa" * 16), _header(producer, 1, "bb" * 16)), KEYS[producer]
    )
    chain.add(2, [evidence])
    assert chain.state.removals == [Removal(2, producer, "signed two blocks for one slot")]
    assert validate_chain(chain.blocks).valid


def test_invalid_evidence_twice_in_one_epoch(voters):
    """The same equivocation is judged once: a block carrying it again is invalid."""
    chain = _with_voters(voters, epoch_slots=40)
    pair = _evidence(_header("n1", 1, "aa" * 16), _header("n1", 1, "bb" * 16))
    chain.add(2, [chain.tx("evidence", pair, voters["patient"])])
    again = chain.block(3, [chain.tx("evidence", pair, voters["doctor"])])
    report = chain.report_with(again)
    assert (report.valid, report.height, report.check) == (False, 3, "transaction")
    assert "n1's equivocation in slot 1 was already punished" in report.detail
    assert len(chain.state.removals) == 1
    assert chain.state.reliability["n1"] == FULL // 4


def test_invalid_evidence_replayed_in_a_later_epoch(voters):
    chain = _with_voters(voters, epoch_slots=8)
    pair = _evidence(_header("n1", 1, "aa" * 16), _header("n1", 1, "bb" * 16))
    chain.add(2, [chain.tx("evidence", pair, voters["patient"])])
    assert chain.state.reliability["n1"] == FULL // 4
    chain.fill(16)  # epoch 2: n1's ban is over
    replay = chain.block(17, [chain.tx("evidence", pair, voters["patient"])])
    report = chain.report_with(replay)
    assert (report.valid, report.check) == (False, "transaction")
    assert "already punished" in report.detail
    assert len(chain.state.removals) == 1


def _forged(producer: str, slot: int, nonce: str, by: str) -> BlockHeader:
    return _header(producer, slot, nonce, signer=KEYS[by])


def _resigned_with_bad_signature(producer: str, slot: int) -> bytes:
    header = _header(producer, slot, "cc" * 16)
    return block_module._build(header.unsigned(), bytes(64)).encoded


INVALID_EVIDENCE = [
    (
        "same-header-twice",
        lambda: _evidence(_header("n1", 1, "aa" * 16), _header("n1", 1, "aa" * 16)),
        "evidence needs two different headers from one producer",
    ),
    (
        "different-producers",
        lambda: _evidence(_header("n1", 1, "aa" * 16), _header("n2", 1, "bb" * 16)),
        "evidence needs two different headers from one producer",
    ),
    (
        "different-slots",
        lambda: _evidence(_header("n1", 1, "aa" * 16), _header("n1", 2, "bb" * 16)),
        "evidence headers are for different slots",
    ),
    (
        "adjacent-slots",
        lambda: _evidence(_header("n1", 1, "aa" * 16, offset=SLOT_MS - 1), _header("n1", 2, "bb" * 16)),
        "evidence headers are for different slots",
    ),
    (
        "second-forged-by-another-node",
        lambda: _evidence(_header("n1", 1, "aa" * 16), _forged("n1", 1, "bb" * 16, by="n2")),
        "evidence headers are not both signed by the producer",
    ),
    (
        "both-forged",
        lambda: _evidence(_forged("n1", 1, "aa" * 16, by="n3"), _forged("n1", 1, "bb" * 16, by="n3")),
        "evidence headers are not both signed by the producer",
    ),
    (
        "zeroed-signature",
        lambda: _evidence(_header("n1", 1, "aa" * 16), _resigned_with_bad_signature("n1", 1)),
        "evidence headers are not both signed by the producer",
    ),
    (
        "unknown-producer",
        lambda: _evidence(_header("node-9", 1, "aa" * 16), _header("node-9", 1, "bb" * 16)),
        "evidence names an unknown producer",
    ),
    (
        "not-a-header",
        lambda: _evidence(b"{}", _header("n1", 1, "bb" * 16)),
        "evidence headers: header must have exactly the fields height, nonce, prev, producer, root, sig, ts, v",
    ),
    (
        "not-json",
        lambda: _evidence(_header("n1", 1, "aa" * 16), b"\xff"),
        "evidence headers: not valid JSON",
    ),
]


@pytest.mark.parametrize(("make", "detail"), [c[1:] for c in INVALID_EVIDENCE], ids=[c[0] for c in INVALID_EVIDENCE])
def test_invalid_evidence(voters, make, detail):
    chain = _with_voters(voters, epoch_slots=40)
    report = chain.report_with(chain.block(2, [chain.tx("evidence", make(), voters["patient"])]))
    assert (report.valid, report.height, report.check, report.detail) == (False, 2, "transaction", detail)
    assert chain.state.removals == []


# Finality


def _reference_final(producers: Sequence[str], delegates: Sequence[frozenset[str]], quorum: int) -> int:
    """The finality rule written out plainly: block f+1 is final once block f is and `quorum` of the
    delegates in office right after block f have produced at height f+1 or above."""
    final = 0
    while final + 1 < len(producers) and len(delegates[final] & set(producers[final + 1 :])) >= quorum:
        final += 1
    return final


def _delegates_by_height(chain: Chain) -> list[frozenset[str]]:
    """The delegates in office right after each block of `chain`, replayed from genesis."""
    validator, after = ChainValidator(), []
    for stored in chain.blocks:
        validator.append(stored)
        assert validator.consensus is not None
        after.append(frozenset(validator.consensus.order))
    return after


def test_final_height_of_a_built_chain(four):
    producers = four.producers()
    final = four.state.final
    assert len(set(producers[final:])) >= 3 > len(set(producers[final + 1 :]))
    assert final == len(producers) - 3  # the chain ends with a full round: its last three are distinct
    assert four.state.committee == frozenset(NAMES[:4])


def test_with_one_delegate_set_a_block_is_final_once_quorum_delegates_built_on_it():
    """K = N = 5 and nobody ever dropped: the rule is the plain one, `quorum` (4) distinct producers
    at the block's height or above, the block's own producer included. Checked after every block
    of chains with random gaps against a brute-force count."""
    rng = random.Random(7)
    for _ in range(12):
        chain = Chain(NAMES, _params(delegates=5, epoch_slots=1000, miss_limit=1000))
        silent = set(rng.sample(NAMES, rng.randrange(0, 3)))
        for slot in range(1, 36):
            if slot % 12 == 0:
                silent = set(rng.sample(NAMES, rng.randrange(0, 3)))
            if chain.scheduled(slot) in silent or rng.random() < 0.2:
                continue
            before = chain.state.final
            chain.add(slot)
            producers = chain.producers()
            final = [h for h in range(len(producers)) if len(set(producers[h:])) >= 4]
            assert chain.state.final == (max(final) if final else 0)
            assert chain.state.final >= before


def test_with_one_delegate_every_block_is_final_at_once():
    chain = Chain(NAMES[:1], _params(delegates=1, epoch_slots=10))
    for slot in (1, 2, 7, 30):
        chain.add(slot)
        assert chain.state.final == chain.tip.height


def test_the_final_height_follows_the_rule_through_drops_and_replacements():
    """Seven hospitals, K = 4, miss_limit 1, hospitals falling silent and coming back at random: the
    final height the state keeps block by block is the rule's, recomputed from scratch."""
    rng = random.Random(11)
    names = NAMES + MORE
    for _ in range(6):
        chain = Chain(names, _params(epoch_slots=24, miss_limit=1))
        finals = []
        for slot in range(1, 80):
            if slot % 10 == 1:
                silent = set(rng.sample(names, rng.randrange(0, 4)))
            if chain.scheduled(slot) not in silent:
                chain.add(slot)
                finals.append(chain.state.final)
        assert chain.state.removals  # the delegates did change
        assert finals == sorted(finals)  # never down
        assert chain.state.final == _reference_final(chain.producers(), _delegates_by_height(chain), 3)


def test_a_split_consortium_finalises_nothing_on_either_side_until_it_heals():
    """Seven hospitals, K = 4 (quorum 3), split {n1, n2, n5} | {n3, n4, n6, n7}: two delegates on each
    side. Each side drops an absent delegate and fills its place from its own hospitals, so each
    branch soon has three distinct producers on it, which a count of producers alone took for
    final: two final chains. Replacements count only once the block that made them is final under
    the delegates before, so neither branch is final above the split. Once it heals, the branch the
    nodes keep is final again."""
    chain = Chain(NAMES + MORE, _params(epoch_slots=400, miss_limit=1))
    chain.fill(12)
    fork = chain.tip.height
    assert chain.state.final >= fork - 3
    assert chain.state.committee == frozenset(NAMES[:4])
    left, right = chain, chain.fork()
    left.fill(60, skip=["n3", "n4", "n6", "n7"])
    right.fill(60, skip=["n1", "n2", "n5"])
    for side in (left, right):
        above = side.producers()[fork + 1 :]
        assert len(set(above)) >= 3  # enough distinct producers for the old count
        assert set(above) - set(NAMES[:4])  # one of them a replacement
        assert side.state.final <= fork
        assert side.state.committee == frozenset(NAMES[:4])
    assert left.producers()[fork + 1 :] != right.producers()[fork + 1 :]
    # Each side dropped one absent delegate of the committee only (and, on the right, the absent n5 that
    # replaced it): the other stays in office, so that a quorum of the committee is there to finalise
    # as soon as the network heals.
    assert [r.node for r in left.state.removals] == ["n3"] and "n4" in left.state.active()
    assert [r.node for r in right.state.removals] == ["n1", "n5"] and "n2" in right.state.active()

    left.fill(80)  # healed: everyone in office on the left branch produces again
    assert left.state.final >= left.tip.height - 3
    assert left.state.committee == frozenset({"n1", "n2", "n4", "n5"})  # the replacement, once final
    assert left.state.final == _reference_final(left.producers(), _delegates_by_height(left), 3)
    assert validate_chain(left.blocks).valid and validate_chain(right.blocks).valid


def test_missed_slots_never_drop_the_committee_below_quorum():
    """K = N = 4: two delegates fall silent. The first is dropped; dropping the second would leave
    two of the committee, below the quorum of 3, and ban it for two epochs: it stays in office, and
    finality resumes the moment it produces again."""
    chain = Chain(NAMES[:4], _params(epoch_slots=400, miss_limit=1))
    chain.fill(8)
    chain.fill(40, skip=["n3", "n4"])
    [dropped] = [r.node for r in chain.state.removals]
    [kept] = {"n3", "n4"} - {dropped}
    assert kept in chain.state.active() and dropped not in chain.state.active()
    stalled = chain.state.final
    assert stalled < 10  # two of four: nothing above the silence is final
    chain.fill(50, skip=[dropped])
    assert chain.state.final >= chain.tip.height - 3 > stalled
    assert chain.state.committee == frozenset(NAMES[:4]) - {dropped}
    assert len(chain.state.removals) == 1


def test_an_election_keeps_a_quorum_of_the_committee(voters):
    """Two hospitals vote for n5 and n6: the top four would replace n3 and n4 at once, and then the
    first block of the epoch could never be final (two of the committee left to build on it).
    The election keeps the best three of the committee and lets one newcomer in per epoch."""
    chain = Chain(NAMES + MORE[:1], _params(epoch_slots=8))
    homes = {"doctor": KEYS["n1"], "admin": KEYS["n2"]}
    chain.add(
        1, [chain.tx("key", _key_payload(voters[role], role, home), voters[role]) for role, home in homes.items()]
    )
    chain.add(2, [chain.tx("vote", {"nodes": ["n5", "n6"]}, voters[role]) for role in homes])
    assert chain.state.ranking() == ["n5", "n6", "n1", "n2", "n3", "n4"]
    chain.fill(8)
    assert chain.state.elected == ["n5", "n1", "n2", "n3"]
    chain.fill(16)
    assert chain.state.committee == frozenset({"n1", "n2", "n3", "n5"})
    assert chain.state.elected == ["n5", "n6", "n1", "n2"]
    chain.fill(24)
    assert chain.state.final >= chain.tip.height - 3
    assert validate_chain(chain.blocks).valid


# Recovery


def test_a_removed_delegate_regains_reliability_per_full_epoch_served():
    chain = Chain(NAMES[:4], _params(epoch_slots=8, miss_limit=1))
    victim = chain.scheduled(1)
    chain.add(2)  # slot 1 missed: removed in epoch 0
    assert chain.state.removals == [Removal(1, victim, "missed 1 slots in a row")]
    assert chain.state.reliability[victim] == 500

    seen = {}
    for epoch in range(1, 6):
        chain.fill(8 * epoch)  # the first slot of `epoch`
        assert chain.state.epoch == epoch
        seen[epoch] = (victim in chain.state.elected, chain.state.reliability[victim])
        chain.fill(8 * epoch + 7)
    assert seen == {
        1: (False, 500),  # banned: no recovery for the epoch it sat out
        2: (True, 500),  # elected again, nothing served yet
        3: (True, 600),  # served epoch 2 in full
        4: (True, 700),
        5: (True, 800),
    }
    assert all(chain.state.reliability[n] == FULL for n in NAMES[:4] if n != victim)  # capped at 1000
    assert chain.state.removals == [Removal(1, victim, "missed 1 slots in a row")]
    assert validate_chain(chain.blocks).valid


def test_recovery_is_capped_at_full_reliability():
    state = ConsensusState.from_genesis(
        _params(delegates=2, epoch_slots=2), {"a": bytes(32), "b": bytes(32)}, "00" * 32
    )
    state.reliability["a"] = 950
    state.advance(2)  # epoch 1
    assert state.reliability == {"a": FULL, "b": FULL}


def test_proven_fault_is_punished_even_after_a_drop_for_misses() -> None:
    """A delegate already dropped for missed slots, then proven to have equivocated, is still
    punished for the fault (once)."""
    from core.consensus import ConsensusState, Params
    from core.crypto import NodeKey
    from core.encoding import b64e
    from core.ledger import KeyRegistry, make_block, sign_transaction

    keys = {n: NodeKey.generate(n) for n in ("n1", "n2", "n3", "n4")}
    state = ConsensusState.from_genesis(
        Params(4, 1000, 30, 2, 0), {n: k.public_raw for n, k in keys.items()}, "00" * 32
    )
    slot = 1
    while not any(r.node == "n1" for r in state.removals):
        state.advance(slot)
        if state.scheduled(slot) == "n1":
            state._missed(slot)
        slot += 1
    assert state.reliability["n1"] == FULL // 2
    one = make_block(1, "ab" * 32, [], "n1", keys["n1"], 500, nonce="01" * 16)
    two = make_block(1, "cd" * 32, [], "n1", keys["n1"], 500, nonce="02" * 16)
    evidence = sign_transaction(
        "evidence", {"a": b64e(one.header.encoded), "b": b64e(two.header.encoded)}, keys["n2"], 1
    )
    state.apply_tx(evidence, KeyRegistry())
    assert [r.reason for r in state.removals if r.node == "n1"][-1] == "signed two blocks for one slot"
    assert state.reliability["n1"] == FULL // 2 // 4
