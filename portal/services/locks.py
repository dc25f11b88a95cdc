"""The node's locks between processes, chosen by the database: a node's servers may run on several
hosts over one PostgreSQL (docs/ledger.md, *One node, several servers*), or on one host over
one SQLite file.

- **Chain writes** (`chain_write`): one writer of the chain per node at a time. On PostgreSQL a
  session-level advisory lock on a dedicated connection, on a key derived from the node id; on
  SQLite an exclusive `flock` on `ledger.lock` in the instance folder.
- **Leadership** (`Lead`): exactly one block producer and one archiver per node, whatever the
  number of servers. The leader holds a session-level advisory lock on its own connection for as
  long as it leads (on SQLite the `flock` on `<part>.lock`); followers try it every
  `LEADER_RETRY_SECONDS`. A leader that dies, SIGKILL included, loses its connection and with it
  the lock, so a follower takes over at its next try. `holder` says who leads, from any server.

PostgreSQL advisory locks are keyed by two 32-bit numbers: `NAMESPACE` (MedLedger's) and a hash
of the node id and the lock's purpose, so nodes that share a database server never collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from flask import current_app
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from portal.extensions import db

log = logging.getLogger(__name__)
NAMESPACE = 0x4D4C4752  # "MLGR": MedLedger's advisory locks
LEADER_RETRY_SECONDS = 1.0  # how often a follower tries to lead (the setting's default)
# A leader whose host vanishes without closing its connection is dropped by PostgreSQL after
# about idle + interval * count seconds (TCP keepalives on the server side of that connection).
KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}
LOCK = text("SELECT pg_advisory_lock(CAST(:ns AS integer), CAST(:key AS integer))")
TRY_LOCK = text("SELECT pg_try_advisory_lock(CAST(:ns AS integer), CAST(:key AS integer))")
UNLOCK = text("SELECT pg_advisory_unlock(CAST(:ns AS integer), CAST(:key AS integer))")
# pg_locks shows a two-key advisory lock as classid, objid and objsubid 2.
STILL_MINE = text(
    "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' "
    "AND classid = CAST(CAST(:ns AS bigint) AS oid) AND objid = CAST(CAST(:key AS bigint) AS oid) "
    "AND objsubid = 2 AND granted"
)
WHO = text(
    "SELECT a.application_name FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.locktype = 'advisory' AND l.classid = CAST(CAST(:ns AS bigint) AS oid) "
    "AND l.objid = CAST(CAST(:key AS bigint) AS oid) AND l.objsubid = 2 AND l.granted"
)


def on_postgresql() -> bool:
    return db.engine.dialect.name == "postgresql"


def lock_key(node_id: str, purpose: str) -> int:
    """The second key of a node's advisory lock for `purpose` (0 .. 2**31 - 1)."""
    digest = hashlib.sha256(f"medledger/{node_id}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def server_name() -> str:
    """This server's name as the health report shows the leader: MEDLEDGER_SERVER, else the host name."""
    return "-".join((os.environ.get("MEDLEDGER_SERVER") or socket.gethostname()).split())


def _node_id() -> str:
    return str(current_app.config["NODE_ID"])


def _pg_connection(name: str | None = None) -> Connection:
    """A connection of its own (not the session's), in autocommit: a session-level advisory lock
    lives as long as it does, across transactions."""
    conn = db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    if name is not None:
        conn.execute(text("SELECT set_config('application_name', :name, false)"), {"name": name[:63]})
        for setting, value in KEEPALIVE.items():
            conn.execute(text("SELECT set_config(:setting, :value, false)"), {"setting": setting, "value": str(value)})
    return conn


def _close(conn: Connection, key: int) -> None:
    """Unlock and close for good (never back to the pool: it may carry a name or be broken)."""
    with contextlib.suppress(SQLAlchemyError):  # broken: PostgreSQL has dropped the lock with it
        conn.execute(UNLOCK, {"ns": NAMESPACE, "key": key})
    with contextlib.suppress(SQLAlchemyError):
        conn.invalidate()
        conn.close()


@contextmanager
def chain_write(instance: Path) -> Iterator[None]:
    """Hold the node's chain-write lock between processes (and hosts) while the block runs; waits."""
    if on_postgresql():
        key = lock_key(_node_id(), "chain")
        conn = db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.execute(LOCK, {"ns": NAMESPACE, "key": key})
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        try:
            yield
        finally:
            try:
                conn.execute(UNLOCK, {"ns": NAMESPACE, "key": key})
                conn.close()  # back to the pool: it holds no lock any more
            except SQLAlchemyError:
                conn.invalidate()  # broken: PostgreSQL has dropped the lock with it
                conn.close()
        return
    path = instance / "ledger.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Lead:
    """Leadership of `part` ("producer", "archiver") for this node: `take` tries once, `held`
    checks that it is still ours (the connection may have dropped), `release` gives it up."""

    def __init__(self, instance: Path, part: str) -> None:
        self.instance, self.part = instance, part
        self.postgresql = on_postgresql()
        self.key = lock_key(_node_id(), part)
        self._conn: Connection | None = None  # holds the lock while leading
        self._spare: Connection | None = None  # tries it while following
        self._file: IO[str] | None = None

    def take(self) -> bool:
        if self.postgresql:
            return self._take_pg()
        self.instance.mkdir(parents=True, exist_ok=True)
        handle = open(self.instance / f"{self.part}.lock", "a")  # noqa: SIM115 (held while leading)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def _take_pg(self) -> bool:
        """One try, over a connection kept from one try to the next (a follower tries every second)."""
        try:
            if self._spare is None:
                self._spare = _pg_connection(f"medledger {self.part} {server_name()} {os.getpid()}")
            got = bool(self._spare.execute(TRY_LOCK, {"ns": NAMESPACE, "key": self.key}).scalar())
        except SQLAlchemyError as exc:
            log.warning("cannot try to lead the %s: %s", self.part, type(exc).__name__)
            if self._spare is not None:
                _close(self._spare, self.key)
                self._spare = None
            return False
        if got:
            self._conn, self._spare = self._spare, None
        return got

    def held(self) -> bool:
        """Whether this process still leads (on PostgreSQL: asks over the leader's own connection)."""
        if self._file is not None:
            return True
        if self._conn is None:
            return False
        try:
            return bool(
                self._conn.execute(
                    STILL_MINE,
                    {"ns": NAMESPACE, "key": self.key},
                ).scalar()
            )
        except SQLAlchemyError:
            return False

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        for conn in (self._conn, self._spare):
            if conn is not None:
                _close(conn, self.key)
        self._conn = self._spare = None


@contextmanager
def lead(instance: Path, part: str, stop: threading.Event, retry: float | None = None) -> Iterator[Lead | None]:
    """Wait until this process leads `part` (trying every `retry` seconds, LEADER_RETRY_SECONDS by
    default), then hold it while the block runs; yields None if `stop` is set first."""
    if retry is None:
        retry = float(current_app.config.get("LEADER_RETRY_SECONDS", LEADER_RETRY_SECONDS))
    leadership = Lead(instance, part)
    try:
        said = False
        while not leadership.take():
            if not said:
                log.info("another server or process of this node leads the %s: following", part)
                said = True
            if stop.wait(retry):
                break
        else:
            if said:
                log.info("this server now leads the %s", part)
            yield leadership
            return
        yield None
    finally:
        leadership.release()


def holder(instance: Path, part: str) -> dict[str, Any] | None:
    """Who leads `part` right now, or None (never waits). On PostgreSQL {"server": name, "here":
    whether it is this server}; on SQLite {} (one host: it is here)."""
    if not on_postgresql():
        return {} if _flocked(instance / f"{part}.lock") else None
    row = db.session.execute(
        WHO,
        {"ns": NAMESPACE, "key": lock_key(_node_id(), part)},
    ).first()
    db.session.commit()
    if row is None:
        return None
    words = (row[0] or "").split(" ")
    server = words[2] if len(words) >= 4 and words[0] == "medledger" else None
    return {"server": server, "here": server == server_name()}


def _flocked(path: Path) -> bool:
    """Whether some thread or process holds the `flock` on `path` right now (never waits)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock, if we got it
    return False
