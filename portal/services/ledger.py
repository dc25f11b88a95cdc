"""The node's copy of the ledger: queueing transactions, producing blocks, verifying, reading.

Blocks are stored as canonical header bytes plus their transactions' canonical
bytes, so validation always runs over exactly what is stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from core.consensus import ConsensusState, Params
from core.crypto import NodeKey
from core.encoding import b64e
from core.errors import CoreError, InvalidBlock, InvalidSignature, InvalidTransaction
from core.ledger import (
    GENESIS_PREV_HASH,
    Block,
    ChainReport,
    StoredBlock,
    Transaction,
    decode_header,
    decode_transaction,
    make_block,
    sign_transaction,
    validate_chain,
)
from core.ledger.validate import ChainValidator
from portal.extensions import db
from portal.models import LedgerBlock, LedgerTransaction, User, epoch_ms, utcnow
from portal.services import federation, locks
from portal.services.errors import NotFound, ValidationFailed
from portal.services.inputs import whole_number

log = logging.getLogger(__name__)
MAX_PAGE = 100


@dataclass
class _Cache:
    """The validator state at some stored block, so that validating the next one need not
    replay the chain: `height` and `hash` say which block it has consumed last."""

    url: str | None = None
    height: int = -1
    hash: str | None = None
    validator: ChainValidator | None = None

    def clear(self) -> None:
        self.url, self.height, self.hash, self.validator = None, -1, None, None

    def at(self, height: int, block_hash: str) -> None:
        self.url, self.height, self.hash = str(db.engine.url), height, block_hash


_cache = _Cache()


class _ChainLock:
    """One writer of the chain per node at a time, across threads, processes *and* servers.

    A node's chain is written by its web workers (blocks and transactions pushed by peers)
    and by its producer process (own blocks, catching up, switching branches). Every
    read-validate-write of the chain runs under this lock: a thread lock inside the process
    and, between processes, `locks.chain_write`: a PostgreSQL advisory lock on a key derived
    from the node id (every server of the node shares the database), or on SQLite an exclusive
    `flock` on `ledger.lock` in the instance folder (all processes of one node share that
    folder). It is re-entrant within a thread."""

    def __init__(self) -> None:
        self._thread = threading.RLock()
        self._local = threading.local()

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread:
            depth = getattr(self._local, "depth", 0)
            if depth == 0:
                held = locks.chain_write(Path(current_app.instance_path))
                held.__enter__()
                self._local.held = held
                try:
                    # End any read transaction begun before the lock: SQLite would keep reading
                    # the snapshot it started with, missing what the previous holder wrote.
                    db.session.commit()
                except BaseException:
                    self._local.held = None
                    held.__exit__(None, None, None)
                    raise
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth -= 1
                if self._local.depth == 0:
                    held, self._local.held = self._local.held, None
                    held.__exit__(None, None, None)


chain_lock = _ChainLock()


def queue(tx: Transaction, now: datetime) -> LedgerTransaction:
    """Add a signed transaction to the pool (in the caller's database transaction)."""
    row = LedgerTransaction(hash=tx.hash, kind=tx.kind, encoded=tx.encoded, received_at=now)
    db.session.add(row)
    return row


def tip() -> LedgerBlock | None:
    return db.session.scalar(select(LedgerBlock).order_by(LedgerBlock.height.desc()).limit(1))


def stored_blocks(start: int = 0, batch: int = 500) -> Iterator[StoredBlock]:
    """Every stored block from `start`, in height order, as raw bytes."""
    height = start
    while True:
        blocks = list(
            db.session.scalars(
                select(LedgerBlock).where(LedgerBlock.height >= height).order_by(LedgerBlock.height).limit(batch)
            )
        )
        if not blocks:
            return
        heights = [b.height for b in blocks]
        txs: dict[int, list[bytes]] = {h: [] for h in heights}
        rows = db.session.execute(
            select(LedgerTransaction.block_height, LedgerTransaction.encoded)
            .where(LedgerTransaction.block_height.in_(heights))
            .order_by(LedgerTransaction.block_height, LedgerTransaction.position)
        )
        for block_height, encoded in rows:
            txs[block_height].append(encoded)
        for b in blocks:
            yield StoredBlock(b.height, b.hash, b.header, txs[b.height])
        height = heights[-1] + 1


def verify_chain() -> ChainReport:
    """Validate the whole stored chain; the report names the first bad height and check."""
    return validate_chain(stored_blocks())


def _store(block_header_bytes: bytes, height: int, block_hash: str, txs: list[Transaction], now: datetime) -> None:
    db.session.add(LedgerBlock(height=height, hash=block_hash, header=block_header_bytes, created_at=now))
    db.session.flush()
    # The pending rows the block commits, read in one statement per 500 rather than one each.
    hashes = [tx.hash for tx in txs]
    pending = {
        row.hash: row
        for n in range(0, len(hashes), 500)
        for row in db.session.scalars(select(LedgerTransaction).where(LedgerTransaction.hash.in_(hashes[n : n + 500])))
    }
    for position, tx in enumerate(txs):
        row = pending.get(tx.hash) or queue(tx, now)
        row.status, row.block_height, row.position = "committed", height, position
    federation.project(txs)


def genesis_block(chain_id: str, founders: list[tuple[str, bytes]], params: Params, signer: NodeKey) -> Block:
    """Block 0 of a consortium: its founding nodes (id, Ed25519 key) and parameters, signed by
    the first founder. Every node of the consortium stores these very bytes."""
    payload = {
        "chain": chain_id,
        "nodes": [{"id": node_id, "key": b64e(key)} for node_id, key in founders],
        "params": params.to_dict(),
    }
    genesis = sign_transaction("genesis", payload, signer, params.genesis_ms)
    return make_block(0, GENESIS_PREV_HASH, [genesis], signer.node_id, signer, params.genesis_ms)


def ensure_genesis(node: NodeKey, chain_id: str, now: datetime, slot_ms: int = 1000) -> bool:
    """Create block 0 of a consortium of one (this node) if the chain is empty; True if created."""
    if tip() is not None:
        return False
    start = epoch_ms(now) // slot_ms * slot_ms
    params = Params(delegates=1, slot_ms=slot_ms, epoch_slots=60, miss_limit=3, genesis_ms=start)
    install(genesis_block(chain_id, [(node.node_id, node.public_raw)], params, node), now)
    return True


def install(block: Block, now: datetime) -> None:
    """Store a block that has already been validated against this chain."""
    _store(block.header.encoded, block.header.height, block.header.hash, list(block.transactions), now)
    db.session.commit()


def _validator_at_tip(current: LedgerBlock) -> ChainValidator:
    """The validator state after `current` (call under `chain_lock`). Blocks another process
    stored since this one last looked are replayed incrementally; only a branch switch below
    the cached block, or another database, replays the chain from genesis. Stored blocks were
    validated before they were stored, so the replay skips their signatures."""
    if _cache.validator is not None and _cache.url == str(db.engine.url) and _cache.hash == current.hash:
        return _cache.validator
    validator, start = ChainValidator(verify_signatures=False), 0
    if _cache.validator is not None and _cache.url == str(db.engine.url) and _cache.height < current.height:
        known = db.session.get(LedgerBlock, _cache.height)
        if known is not None and known.hash == _cache.hash:
            validator, start = _cache.validator, _cache.height + 1
    _cache.clear()
    validator.verify_signatures = False
    try:
        for stored in stored_blocks(start):
            if stored.height > current.height:
                break
            validator.append(stored)
    finally:
        validator.verify_signatures = True
    _cache.validator = validator
    _cache.at(current.height, current.hash)
    return validator


def _acceptable(validator: ChainValidator, height: int, limit: int) -> list[Transaction]:
    """Pending transactions that are valid on top of the tip; invalid ones are rejected for good."""
    trial = validator.registry.copy()
    consensus = validator.consensus.copy() if validator.consensus else None
    chosen: list[Transaction] = []
    rows = db.session.scalars(
        select(LedgerTransaction)
        .where(LedgerTransaction.status == "pending")
        .order_by(LedgerTransaction.received_at, LedgerTransaction.hash)
        .limit(limit)
    )
    for row in rows:
        try:
            tx = decode_transaction(row.encoded)
            if tx.hash != row.hash or tx.hash in validator.seen:
                raise InvalidTransaction("stored under a wrong hash or already on the chain")
            if consensus is not None:
                consensus.check(tx, trial)  # before the registry learns anything from it
            trial.apply(tx, height)
            if consensus is not None:
                consensus.apply_tx(tx, trial)
        except (CoreError, InvalidSignature) as exc:
            log.warning("rejected transaction %s: %s", row.hash[:16], exc)
            row.status, row.reject_reason = "rejected", str(exc)[:200]
            continue
        chosen.append(tx)
    return chosen


def _my_slot_time(validator: ChainValidator, node: NodeKey, now: datetime) -> int | None:
    """Now, if the current slot is after the tip's and is this node's to fill."""
    consensus = validator.consensus
    if consensus is None:
        return None
    timestamp = epoch_ms(now)
    slot = consensus.params.slot_of(timestamp)
    if slot <= consensus.last_slot:
        return None
    trial = consensus.copy()
    trial.advance(slot)
    return timestamp if trial.scheduled(slot) == node.node_id else None


def produce_block(node: NodeKey, now: datetime, max_transactions: int = 500, empty_allowed: bool = False) -> int | None:
    """Seal pending transactions into the next block if the current slot is this node's; returns
    its height, or None when it is not this node's turn or (unless `empty_allowed`) nothing waited.

    Must run in one place per node (see `portal.producer`)."""
    with chain_lock.hold():
        current = tip()
        if current is None:
            raise ValidationFailed("The chain has no genesis block; run `flask medledger node init`.")
        validator = _validator_at_tip(current)
        timestamp = _my_slot_time(validator, node, now)
        if timestamp is None:
            return None
        txs = _acceptable(validator, current.height + 1, max_transactions)
        if not txs and not empty_allowed:
            db.session.commit()
            return None
        block = make_block(current.height + 1, current.hash, txs, node.node_id, node, timestamp)
        try:
            validator.append(
                StoredBlock(block.header.height, block.header.hash, block.header.encoded, [t.encoded for t in txs])
            )
            _store(block.header.encoded, block.header.height, block.header.hash, txs, now)
            db.session.commit()
        except Exception:
            _cache.clear()
            db.session.rollback()
            raise
        _cache.at(block.header.height, block.header.hash)
        log.info("block %d sealed with %d transactions", block.header.height, len(txs))
        return block.header.height


def seal_pending(node: NodeKey, max_transactions: int = 500, wait_seconds: float = 5.0) -> int | None:
    """Seal what is pending now, waiting (up to `wait_seconds`) for a slot of this node's; returns
    the new height, or None when nothing waited or no slot came. For on-demand sealing (CLI,
    admin page, demo); the producer loop calls `produce_block` once per tick instead."""
    deadline = time.monotonic() + wait_seconds
    while pending_count() > 0:
        height = produce_block(node, utcnow(), max_transactions)
        if height is not None or time.monotonic() > deadline:
            return height
        time.sleep(0.02)
    return None


def has_node_info(signer: str, payload: dict[str, Any]) -> bool:
    """Whether a `node_info` with this payload by this node is on the chain or in the pool."""
    for encoded in db.session.scalars(
        select(LedgerTransaction.encoded).where(
            LedgerTransaction.kind == "node_info", LedgerTransaction.status != "rejected"
        )
    ):
        try:
            tx = decode_transaction(encoded)
        except CoreError:
            continue
        if tx.signer == signer and tx.payload == payload:
            return True
    return False


def pending_count() -> int:
    return db.session.scalar(select(func.count()).where(LedgerTransaction.status == "pending")) or 0


def headers(start: object, limit: object) -> tuple[list[dict[str, Any]], int]:
    """A page of block headers (oldest first) and the current height (-1 for an empty chain)."""
    start_i = whole_number(start, "from", default=0)
    limit_i = whole_number(limit, "limit", default=20, low=1, high=MAX_PAGE)
    current = tip()
    rows = list(
        db.session.scalars(
            select(LedgerBlock).where(LedgerBlock.height >= start_i).order_by(LedgerBlock.height).limit(limit_i)
        )
    )
    counts = _tx_counts([row.height for row in rows])
    return [_header_dict(row, counts.get(row.height, 0)) for row in rows], (current.height if current else -1)


def _tx_counts(heights: list[int]) -> dict[int, int]:
    query = (
        select(LedgerTransaction.block_height, func.count())
        .where(LedgerTransaction.block_height.in_(heights))
        .group_by(LedgerTransaction.block_height)
    )
    return {height: count for height, count in db.session.execute(query)}


def _header_dict(row: LedgerBlock, tx_count: int) -> dict[str, Any]:
    try:
        data = decode_header(row.header).to_dict()
    except CoreError:
        return {"height": row.height, "hash": row.hash, "error": "stored header is not decodable"}
    data["tx_count"] = tx_count
    return data


def block(height: int) -> dict[str, Any]:
    """One block: header, hash and transactions (encrypted payloads only)."""
    row = db.session.get(LedgerBlock, height)
    if row is None:
        raise NotFound(f"No block at height {height}.")
    txs = []
    for tx_row in db.session.scalars(
        select(LedgerTransaction).where(LedgerTransaction.block_height == height).order_by(LedgerTransaction.position)
    ):
        try:
            txs.append(decode_transaction(tx_row.encoded).to_dict())
        except CoreError:
            txs.append({"hash": tx_row.hash, "error": "stored transaction is not decodable"})
    return {"hash": row.hash, "header": _header_dict(row, len(txs)), "transactions": txs}


def block_height_of(tx_hash: str) -> int | None:
    return db.session.scalar(select(LedgerTransaction.block_height).where(LedgerTransaction.hash == tx_hash))


# -- replication ------------------------------------------------------------------------------


def consensus_state() -> ConsensusState:
    """The consensus state at the current tip (schedule, delegates, removals)."""
    with chain_lock.hold():
        current = tip()
        if current is None:
            raise ValidationFailed("The chain has no genesis block.")
        state = _validator_at_tip(current).consensus
        if state is None:
            raise ValidationFailed("The chain has no consensus state.")
        return state.copy()


def raw_blocks(start: int, limit: int) -> list[dict[str, Any]]:
    """Blocks from `start` as canonical bytes (base64url), for peers that sync."""
    limit = max(1, min(limit, MAX_PAGE))
    end = start + limit
    return [
        {"header": b64e(s.header), "transactions": [b64e(t) for t in s.transactions]}
        for s in stored_blocks(start, batch=limit)
        if s.height < end
    ][:limit]


def receive_block(header: bytes, transactions: list[bytes], now: datetime, max_skew_ms: int) -> str:
    """A block from a peer: 'appended' when it extends our tip and is valid, 'known' when we have
    it, 'ahead' when blocks are missing before it, 'fork' when it competes with ours. Raises
    InvalidBlock (with height and check) when it is invalid."""
    try:
        decoded = decode_header(header)
    except CoreError as exc:
        raise InvalidBlock(-1, "encoding", str(exc)) from exc
    if decoded.timestamp > epoch_ms(now) + max_skew_ms:
        raise InvalidBlock(decoded.height, "timestamp", "block from the future")
    with chain_lock.hold():
        current = tip()
        if current is None or decoded.height > current.height + 1:
            return "ahead"
        if decoded.height <= current.height:
            stored = db.session.get(LedgerBlock, decoded.height)
            return "known" if stored is not None and stored.hash == decoded.hash else "fork"
        if decoded.prev_hash != current.hash:
            return "fork"
        validator = _validator_at_tip(current)
        try:
            block = validator.append(StoredBlock(decoded.height, decoded.hash, header, transactions))
            install(block, now)
        except Exception:
            _cache.clear()
            db.session.rollback()
            raise
        _cache.at(decoded.height, decoded.hash)
        return "appended"


def final_height() -> int:
    """The highest final height of the chain, as the consensus state at the tip counts it: more
    than two thirds of the delegates in office at the block before have built on it
    (docs/consensus.md, "Finality and forks")."""
    with chain_lock.hold():
        current = tip()
        if current is None:
            raise ValidationFailed("The chain has no genesis block.")
        consensus = _validator_at_tip(current).consensus
        if consensus is None:
            raise ValidationFailed("The chain has no consensus state.")
        return consensus.final


def rollback_above(height: int) -> int:
    """Remove our blocks above `height` (never at or below the final height), putting their
    transactions back in the pool, in one database transaction under the chain lock, so no
    block can be stored in between; returns how many blocks were removed."""
    with chain_lock.hold():
        if height < final_height():
            raise ValidationFailed("Refusing to revert a final block.")
        try:
            db.session.execute(
                update(LedgerTransaction)
                .where(LedgerTransaction.block_height > height)
                .values(status="pending", block_height=None, position=None)
            )
            removed = db.session.execute(delete(LedgerBlock).where(LedgerBlock.height > height)).rowcount
            db.session.commit()
        except Exception:
            db.session.rollback()
            raise
        finally:
            _cache.clear()
        return removed or 0


def accept_from_peer(encoded: bytes, now: datetime) -> bool:
    """A transaction gossiped by a peer: kept as pending if new and valid on our chain (a signer
    whose key registration is itself still pending counts as known). Raises CoreError if invalid."""
    outcome = accept_from_peers([encoded], now)[0]
    if isinstance(outcome, CoreError):
        raise outcome
    return outcome


def accept_from_peers(items: list[bytes], now: datetime) -> list[bool | CoreError]:
    """Transactions gossiped by a peer, as `accept_from_peer` takes one, in one turn of the chain
    lock, one look at the tip and one trial registry for the lot (a later one may be signed by a
    key an earlier one registers): per item, True if kept, False if known, or why it was refused.
    A turn of the lock per transaction made gossip cost more than the writes themselves."""
    outcomes: list[bool | CoreError] = []
    decoded: list[tuple[int, Transaction]] = []
    for item in items:
        try:
            decoded.append((len(outcomes), decode_transaction(item)))
            outcomes.append(False)
        except CoreError as exc:
            outcomes.append(exc)
    if not decoded:
        return outcomes
    with chain_lock.hold():
        current = tip()
        if current is None:
            return [InvalidTransaction("no chain yet") if o is False else o for o in outcomes]
        hashes = [tx.hash for _, tx in decoded]
        stored = set(db.session.scalars(select(LedgerTransaction.hash).where(LedgerTransaction.hash.in_(hashes))))
        validator = _validator_at_tip(current)
        trial = validator.registry.copy()
        height = current.height + 1
        for key_tx in db.session.scalars(
            select(LedgerTransaction.encoded).where(
                LedgerTransaction.status == "pending", LedgerTransaction.kind == "key"
            )
        ):
            try:
                trial.apply(decode_transaction(key_tx), height)
            except CoreError:
                continue
        kept: list[tuple[int, Transaction]] = []
        for n, tx in decoded:
            if tx.hash in stored or tx.hash in validator.seen:
                continue
            try:
                if validator.consensus is not None:
                    validator.consensus.check(tx, trial)
                trial.apply(tx, height)  # checks before it changes anything: a refused one leaves no trace
            except CoreError as exc:
                outcomes[n] = exc
                continue
            queue(tx, now + timedelta(microseconds=len(kept)))  # the producer takes them in this order
            stored.add(tx.hash)
            kept.append((n, tx))
        try:
            db.session.commit()
        except IntegrityError:  # one stored meanwhile by a writer outside the chain lock (the API)
            db.session.rollback()
            if len(kept) > 1:  # keep the others: one at a time
                for n, tx in kept:
                    outcomes[n] = accept_from_peers([tx.encoded], now)[0]
            return outcomes
        for n, _ in kept:
            outcomes[n] = True
    return outcomes


def report_invalid_block(node: NodeKey, header: bytes, transactions: list[bytes], now: datetime) -> str | None:
    """Turn an invalid block a delegate signed into evidence against it, signed by this node and
    queued for the next block; returns the evidence's hash, or None when the block does not
    prove anything against its producer (unsigned, or its body does not match its header)."""
    payload = {"header": b64e(header), "transactions": [b64e(t) for t in transactions]}
    evidence = sign_transaction("evidence", payload, node, epoch_ms(now))
    try:
        accept_from_peer(evidence.encoded, now)
    except CoreError as exc:
        log.info("invalid block not attributable to its producer: %s", exc)
        return None
    log.warning("evidence queued against the producer of an invalid block (%s)", evidence.hash[:16])
    return evidence.hash


def pending_encoded(limit: int = 500) -> list[tuple[str, bytes]]:
    """Pending transactions (hash, bytes), oldest first."""
    rows = db.session.execute(
        select(LedgerTransaction.hash, LedgerTransaction.encoded)
        .where(LedgerTransaction.status == "pending")
        .order_by(LedgerTransaction.received_at)
        .limit(limit)
    )
    return [(h, bytes(e)) for h, e in rows]


def pending_from_here(node: NodeKey, limit: int = 500) -> list[tuple[str, bytes]]:
    """Pending transactions signed by this node or by one of its own accounts: the ones this
    node gossips. Transactions that peers sent are theirs to spread, so each reaches each node
    once rather than once from every node."""
    pending: list[tuple[str, bytes, str]] = []
    for tx_hash, encoded in pending_encoded(limit):
        try:
            pending.append((tx_hash, encoded, decode_transaction(encoded).signer))
        except CoreError:
            continue
    signers = {signer for _, _, signer in pending}
    local = set(db.session.scalars(select(User.key_id).where(User.key_id.in_(signers)))) if signers else set()
    local.add(node.key_id)
    return [(tx_hash, encoded) for tx_hash, encoded, signer in pending if signer in local]


def consensus_status(now: datetime) -> dict[str, Any]:
    """What a node's admin (and anyone) may see of consensus: parameters, this epoch's delegates
    and slot schedule, reliability, removals, and the final height."""
    state = consensus_state()
    params = state.params
    slot = params.slot_of(epoch_ms(now))
    upcoming = state.copy()
    schedule = []
    for future in range(max(slot, state.last_slot + 1), max(slot, state.last_slot + 1) + params.delegates):
        upcoming.advance(future)
        schedule.append({"slot": future, "starts": params.slot_start(future), "node": upcoming.scheduled(future)})
        upcoming.last_slot = future  # look ahead as if each slot were filled
    current = tip()
    return {
        "params": params.to_dict(),
        "epoch": state.epoch,
        "slot": slot,
        "height": current.height if current else -1,
        "final_height": final_height(),
        "delegates": state.active(),
        "candidates": [_candidate(state, n) for n in state.node_keys],
        "schedule": schedule,
        "removals": [{"slot": r.slot, "node": r.node, "reason": r.reason} for r in state.removals[-50:]],
    }


def _candidate(state: ConsensusState, node: str) -> dict[str, Any]:
    return {
        "node": node,
        "score": state.score(node),
        "reliability": state.reliability.get(node, 0),
        "votes": state.vote_weight(node),
        "banned_until_epoch": state.banned_until.get(node),
        "misses": state.misses.get(node, 0),
        "produced": state.produced.get(node, 0),
    }


def store_raw(blocks: list[StoredBlock], now: datetime) -> None:
    """Store already-validated blocks as they are (restoring a ledger from the archive)."""
    with chain_lock.hold():
        for stored in blocks:
            db.session.add(LedgerBlock(height=stored.height, hash=stored.hash, header=stored.header, created_at=now))
            db.session.flush()
            txs = [decode_transaction(data) for data in stored.transactions]
            for position, tx in enumerate(txs):
                db.session.add(
                    LedgerTransaction(
                        hash=tx.hash,
                        kind=tx.kind,
                        encoded=tx.encoded,
                        status="committed",
                        block_height=stored.height,
                        position=position,
                        received_at=now,
                    )
                )
            db.session.flush()
            federation.project(txs)
        db.session.commit()
        _cache.clear()
