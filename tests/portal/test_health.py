"""GET /healthz against a real block producer running in a thread of the test process, read from
another server's instance folder too; a leader whose heartbeat stopped shown as `stalled` and a
check grown old as `stale`; the staleness rule itself; and the producer refusing to start without
its node key."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from portal import create_app
from portal.config import Config
from portal.extensions import db
from portal.models import NodeStatus, utcnow
from portal.producer import StartError, run
from portal.services import health, locks
from portal.services.locks import Beat, Process, beat_of, process_of, server_name, stalled


def healthz(client: FlaskClient) -> tuple[int, dict[str, Any]]:
    answer = client.get("/healthz")
    assert answer.headers["Cache-Control"] == "no-store"
    return answer.status_code, answer.json  # type: ignore[return-value]


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_healthz_follows_the_producer(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    app.instance_path = str(tmp_path)
    app.config.update(BLOCK_INTERVAL_SECONDS=0.05, CHAIN_CHECK_SECONDS=1.0)  # stale after 3 s
    status, found = healthz(client)
    assert status == 503 and found["failing"] == ["producer"]
    assert found["parts"]["producer"] == {"state": "down"}
    assert found["parts"]["database"] == {"state": "ok", "height": 0}
    assert found["parts"]["archiver"] == {"state": "off"} and found["parts"]["peers"] == {"state": "none"}
    assert found["parts"]["chain"] == {"state": "unknown"}

    stop, ready = threading.Event(), threading.Event()

    def producer() -> None:
        with app.app_context():
            run(app, stop, ready.set)

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        assert ready.wait(10)
        until(lambda: healthz(client)[1]["parts"]["chain"]["state"] != "unknown", 10, "the producer's first check")
        status, found = healthz(client)
        assert status == 200 and found["status"] == "ok" and found["failing"] == []
        # On PostgreSQL the report also names the server that leads (this one); both say how old
        # the leader's heartbeat is.
        producer_part = found["parts"]["producer"]
        beat_age = producer_part.pop("beat_seconds_ago")
        assert 0 <= beat_age < 5
        assert producer_part in ({"state": "ok"}, {"state": "ok", "leader": server_name(), "here": True})
        assert found["parts"]["chain"]["state"] == "ok" and found["parts"]["chain"]["final_elsewhere"] is None
        # Another server of the node (its own instance folder, the same database) sees the same
        # check (on SQLite it would not see the producer's flock: one host, one instance folder).
        app.instance_path = str(tmp_path / "another-server")
        elsewhere = healthz(client)[1]
        assert elsewhere["parts"]["chain"]["state"] == "ok"
        assert elsewhere["parts"]["chain"]["height"] == found["parts"]["chain"]["height"]
        app.instance_path = str(tmp_path)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    status, found = healthz(client)
    assert status == 503 and found["failing"] == ["producer"]


def test_invalid_start_without_a_node_key(tmp_path: Path) -> None:
    class Production(Config):
        SECRET_KEY = "x" * 40
        SQLALCHEMY_DATABASE_URI = f"sqlite:///{tmp_path / 'node.db'}"
        NODE_KEY_PATH = str(tmp_path / "missing" / "node.key")

    app = create_app(Production)
    app.instance_path = str(tmp_path)
    ready = threading.Event()
    with app.app_context(), pytest.raises(StartError) as refused:
        run(app, threading.Event(), ready.set)
    assert str(refused.value) == (
        f"no node key at {tmp_path / 'missing' / 'node.key'}; run `flask --app wsgi medledger node init`"
    )
    assert not ready.is_set()


def age(name: str, seconds: float) -> None:
    """Make the published value `name` look `seconds` old."""
    db.session.execute(
        update(NodeStatus).where(NodeStatus.name == name).values(updated_at=utcnow() - timedelta(seconds=seconds))
    )
    db.session.commit()


def test_a_leader_whose_heartbeat_stopped_is_stalled(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    """The lock is held (here by the test, as a hung leader would hold it) but the heartbeat is
    older than LEADER_STALE_SECONDS: 503 with the producer `stalled`; a fresh heartbeat: 200."""
    app.instance_path = str(tmp_path)
    app.config.update(LEADER_STALE_SECONDS=2.0)
    hung = locks.Lead(tmp_path, "producer", heartbeat=True)
    try:
        assert hung.take()
        status, found = healthz(client)
        assert status == 200 and found["parts"]["producer"]["state"] == "ok"
        age(locks.beat_name("producer"), 5)
        status, found = healthz(client)
        assert status == 503 and found["failing"] == ["producer"]
        assert found["parts"]["producer"]["state"] == "stalled"
        assert found["parts"]["producer"]["beat_seconds_ago"] >= 5
        assert hung.held()  # it runs again: its next check that it leads beats
        status, found = healthz(client)
        assert status == 200 and found["parts"]["producer"]["state"] == "ok"
    finally:
        hung.release()
    status, found = healthz(client)
    assert status == 503 and found["parts"]["producer"] == {"state": "down"}


def test_a_check_grown_old_is_stale(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    """What the producer published is shown `stale`, not `ok`, after STALE_CHECKS check intervals;
    peers of a consortium likewise; stale alone fails nothing."""
    app.instance_path = str(tmp_path)
    app.config.update(CHAIN_CHECK_SECONDS=1.0)
    health.save(health.References(peers={"node-2": True}, checked_at=time.time()))
    db.session.commit()
    found = health.report(tmp_path, archiving=False, consortium=True)
    assert found["parts"]["chain"]["state"] == "ok"
    assert found["parts"]["peers"]["state"] == "unknown"  # nobody produces: peers are not asked
    lead = locks.Lead(tmp_path, "producer", heartbeat=True)
    try:
        assert lead.take()
        found = health.report(tmp_path, archiving=False, consortium=True)
        assert found["parts"]["peers"] == {"state": "ok", "reachable": 1, "of": 1, "checked_seconds_ago": 0.0}
        age(health.CHECKED, 3.5)
        found = health.report(tmp_path, archiving=False, consortium=True)
        assert found["parts"]["chain"]["state"] == "stale" and found["parts"]["chain"]["checked_seconds_ago"] >= 3.5
        assert found["parts"]["peers"]["state"] == "stale"
        assert found["failing"] == [] and found["status"] == "ok"
    finally:
        lead.release()


def test_only_a_holders_own_old_heartbeat_is_stalled() -> None:
    web1, web2 = Process("web-1", 41), Process("web-2", 41)
    assert stalled(web1, Beat(web1, 10.5), 10.0)
    assert not stalled(web1, Beat(web1, 9.9), 10.0)
    assert not stalled(web1, Beat(web1, 10.0), 10.0)  # older than the bound, not as old
    assert not stalled(web1, Beat(web2, 60.0), 10.0)  # another process's heartbeat says nothing of this one
    assert not stalled(web1, Beat(Process("web-1", 42), 60.0), 10.0)  # restarted: a new process
    assert not stalled(None, Beat(web1, 60.0), 10.0)  # a holder that cannot be named
    assert not stalled(web1, None, 10.0)  # no heartbeat ever written (an older version leads)


def test_invalid_heartbeats_and_connection_names() -> None:
    assert beat_of({"server": "web-1", "pid": 7}, 1.5) == Beat(Process("web-1", 7), 1.5)
    assert beat_of({"server": "web-1", "pid": True}, 1.5) is None
    assert beat_of({"server": "web-1", "pid": "7"}, 1.5) is None
    assert beat_of({"server": 3, "pid": 7}, 1.5) is None
    assert beat_of(["web-1", 7], 1.5) is None
    assert beat_of({"server": "web-1", "pid": 7}, None) is None
    assert process_of("medledger producer web-1 7") == Process("web-1", 7)
    assert process_of("medledger pool web-1 7") == Process("web-1", 7)
    assert process_of("medledger producer web-1") is None
    assert process_of("medledger producer web 1 7") is None
    assert process_of("psql producer web-1 7") is None
    assert process_of("medledger producer web-1 x7") is None
    assert process_of(None) is None
