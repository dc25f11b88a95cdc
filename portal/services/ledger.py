"""The node's copy of the ledger: queueing transactions, producing blocks, verifying, reading.

Blocks are stored as canonical header bytes plus their transactions' canonical
bytes, so validation always runs over exactly what is stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from core.crypto import NodeKey
from core.encoding import b64e
from core.errors import CoreError, InvalidSignature, InvalidTransaction
from core.ledger import (
    GENESIS_PREV_HASH,
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
from portal.models import LedgerBlock, LedgerTransaction, epoch_ms
from portal.services.errors import NotFound, ValidationFailed

log = logging.getLogger(__name__)
MAX_PAGE = 100


@dataclass
class _Cache:
    """The validator state at the current tip, so producing a block need not replay the chain."""

    key: tuple[str, str] | None = None
    validator: ChainValidator | None = None


_cache = _Cache()
_cache_lock = threading.Lock()


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
    for position, tx in enumerate(txs):
        row = db.session.get(LedgerTransaction, tx.hash) or queue(tx, now)
        row.status, row.block_height, row.position = "committed", height, position


def ensure_genesis(node: NodeKey, chain_id: str, now: datetime) -> bool:
    """Create block 0 naming this node if the chain is empty; True if it was created."""
    if tip() is not None:
        return False
    genesis = sign_transaction(
        "genesis",
        {"chain": chain_id, "nodes": [{"id": node.node_id, "key": b64e(node.public_raw)}]},
        node,
        epoch_ms(now),
    )
    block = make_block(0, GENESIS_PREV_HASH, [genesis], node.node_id, node, epoch_ms(now))
    _store(block.header.encoded, 0, block.header.hash, [genesis], now)
    db.session.commit()
    return True


def _validator_at_tip(current: LedgerBlock) -> ChainValidator:
    key = (str(db.engine.url), current.hash)
    if _cache.key != key or _cache.validator is None:
        validator = ChainValidator(verify_signatures=False)
        for stored in stored_blocks():
            validator.append(stored)
        validator.verify_signatures = True
        _cache.key, _cache.validator = key, validator
    return _cache.validator


def _acceptable(validator: ChainValidator, height: int, limit: int) -> list[Transaction]:
    """Pending transactions that are valid on top of the tip; invalid ones are rejected for good."""
    trial = validator.registry.copy()
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
            trial.apply(tx, height)
        except (CoreError, InvalidSignature) as exc:
            log.warning("rejected transaction %s: %s", row.hash[:16], exc)
            row.status, row.reject_reason = "rejected", str(exc)[:200]
            continue
        chosen.append(tx)
    return chosen


def produce_block(node: NodeKey, now: datetime, max_transactions: int = 500) -> int | None:
    """Seal pending transactions into the next block; returns its height, or None if none waited.

    Must run in one place per node (see `portal.producer`)."""
    with _cache_lock:
        current = tip()
        if current is None:
            raise ValidationFailed("The chain has no genesis block; run `flask medledger node init`.")
        validator = _validator_at_tip(current)
        txs = _acceptable(validator, current.height + 1, max_transactions)
        if not txs:
            db.session.commit()
            return None
        timestamp = max(epoch_ms(now), decode_header(current.header).timestamp)
        block = make_block(current.height + 1, current.hash, txs, node.node_id, node, timestamp)
        try:
            validator.append(
                StoredBlock(block.header.height, block.header.hash, block.header.encoded, [t.encoded for t in txs])
            )
            _store(block.header.encoded, block.header.height, block.header.hash, txs, now)
            db.session.commit()
        except Exception:
            _cache.key = None
            db.session.rollback()
            raise
        _cache.key = (str(db.engine.url), block.header.hash)
        log.info("block %d sealed with %d transactions", block.header.height, len(txs))
        return block.header.height


def pending_count() -> int:
    return db.session.scalar(select(func.count()).where(LedgerTransaction.status == "pending")) or 0


def headers(start: object, limit: object) -> tuple[list[dict[str, Any]], int]:
    """A page of block headers (oldest first) and the current height (-1 for an empty chain)."""
    try:
        start_i = int(start) if start not in (None, "") else 0  # type: ignore[arg-type]
        limit_i = int(limit) if limit not in (None, "") else 20  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationFailed("`from` and `limit` must be whole numbers.") from None
    if start_i < 0 or not 1 <= limit_i <= MAX_PAGE:
        raise ValidationFailed(f"`from` must be 0 or more and `limit` 1-{MAX_PAGE}.")
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
