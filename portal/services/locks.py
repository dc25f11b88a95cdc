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
- **Heartbeat** (the producer's): the leader writes `producer.beat` in `node_status` over its
  lock connection when it takes the lock (in the same statement) and at each check that it still
  leads. A leader that hangs without dying keeps its connection and so its lock; a follower that
  finds the holder's own heartbeat older than `LEADER_STALE_SECONDS` at two tries in a row ends
  the holder's database connections (`pg_terminate_backend`), which drops its locks and aborts
  its transactions, and leads at its next try. The hung process, if it runs again, finds its lock
  connection gone and steps down.

PostgreSQL advisory locks are keyed by two 32-bit numbers: `NAMESPACE` (MedLedger's) and a hash
of the node id and the lock's purpose, so nodes that share a database server never collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from flask import current_app
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError

from portal.extensions import db
from portal.services import node_status

log = logging.getLogger(__name__)
NAMESPACE = 0x4D4C4752  # "MLGR": MedLedger's advisory locks
LEADER_RETRY_SECONDS = 1.0  # how often a follower tries to lead (the setting's default)
LEADER_STALE_SECONDS = 10.0  # a leader's heartbeat older than this, it is taken over (the setting's default)
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
HELD_BY = (
    "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.locktype = 'advisory' AND l.classid = CAST(CAST(:ns AS bigint) AS oid) "
    "AND l.objid = CAST(CAST(:key AS bigint) AS oid) AND l.objsubid = 2 AND l.granted"
)
WHO = text("SELECT a.application_name " + HELD_BY)
# The heartbeat is written by the database's clock, in the statement that takes the lock (so a
# new leader has one from its first moment) and in the one that checks it is still held.
UPSERT_BEAT = (
    "INSERT INTO node_status (name, value, updated_at) "
    "SELECT :name, CAST(:value AS json), timezone('UTC', clock_timestamp()) WHERE {} "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at RETURNING 1"
)
TRY_LOCK_AND_BEAT = text(UPSERT_BEAT.format("pg_try_advisory_lock(CAST(:ns AS integer), CAST(:key AS integer))"))
BEAT_IF_MINE = text(
    UPSERT_BEAT.format(
        "EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' "
        "AND classid = CAST(CAST(:ns AS bigint) AS oid) AND objid = CAST(CAST(:key AS bigint) AS oid) "
        "AND objsubid = 2 AND granted)"
    )
)
HOLDER_AND_BEAT = text(
    "SELECT h.application_name, s.value, "  # noqa: S608 (constant SQL)
    "EXTRACT(EPOCH FROM timezone('UTC', clock_timestamp()) - s.updated_at), s.updated_at "
    "FROM (" + WHO.text + ") AS h LEFT JOIN node_status s ON s.name = :beat"
)
NAMED = text(
    "SELECT pid, application_name FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name LIKE 'medledger %' AND pid <> pg_backend_pid()"
)
TERMINATE = text("SELECT pg_terminate_backend(:pid)")
_named_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@dataclass(frozen=True)
class Process:
    """A process of one of the node's servers: the server's name and the process id there."""

    server: str
    pid: int


@dataclass(frozen=True)
class Beat:
    """A leader's last heartbeat: which process wrote it, and how many seconds ago."""

    process: Process
    age: float


def beat_of(value: Any, age: float | None) -> Beat | None:
    """The heartbeat in a `node_status` value ({"server": name, "pid": n}), or None if it is not one."""
    if not isinstance(value, dict) or age is None:
        return None
    server, pid = value.get("server"), value.get("pid")
    if not isinstance(server, str) or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    return Beat(Process(server, pid), float(age))


def stalled(holder: Process | None, beat: Beat | None, bound: float) -> bool:
    """Whether the process holding a leader's lock has stopped beating: the last heartbeat is its
    own and older than `bound` seconds. A holder that cannot be named, or a heartbeat written by
    another process (a leader of an older version, or one not yet heard from), is never judged."""
    if holder is None or beat is None or beat.process != holder:
        return False
    return beat.age > bound


def process_of(application_name: str | None) -> Process | None:
    """The process that named a connection `medledger <role> <server> <pid>`, or None."""
    words = (application_name or "").split(" ")
    if len(words) != 4 or words[0] != "medledger" or not words[3].isdigit():
        return None
    return Process(words[2], int(words[3]))


def _app_name(role: str) -> str:
    return f"medledger {role} {server_name()} {os.getpid()}"[:63]


def name_connections() -> None:
    """Name this process's database connections from now on (`medledger pool <server> <pid>`), so
    that a follower that takes over from this process, should it hang while leading, can end all
    of them: its lock connections and any transaction it left open. PostgreSQL only."""
    if not on_postgresql():
        return
    engine = db.engine
    if engine in _named_engines:
        return
    name = _app_name("pool")

    def named(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["application_name"] = name

    event.listen(engine, "do_connect", named)
    _named_engines.add(engine)
    engine.dispose()  # connections opened before are replaced by named ones


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


_chain_lock_engines: dict[str, Engine] = {}
_chain_lock_engines_made = threading.Lock()


def _chain_lock_engine() -> Engine:
    """Connections of their own for the chain lock, outside the requests' pool. Taken from that
    pool, the lock could wait for a connection held by a request that itself waits for the lock:
    with every pooled connection held so, the holder waited out the pool's timeout and every
    chain writer of the process stalled behind it (seen under load as reads of a minute). In a
    process the lock's holders take turns (`ledger.chain_lock`), so two connections are plenty."""
    url = db.engine.url.render_as_string(hide_password=False)
    with _chain_lock_engines_made:
        if url not in _chain_lock_engines:
            _chain_lock_engines[url] = create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True)
        return _chain_lock_engines[url]


@contextmanager
def chain_write(instance: Path) -> Iterator[None]:
    """Hold the node's chain-write lock between processes (and hosts) while the block runs; waits."""
    if on_postgresql():
        key = lock_key(_node_id(), "chain")
        conn = _chain_lock_engine().connect().execution_options(isolation_level="AUTOCOMMIT")
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


def beat_name(part: str) -> str:
    """The `node_status` row of `part`'s heartbeat."""
    return f"{part}.beat"


class Lead:
    """Leadership of `part` ("producer", "archiver") for this node: `take` tries once, `held`
    checks that it is still ours (the connection may have dropped), `release` gives it up. With
    `heartbeat`, taking and each `held` also write the leader's heartbeat, and `unstick` ends a
    holder whose heartbeat has stopped."""

    def __init__(self, instance: Path, part: str, heartbeat: bool = False) -> None:
        self.instance, self.part, self.heartbeat = instance, part, heartbeat
        self.postgresql = on_postgresql()
        self.key = lock_key(_node_id(), part)
        self._conn: Connection | None = None  # holds the lock while leading
        self._spare: Connection | None = None  # tries it while following
        self._file: IO[str] | None = None
        self._suspect: tuple[Process, Any] | None = None  # a holder seen stalled, and its heartbeat's time

    def _params(self) -> dict[str, Any]:
        me = Process(server_name(), os.getpid())
        value = json.dumps({"server": me.server, "pid": me.pid})
        return {"ns": NAMESPACE, "key": self.key, "name": beat_name(self.part), "value": value}

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
        self._beat_sqlite()
        return True

    def _beat_sqlite(self) -> None:
        if not self.heartbeat:
            return
        try:
            node_status.publish(beat_name(self.part), {"server": server_name(), "pid": os.getpid()})
            db.session.commit()
        except SQLAlchemyError as exc:
            db.session.rollback()
            log.warning("cannot write the %s's heartbeat: %s", self.part, type(exc).__name__)

    def _take_pg(self) -> bool:
        """One try, over a connection kept from one try to the next (a follower tries every second)."""
        try:
            if self._spare is None:
                self._spare = _pg_connection(_app_name(self.part))
            if self.heartbeat:
                got = self._spare.execute(TRY_LOCK_AND_BEAT, self._params()).first() is not None
            else:
                got = bool(self._spare.execute(TRY_LOCK, {"ns": NAMESPACE, "key": self.key}).scalar())
        except SQLAlchemyError as exc:
            log.warning("cannot try to lead the %s: %s", self.part, type(exc).__name__)
            if self._spare is not None:
                _close(self._spare, self.key)
                self._spare = None
            return False
        if got:
            self._conn, self._spare, self._suspect = self._spare, None, None
        return got

    def held(self) -> bool:
        """Whether this process still leads (on PostgreSQL: asks over the leader's own connection);
        with `heartbeat`, writes the heartbeat too (on PostgreSQL only if it still leads)."""
        if self._file is not None:
            self._beat_sqlite()
            return True
        if self._conn is None:
            return False
        try:
            if self.heartbeat:
                return self._conn.execute(BEAT_IF_MINE, self._params()).first() is not None
            return bool(self._conn.execute(STILL_MINE, {"ns": NAMESPACE, "key": self.key}).scalar())
        except SQLAlchemyError:
            return False

    def unstick(self, bound: float) -> None:
        """After a failed `take` (PostgreSQL, `heartbeat`): if the holder's own heartbeat is older
        than `bound` seconds, and was already at the previous try (the same heartbeat, not
        renewed), end every database connection of the holder's process, so that the next `take`
        gets the lock. A hung leader keeps its connection, so PostgreSQL alone never frees it."""
        if not (self.postgresql and self.heartbeat) or self._spare is None:
            return
        try:
            row = self._spare.execute(HOLDER_AND_BEAT, {**self._params(), "beat": beat_name(self.part)}).first()
        except SQLAlchemyError as exc:
            log.warning("cannot read the %s's heartbeat: %s", self.part, type(exc).__name__)
            return
        holder = process_of(row[0]) if row is not None else None
        beat = beat_of(row[1], row[2]) if row is not None else None
        me = Process(server_name(), os.getpid())
        if holder is None or beat is None or holder == me or not stalled(holder, beat, bound):
            self._suspect = None
            return
        seen, self._suspect = self._suspect, (holder, row[3])  # type: ignore[index]
        if seen != self._suspect:
            log.warning(
                "the %s's leader (server %s, pid %d) has written no heartbeat for %.1f s (LEADER_STALE_SECONDS %g)",
                self.part, holder.server, holder.pid, beat.age, bound,
            )  # fmt: skip
            return
        ended = self._end(self._spare, holder)
        log.error(
            "the %s's leader (server %s, pid %d) hangs: no heartbeat for %.1f s; ended its %d database "
            "connections so that this server leads",
            self.part, holder.server, holder.pid, beat.age, ended,
        )  # fmt: skip
        self._suspect = None

    def _end(self, conn: Connection, hung: Process) -> int:
        """Terminate the backends of `hung`'s connections (its lock holders and its pool); how many."""
        ended = 0
        try:
            for pid, name in conn.execute(NAMED).all():
                if process_of(name) == hung and conn.execute(TERMINATE, {"pid": pid}).scalar():
                    ended += 1
        except SQLAlchemyError as exc:
            log.warning("cannot end the hung %s leader's connections: %s", self.part, type(exc).__name__)
        return ended

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
def lead(
    instance: Path, part: str, stop: threading.Event, retry: float | None = None, heartbeat: bool = False
) -> Iterator[Lead | None]:
    """Wait until this process leads `part` (trying every `retry` seconds, LEADER_RETRY_SECONDS by
    default), then hold it while the block runs; yields None if `stop` is set first. With
    `heartbeat` (the producer), a holder whose heartbeat is older than LEADER_STALE_SECONDS is
    taken over (`Lead.unstick`)."""
    if retry is None:
        retry = float(current_app.config.get("LEADER_RETRY_SECONDS", LEADER_RETRY_SECONDS))
    bound = float(current_app.config.get("LEADER_STALE_SECONDS", LEADER_STALE_SECONDS))
    leadership = Lead(instance, part, heartbeat)
    try:
        said = False
        while not leadership.take():
            if not said:
                log.info("another server or process of this node leads the %s: following", part)
                said = True
            leadership.unstick(bound)
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
    whether it is this server, "process": the Process or None}; on SQLite {} (one host: it is here)."""
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
    return {"server": server, "here": server == server_name(), "process": process_of(row[0])}


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
