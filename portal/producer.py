"""The block producer loop: one per node, whatever the number of web workers.

A lock file under the instance folder makes a second producer on the same node
wait instead of producing competing blocks.
"""

from __future__ import annotations

import fcntl
import logging
import signal
import threading
from pathlib import Path

from flask import Flask

from portal import runtime
from portal.extensions import db
from portal.models import utcnow
from portal.services import ledger

log = logging.getLogger(__name__)


def run(app: Flask, stop: threading.Event | None = None) -> None:
    """Produce a block every BLOCK_INTERVAL_SECONDS while transactions wait, until stopped."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    lock_path = Path(app.instance_path) / "producer.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second producer on this node waits here
        key = runtime.node_key()
        ledger.ensure_genesis(key, app.config["CHAIN_ID"], utcnow())
        log.info("block producer for node %s started", key.node_id)
        while not stop.wait(app.config["BLOCK_INTERVAL_SECONDS"]):
            try:
                ledger.produce_block(key, utcnow(), app.config["MAX_BLOCK_TRANSACTIONS"])
            except Exception:
                log.exception("block production failed; will retry")
                db.session.rollback()
            finally:
                db.session.remove()
        log.info("block producer stopped")
