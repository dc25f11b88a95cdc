"""GET /healthz against a real block producer running in a thread of the test process, and the
producer refusing to start without its node key."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app
from portal.config import Config
from portal.producer import StartError, run
from portal.services.locks import server_name


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
    app.config.update(BLOCK_INTERVAL_SECONDS=0.05, CHAIN_CHECK_SECONDS=0.1)
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
        # On PostgreSQL the report also names the server that leads (this one).
        assert found["parts"]["producer"] in ({"state": "ok"}, {"state": "ok", "leader": server_name(), "here": True})
        assert found["parts"]["chain"]["state"] == "ok" and found["parts"]["chain"]["final_elsewhere"] is None
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
