"""The block producer loop: one per node, whatever the number of web workers.

A lock file under the instance folder makes a second producer on the same node
wait instead of producing competing blocks.
"""

from __future__ import annotations

import fcntl
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from core.crypto import NodeKey
from portal import runtime
from portal.extensions import db
from portal.ftp import ArchiveStore
from portal.models import utcnow
from portal.services import archive, federation, ledger, network
from portal.services.network import Peers

log = logging.getLogger(__name__)


def run(app: Flask, stop: threading.Event | None = None) -> None:
    """Until stopped: in a consortium of one, seal pending transactions every
    BLOCK_INTERVAL_SECONDS; in a consortium, produce (and announce) a block whenever the slot is
    this node's, while a second thread catches up with peers and gossips pending transactions,
    so that a slow peer never makes this node miss its slot."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    lock_path = Path(app.instance_path) / "producer.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second producer on this node waits here
        key = runtime.node_key()
        genesis_path = app.config["GENESIS_PATH"]
        while genesis_path and not Path(genesis_path).exists() and not stop.wait(0.2):
            pass  # a consortium being founded: its genesis file comes once every node is up
        if stop.is_set():
            return
        runtime.ensure_chain(utcnow())
        genesis, peers = runtime.genesis_file(), runtime.peers()
        log.info("block producer for node %s started (%s)", key.node_id, "consortium" if peers else "single node")
        connect = runtime.archive_store()
        if connect is not None:
            step = lambda: _archive(connect, peers)  # noqa: E731
            interval = app.config["ARCHIVE_INTERVAL_SECONDS"]
            threading.Thread(target=_loop, args=(app, stop, interval, step), daemon=True, name="archiver").start()
            log.info("archiver started")
        if genesis is None or peers is None:
            _loop(app, stop, app.config["BLOCK_INTERVAL_SECONDS"], lambda: _produce(app, key, None))
            return
        # Producing checks four times a slot so a slot is never missed by much; blocks are pushed
        # to peers as they are made, so pulling from peers twice a slot is enough to heal gaps.
        produce_tick, sync_tick = genesis.params.slot_ms / 4000, genesis.params.slot_ms / 2000
        gossiped: set[str] = set()
        args = (app, stop, sync_tick, lambda: _sync(peers, gossiped))
        syncer = threading.Thread(target=_loop, args=args, daemon=True)
        syncer.start()
        _loop(app, stop, produce_tick, lambda: _produce(app, key, peers))
        syncer.join(timeout=10)
        log.info("block producer stopped")


def _loop(app: Flask, stop: threading.Event, interval: float, step: Callable[[], None]) -> None:
    with app.app_context():
        while not stop.wait(interval):
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
