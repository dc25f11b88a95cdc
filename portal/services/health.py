"""A node's health: which of its parts run, and whether its chain is shorter than what is final elsewhere.

Liveness of a background part (the block producer, the archiver) is its leadership
(services/locks.py): the part leads while it runs, and only the leader runs. On SQLite that is
an exclusive `flock` on `<part>.lock` in the instance folder; on PostgreSQL, where a node's
servers may run on several hosts, a session-level advisory lock held by the leader's own
connection. Either is dropped when the part's thread ends or its process dies (SIGKILL
included); `report` probes it without waiting, and on PostgreSQL names the server that leads.
A leader that hangs keeps its lock, so the producer also writes a heartbeat (services/locks.py):
one older than LEADER_STALE_SECONDS makes the producer `stalled`.

What only the leading producer learns, by asking peers and the archive, it publishes in the
database (`save`, services/node_status.py), where every server of the node reads it; older than
STALE_CHECKS check intervals, it is shown as `stale`. A health check costs two lock probes and
two small queries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from core.archive import parse_name
from core.errors import ArchiveError
from core.ledger import FinalElsewhere, TruncationReport, check_truncation
from portal.extensions import db
from portal.ftp import ArchiveStore, TransportError
from portal.models import LedgerBlock
from portal.services import locks, node_status
from portal.services.network import Peers

log = logging.getLogger(__name__)
CHECKED = "producer.check"  # the node_status row of what the producer last learnt
STALE_CHECKS = 3  # what the producer learnt is stale after this many check intervals
PARTS = ("database", "producer", "archiver", "peers", "chain")
FAILING = ("down", "stalled", "short", "differs")


@contextmanager
def hold(instance: Path, part: str, stop: threading.Event) -> Iterator[locks.Lead | None]:
    """Lead `part` while the block runs: waits while another process or server of this node
    leads it (a second producer follows instead of producing competing blocks), trying every
    LEADER_RETRY_SECONDS. Yields the leadership (`held()` says whether it still is), or None if
    `stop` was set before this process could lead."""
    with locks.lead(instance, part, stop) as leading:
        yield leading


def running(instance: Path, part: str) -> bool:
    """Whether some thread, process or server of this node runs `part` right now (never waits)."""
    return locks.holder(instance, part) is not None


@dataclass
class References:
    """Heights final elsewhere, which peers answered, and what could not be asked (by source)."""

    finals: list[FinalElsewhere] = field(default_factory=list)
    peers: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    checked_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "finals": [{"source": f.source, "height": f.height, "hash": f.hash} for f in self.finals],
            "peers": self.peers,
            "errors": self.errors,
            "checked_at": self.checked_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> References:
        finals = [FinalElsewhere(f["source"], int(f["height"]), f.get("hash")) for f in data.get("finals", [])]
        peers = {str(n): bool(ok) for n, ok in data.get("peers", {}).items()}
        return cls(finals, peers, dict(data.get("errors", {})), float(data.get("checked_at", 0.0)))


def archive_newest(connect: Callable[[], ArchiveStore]) -> FinalElsewhere | None:
    """The newest block file in the archive (by height), or None for an empty archive. Files that
    are not block files are left out, as `archive verify` leaves them. Raises TransportError."""
    newest = None
    with connect() as store:
        for name in store.list():
            try:
                height, block_hash = parse_name(name)
            except ArchiveError:
                continue
            if newest is None or height > newest.height:
                newest = FinalElsewhere("archive", height, block_hash)
    return newest


def peer_finals(peers: Peers) -> tuple[list[FinalElsewhere], dict[str, bool]]:
    """Every peer's final height (from its /node/v1/status, asked in parallel, each within the
    peers' timeout) and which peers answered."""
    names = list(peers.urls)
    if not names:
        return [], {}
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        answers = list(pool.map(lambda n: peers.get(n, "/node/v1/status"), names))
    finals, reached = [], {}
    for name, answer in zip(names, answers, strict=True):
        final = answer.get("final") if isinstance(answer, dict) else None
        reached[name] = isinstance(final, int) and not isinstance(final, bool)
        if reached[name]:
            finals.append(FinalElsewhere(name, final))  # type: ignore[arg-type]
    return finals, reached


def gather(connect: Callable[[], ArchiveStore] | None, peers: Peers | None) -> References:
    """Ask the archive (if any) and the peers (if any) what is final; never raises for a source
    that cannot be asked, which is named in `errors` instead."""
    found = References(checked_at=time.time())
    if connect is not None:
        try:
            newest = archive_newest(connect)
        except TransportError as exc:
            found.errors["archive"] = str(exc)
        else:
            if newest is not None:
                found.finals.append(newest)
    if peers is not None:
        finals, found.peers = peer_finals(peers)
        found.finals.extend(finals)
        for name, ok in found.peers.items():
            if not ok:
                found.errors[name] = "no answer"
    return found


def _hash_at(height: int) -> str | None:
    return db.session.scalar(select(LedgerBlock.hash).where(LedgerBlock.height == height))


