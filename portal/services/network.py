"""Talking to the other nodes of the consortium: signed HTTP, gossip, catching up, and
reporting a producer that signed two blocks for one slot.

Peers come from the consortium's genesis file. Every request is signed with this
node's key (core/consensus/messages.py); every call has a short timeout and a
failure is logged, never raised into the caller's loop.
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from core.consensus import Params
from core.consensus.messages import sign_request
from core.crypto import NodeKey
from core.encoding import b64d, b64e
from core.errors import CoreError
from core.ledger import BlockHeader, decode_header, decode_transaction, sign_transaction
from portal.extensions import db
from portal.models import LedgerBlock, LedgerTransaction, epoch_ms
from portal.services import ledger

log = logging.getLogger(__name__)
SYNC_BATCH = 100


@dataclass
class Peers:
    """The other nodes of the consortium and how to reach them."""

    node: NodeKey
    urls: dict[str, str]
    timeout: float = 1.0
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=8))

    def _call(self, peer: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        if peer not in self.urls:
            return None
        data = json.dumps(body).encode() if body is not None else b""
        headers = sign_request(self.node, method, path, data, int(time.time() * 1000))
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = self.urls[peer] + path  # http(s) only: checked when the genesis file is loaded
        request = urllib.request.Request(url, data=data or None, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 (peer URLs from genesis)
                return json.loads(answer.read() or b"null")
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
            log.debug("peer %s %s %s failed: %s", peer, method, path, exc)
            return None

    def get(self, peer: str, path: str) -> dict[str, Any] | None:
        return self._call(peer, "GET", path)

    def post(self, peer: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        return self._call(peer, "POST", path, body)

    def broadcast(self, path: str, body: dict[str, Any]) -> None:
        """Send to every peer in the background; slow or dead peers hold no one up."""
        for peer in list(self.urls):  # the sync thread may add admitted nodes meanwhile
            self.pool.submit(self.post, peer, path, body)


def _apply(blocks: list[dict[str, Any]], clock: Callable[[], datetime], max_skew_ms: int) -> tuple[int, str]:
    """Append fetched blocks in order; returns (appended, last outcome). The clock is read per
    block: a block produced while this page was on its way is not 'from the future'."""
    appended, outcome = 0, "none"
    for item in blocks:
        try:
            outcome = ledger.receive_block(
                b64d(item["header"]), [b64d(t) for t in item["transactions"]], clock(), max_skew_ms
            )
        except (CoreError, KeyError, TypeError) as exc:
            log.warning("rejected a synced block: %s", exc)
            return appended, "invalid"
        if outcome == "appended":
            appended += 1
        elif outcome != "known":
            return appended, outcome
    return appended, outcome


def _fork_point(peers: Peers, peer: str, below: int) -> tuple[int | None, bytes | None]:
    """The highest height at or below `below` where our block equals the peer's, and the peer's
    header just above it (None if every block compared was the same)."""
    final = ledger.final_height()
    start = max(final, below - SYNC_BATCH + 1)
    theirs = peers.get(peer, f"/node/v1/blocks?from={start}&limit={below - start + 1}")
    if not theirs:
        return None, None
    ours = {s.height: s.hash for s in ledger.stored_blocks(start, batch=SYNC_BATCH) if s.height <= below}
    point = None
    for offset, item in enumerate(theirs.get("blocks", [])):
        height = start + offset
        try:
            header = b64d(item["header"])
            same = decode_header(header).hash == ours.get(height)
        except (CoreError, KeyError, TypeError):
            return point, None
        if not same:
            return point, header
        point = height
    return point, None


def catch_up(peers: Peers, clock: Callable[[], datetime], max_skew_ms: int) -> int:
    """Fetch and apply blocks from any peer that is ahead, switching to its branch when it is
    longer than ours after the fork point and the fork point is not below our final height
    (the most delegate-signed blocks win; final blocks never change). Peers are asked in a new
    random order each time, so that after a partition heals the nodes behind do not all fetch
    from the same first peer. A branch whose first block and ours were signed by one producer for
    one slot is reported as equivocation. Returns blocks appended."""
    total = 0
    for peer in random.sample(list(peers.urls), len(peers.urls)):
        status = peers.get(peer, "/node/v1/status")
        current = ledger.tip()
        if not status or current is None or not isinstance(status.get("height"), int):
            continue
        while status["height"] > current.height:
            page = peers.get(peer, f"/node/v1/blocks?from={current.height + 1}&limit={SYNC_BATCH}")
            if not page or not page.get("blocks"):
                break
            appended, outcome = _apply(page["blocks"], clock, max_skew_ms)
            total += appended
            if outcome == "fork":
                point, theirs = _fork_point(peers, peer, current.height)
                if theirs is not None:
                    report_equivocation(peers.node, theirs, clock())
                if point is None or point < ledger.final_height():
                    log.warning("peer %s is on a branch that would revert final blocks; ignored", peer)
                    break
                removed = ledger.rollback_above(point)
                log.info("switching to %s's longer branch after height %d (%d blocks undone)", peer, point, removed)
            elif outcome in ("invalid", "ahead") or appended == 0:
                break
            current = ledger.tip()
            if current is None:
                break
    return total


def report_equivocation(node: NodeKey, header: bytes, now: datetime) -> str | None:
    """When `header` and our block of the same slot are two different headers signed by one
    producer, queue the pair as `evidence` signed with this node's key (the sync loop gossips it
    with this node's own transactions); once it is in a block, every node drops the producer.
    Returns the evidence's hash; None when there is no equivocation (no block of ours in that
    slot, another producer, the same block), the producer's signature does not hold, or evidence
    of it is already pending or was judged."""
    try:
        theirs = decode_header(header)
    except CoreError:
        return None
    params = ledger.consensus_state().params
    slot = params.slot_of(theirs.timestamp)
    ours = _our_block_in_slot(slot, theirs.height, params)
    if ours is None or ours.producer != theirs.producer or ours.hash == theirs.hash:
        return None
    if _evidence_pending(theirs.producer, slot, params):
        return None
    evidence = sign_transaction("evidence", {"a": b64e(ours.encoded), "b": b64e(header)}, node, epoch_ms(now))
    try:
        ledger.accept_from_peer(evidence.encoded, now)
    except CoreError as exc:
        log.info("two headers of %s for slot %d prove nothing new: %s", theirs.producer, slot, exc)
        return None
    log.warning("evidence queued: %s signed two blocks for slot %d (%s)", theirs.producer, slot, evidence.hash[:16])
    return evidence.hash


def _our_block_in_slot(slot: int, near: int, params: Params) -> BlockHeader | None:
    """The header of our block in `slot`, if we have one. Slots rise with height along a chain,
    so this is a binary search, starting at `near` (an equivocator's two blocks usually share a
    height)."""
    current = ledger.tip()
    if current is None:
        return None
    low, high = 1, current.height
    probe = min(max(near, low), high)
    while low <= high:
        row = db.session.get(LedgerBlock, probe)
        if row is None:  # removed meanwhile by a branch switch
            return None
        header = decode_header(row.header)
        found = params.slot_of(header.timestamp)
        if found == slot:
            return header
        if found < slot:
            low = probe + 1
        else:
            high = probe - 1
        probe = (low + high) // 2
    return None


def _evidence_pending(producer: str, slot: int, params: Params) -> bool:
    """Whether an equivocation of `producer` in `slot` is already reported in the pool (by us or
    by a peer): one report is enough."""
    query = select(LedgerTransaction.encoded).where(
        LedgerTransaction.status == "pending", LedgerTransaction.kind == "evidence"
    )
    for encoded in db.session.scalars(query):
        try:
            payload = decode_transaction(encoded).payload
            first = decode_header(b64d(payload["a"])) if "a" in payload else None
        except (CoreError, KeyError, TypeError):
            continue
        if first is not None and first.producer == producer and params.slot_of(first.timestamp) == slot:
            return True
    return False


def announce_block(peers: Peers, height: int) -> None:
    [item] = ledger.raw_blocks(height, 1)
    peers.broadcast("/node/v1/blocks", item)


def gossip(peers: Peers, encoded: list[bytes]) -> None:
    if encoded:
        peers.broadcast("/node/v1/transactions", {"transactions": [b64e(e) for e in encoded]})
