"""The block producer: one per node, whatever the number of web workers, with its helper threads
(the archiver, the chain watcher and, in a consortium, the syncer).

Every server of a node starts one; once ready, each tries to lead (services/locks.py: a
PostgreSQL advisory lock held by its own connection, or `producer.lock` in the instance folder
on SQLite) and only the leader produces, the others try again every LEADER_RETRY_SECONDS. The
leader's death (SIGKILL included) drops its lock, so another server's producer takes over, and
the node's `/healthz` sees it gone the moment it dies. The archiver leads the same way. A leader
that finds it no longer holds its lock (its database connection was lost) exits, and is started
again as a follower. The leader writes a heartbeat where every server reads it (with each check
that it still leads, at least every LEADER_STALE_SECONDS / 4); a leader that hangs without dying
is taken over by a follower once its heartbeat is older than LEADER_STALE_SECONDS, and `/healthz`
says `stalled` meanwhile. A helper thread that dies is restarted; gunicorn.conf.py restarts the process.

Before it says it is ready (`ready`), it checks what it needs and raises StartError with a
message that says what to do: a node that cannot seal blocks must not accept records.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from core.crypto import NodeKey
from core.ledger import FinalElsewhere
from portal import runtime
from portal.extensions import db
from portal.ftp import ArchiveStore
from portal.models import utcnow
from portal.services import archive, escrow, federation, health, ledger, locks, network
from portal.services.network import Peers

log = logging.getLogger(__name__)
ORPHAN_POLL_SECONDS = 0.5
ORPHAN_GRACE_SECONDS = 5.0
CHAIN_CHECK_SECONDS = 30.0  # the default of the setting (portal/config.py)


class StartError(Exception):
    """The producer cannot start; the message says why and what to do."""


def run(app: Flask, stop: threading.Event | None = None, ready: Callable[[], None] | None = None) -> None:
    """Until stopped: in a consortium of one, seal pending transactions every
    BLOCK_INTERVAL_SECONDS; in a consortium, produce (and announce) a block whenever the slot is
    this node's, while a second thread catches up with peers and gossips pending transactions,
    so that a slow peer never makes this node miss its slot. No block is produced while the
    chain is shorter than what is already final elsewhere (the watcher's check, at start and
    every CHAIN_CHECK_SECONDS): it would stand where final blocks already stand.

    `ready` is called once the node key, the database, the archive settings and (unless the
    consortium's genesis file is still to come) the chain are usable. Raises StartError before
    that when one is not."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    instance = Path(app.instance_path)
    key, connect = _preflight()
    locks.name_connections()  # a follower that takes over from this process, hung, ends them all
    genesis_path = app.config["GENESIS_PATH"]
    if not genesis_path or Path(genesis_path).exists():
        _ensure_chain()
    if ready is not None:
        ready()
    while genesis_path and not Path(genesis_path).exists() and not stop.wait(0.2):
        pass  # a consortium being founded: its genesis file comes once every node is up
    if stop.is_set():
        return
    with locks.lead(instance, "producer", stop, heartbeat=True) as leading:
        if leading is None:
            return  # stopped while another server of this node led
        with ledger.chain_lock.hold():
            runtime.ensure_chain(utcnow())
        genesis, peers = runtime.genesis_file(), runtime.peers()
        log.info("block producer for node %s started (%s)", key.node_id, "consortium" if peers else "single node")
        watch = Watch(instance, connect, peers)
        watch.check()
        helpers = Helpers(app, stop, instance)
        helpers.add("watcher", app.config.get("CHAIN_CHECK_SECONDS", CHAIN_CHECK_SECONDS), watch.check)
        if connect is not None:
            helpers.add("archiver", app.config["ARCHIVE_INTERVAL_SECONDS"], lambda: _archive(connect, peers), True)
            log.info("archiver started")
        if genesis is None or peers is None:
            tick, produce = app.config["BLOCK_INTERVAL_SECONDS"], lambda: _produce(app, key, None)
        else:
            # Producing checks four times a slot so a slot is never missed by much; blocks are pushed
            # to peers as they are made, so pulling from peers twice a slot is enough to heal gaps.
            tick, produce = genesis.params.slot_ms / 4000, lambda: _produce(app, key, peers)
            gossiped: set[str] = set()
            helpers.add("syncer", genesis.params.slot_ms / 2000, lambda: _sync(peers, gossiped))

        lost = threading.Event()
        # Each step checks the lead, and so beats; it produces once `tick` has passed. Beating at
        # least four times per LEADER_STALE_SECONDS leaves a slow block most of the bound.
        beat = min(tick, float(app.config.get("LEADER_STALE_SECONDS", locks.LEADER_STALE_SECONDS)) / 4)
        due = time.monotonic() + tick

        def step() -> None:
            nonlocal due
            if not leading.held():
                log.error("this server no longer leads the block producer (its database connection was lost): stopping")
                lost.set()
                return
            helpers.revive()
            if time.monotonic() < due:
                return
            due = time.monotonic() + tick
            if not watch.holding():
                produce()

        _loop(app, stop, beat, step, lost)
        if lost.is_set():
            stop.set()  # the helpers too; the process exits, its supervisor starts it again as a follower
        helpers.join(timeout=10)
        log.info("block producer stopped")


def _preflight() -> tuple[NodeKey, Callable[[], ArchiveStore] | None]:
    try:
        key = runtime.node_key()
    except RuntimeError as exc:  # no key file: the message says to run `node init`
        raise StartError(str(exc)) from None
    except Exception as exc:  # unreadable, or a wrong NODE_KEY_PASSPHRASE
        raise StartError(f"cannot load the node key: {type(exc).__name__}: {exc}") from None
    try:
        ledger.tip()
        health.load()  # the table the leader publishes in (a migration of its own)
    except SQLAlchemyError as exc:
        db.session.rollback()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StartError(
            f"cannot read the ledger from the database ({reason}); check DATABASE_URL and run "
            "`flask --app wsgi db upgrade`"
        ) from None
    try:
        connect = runtime.archive_store()
    except (ValueError, RuntimeError) as exc:  # a bad URL (never echoed: it has the password), no embedded server
        raise StartError(f"the archive is not usable: {exc}") from None
    return key, connect


def _ensure_chain() -> None:
    try:
        with ledger.chain_lock.hold():  # every producer of the node may be starting at once
            runtime.ensure_chain(utcnow())
    except (RuntimeError, ValueError, SQLAlchemyError) as exc:
        db.session.rollback()
        raise StartError(f"cannot install the genesis block: {exc}") from None


class Watch:
    """What is final elsewhere (the archive's newest zip, the peers' final heights), asked at
    start and then every CHAIN_CHECK_SECONDS; published in the database for every server's
    /healthz, logged when it changes."""

    def __init__(self, instance: Path, connect: Callable[[], ArchiveStore] | None, peers: Peers | None) -> None:
        self.instance, self.connect, self.peers = instance, connect, peers
        self.finals: list[FinalElsewhere] = []
        self.said: str | None = None
        self.held = False

    def check(self) -> None:
        found = health.gather(self.connect, self.peers)
        health.save(found)
        self.finals = found.finals
        report = health.truncation(found.finals)
        said = report.describe()
        if said != self.said:
            if report.ok:
                log.info("%s", said)
            else:
                log.error("%s; restore it (docs/archive.md) or let it catch up from peers", said)
            self.said = said
        db.session.commit()  # end the read, so the next check sees blocks stored meanwhile

    def holding(self) -> bool:
        """Whether producing must wait: the chain lacks, or differs from, a block final elsewhere."""
        if not self.finals:
            return False
        report = health.truncation(self.finals)
        if report.ok == self.held:
            self.held = not report.ok
            if self.held:
                log.warning("not producing blocks: %s", report.describe())
            else:
                log.info("producing blocks again: the chain reaches what is final elsewhere")
        return self.held


class Helpers:
    """The producer's helper threads, each restarted when it has died (by `revive`)."""

    def __init__(self, app: Flask, stop: threading.Event, instance: Path) -> None:
        self.app, self.stop, self.instance = app, stop, instance
        self.specs: dict[str, tuple[float, Callable[[], None], bool]] = {}
        self.threads: dict[str, threading.Thread] = {}

    def add(self, name: str, interval: float, step: Callable[[], None], locked: bool = False) -> None:
        """Run `step` every `interval` seconds in a thread; `locked`: it holds `<name>.lock` while alive."""
        self.specs[name] = (interval, step, locked)
        self._start(name)

    def _start(self, name: str) -> None:
        interval, step, locked = self.specs[name]

        def body() -> None:
            if not locked:
                _loop(self.app, self.stop, interval, step)
                return
            with self.app.app_context(), health.hold(self.instance, name, self.stop) as leading:
                if leading is None:
                    return
                lost = threading.Event()

                def guarded() -> None:
                    if not leading.held():
                        log.error("the %s lost its lock (its database connection was lost)", name)
                        lost.set()  # the thread ends; `revive` starts it again, to lead or wait
                    else:
                        step()

                _loop(self.app, self.stop, interval, guarded, lost)

        self.threads[name] = threading.Thread(target=body, daemon=True, name=name)
        self.threads[name].start()

    def revive(self) -> None:
        for name, thread in list(self.threads.items()):
            if not thread.is_alive() and not self.stop.is_set():
                log.error("the %s thread died; restarting it", name)
                self._start(name)

    def join(self, timeout: float) -> None:
        for thread in self.threads.values():
            thread.join(timeout=timeout)


def exit_with_parent(parent: int, stop: threading.Event) -> None:
    """Stop when `parent` (the gunicorn master) is gone, even killed with SIGKILL, instead of
    living on beside the node's next start; exit for good ORPHAN_GRACE_SECONDS later."""

    def watch() -> None:
        while os.getppid() == parent:
            if stop.wait(ORPHAN_POLL_SECONDS):
                return
        log.warning("the process that started this producer (pid %d) is gone: stopping", parent)
        stop.set()
        threading.Timer(ORPHAN_GRACE_SECONDS, os._exit, (1,)).start()

    threading.Thread(target=watch, daemon=True, name="orphan-watch").start()


def _loop(
    app: Flask, stop: threading.Event, interval: float, step: Callable[[], None], done: threading.Event | None = None
) -> None:
    """Run `step` every `interval` seconds until `stop` (or `done`, set by a step) is set."""
    with app.app_context():
        while not stop.wait(interval) and not (done is not None and done.is_set()):
            try:
                step()
            except Exception:
                log.exception("ledger work failed; will retry")
                db.session.rollback()
            finally:
                db.session.remove()


def _produce(app: Flask, key: NodeKey, peers: Peers | None) -> None:
    height = ledger.produce_block(key, utcnow(), app.config["MAX_BLOCK_TRANSACTIONS"], empty_allowed=peers is not None)
    if height is not None and peers is not None:
        network.announce_block(peers, height)


def _archive(connect: Callable[[], ArchiveStore], peers: Peers | None) -> None:
    """Upload final blocks; attachments this node never received are fetched from `peers`."""
    archive.enqueue_final()
    archive.upload_due(connect, utcnow(), peers=peers)


def _sync(peers: Peers, gossiped: set[str]) -> None:
    key = runtime.node_key()
    peers.urls.update({n: url for n, url in ledger.consensus_state().urls.items() if n != key.node_id})
    network.catch_up(peers, utcnow, runtime.max_skew_ms())
    pending = ledger.pending_from_here(key)
    gossiped.intersection_update(h for h, _ in pending)  # forget what has left the pool
    fresh = [(h, e) for h, e in pending if h not in gossiped]
    network.gossip(peers, [e for _, e in fresh])
    gossiped.update(h for h, _ in fresh)
    federation.resolve_unnamed(peers)
    escrow.deliver_pending(utcnow())  # escrow shares whose holder was down when they were made