def _tip_height() -> int:
    height = db.session.scalar(select(func.max(LedgerBlock.height)))
    return -1 if height is None else height


def truncation(finals: list[FinalElsewhere]) -> TruncationReport:
    """This node's stored chain against `finals` (see core.ledger.check_truncation)."""
    return check_truncation(_tip_height(), _hash_at, finals)


def save(found: References) -> None:
    """Publish what the producer learnt for every server's `report`, without the errors' text (the
    caller commits)."""
    node_status.publish(CHECKED, {k: v for k, v in found.to_dict().items() if k != "errors"})


def load() -> tuple[References, float] | None:
    """What the producer last published, and its age in seconds; None before its first check.
    Raises SQLAlchemyError when the database cannot be read."""
    return _known(node_status.read(CHECKED).get(CHECKED))


def _known(found: node_status.Published | None) -> tuple[References, float] | None:
    if found is None:
        return None
    try:
        return References.from_dict(found.value), found.age
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _leader(instance: Path, part: str) -> tuple[dict[str, Any], locks.Process | None] | None:
    """Who runs `part`: None when nobody does; on PostgreSQL {"leader": server name, "here":
    whether this server leads} and the leading process, on SQLite {} and None (one host)."""
    try:
        found = locks.holder(instance, part)
    except SQLAlchemyError:
        db.session.rollback()
        return None
    if found is None:
        return None
    if not found:
        return {}, None
    return {"leader": found["server"], "here": found["here"]}, found["process"]


def _producer(instance: Path, beat: locks.Beat | None) -> dict[str, Any]:
    """The producer part: `down` when nobody leads, `stalled` when the leader's own heartbeat is
    older than LEADER_STALE_SECONDS (it hangs: a follower takes over), else `ok`."""
    leader = _leader(instance, "producer")
    if leader is None:
        return {"state": "down"}
    shown, process = leader
    if process is None and beat is not None and not locks.on_postgresql():
        process = beat.process  # SQLite: one host, and the flock's holder wrote the heartbeat
    bound = float(current_app.config.get("LEADER_STALE_SECONDS", locks.LEADER_STALE_SECONDS))
    state = "stalled" if locks.stalled(process, beat, bound) else "ok"
    if beat is not None and beat.process == process:
        shown = {**shown, "beat_seconds_ago": round(beat.age, 1)}
    return {"state": state, **shown}


def _published() -> tuple[tuple[References, float] | None, locks.Beat | None]:
    """What the producer last published, with its age, and the producer's heartbeat."""
    beat_name = locks.beat_name("producer")
    try:
        rows = node_status.read(CHECKED, beat_name)
    except SQLAlchemyError:
        db.session.rollback()
        return None, None
    beat = locks.beat_of(rows[beat_name].value, rows[beat_name].age) if beat_name in rows else None
    return _known(rows.get(CHECKED)), beat


def report(instance: Path, archiving: bool, consortium: bool) -> dict[str, Any]:
    """Each part's state ("ok", or "down", "stalled", "short", "differs" when it fails; "off",
    "none", "unknown" or "stale" otherwise) and `failing`, the parts that fail. Says nothing secret: no URL, path,
    key or error text, only states and heights (which the public chain shows anyway)."""
    parts: dict[str, dict[str, Any]] = {}
    try:
        tip = _tip_height()
        parts["database"] = {"state": "ok", "height": tip}
    except SQLAlchemyError:
        db.session.rollback()
        tip = None
        parts["database"] = {"state": "down"}
    published, beat = _published()
    parts["producer"] = _producer(instance, beat)
    producing = parts["producer"]["state"] != "down"
    if archiving:
        archiver = _leader(instance, "archiver")
        parts["archiver"] = {"state": "ok", **archiver[0]} if archiver is not None else {"state": "down"}
    else:
        parts["archiver"] = {"state": "off"}
    known, age = published if published is not None else (None, 0.0)
    stale = age > STALE_CHECKS * float(current_app.config.get("CHAIN_CHECK_SECONDS", 30))
    if not consortium:
        parts["peers"] = {"state": "none"}
    elif known is None or not producing:
        parts["peers"] = {"state": "unknown"}
    else:
        reached = sum(known.peers.values())
        state = "stale" if stale else "ok" if reached or not known.peers else "down"
        parts["peers"] = {
            "state": state, "reachable": reached, "of": len(known.peers), "checked_seconds_ago": round(age, 1),
        }  # fmt: skip
    if tip is None or known is None:
        parts["chain"] = {"state": "unknown"}
    else:
        # Heights final elsewhere stay final: an old check still shows a chain short of them.
        found = check_truncation(tip, _hash_at, known.finals)
        state = "short" if found.behind else "differs" if found.differs else "stale" if stale else "ok"
        highest = max((f.height for f in known.finals), default=None)
        parts["chain"] = {
            "state": state, "height": tip, "final_elsewhere": highest, "checked_seconds_ago": round(age, 1),
        }  # fmt: skip
    failing = [name for name in PARTS if parts[name]["state"] in FAILING]
    return {"status": "failing" if failing else "ok", "failing": failing, "parts": parts}
