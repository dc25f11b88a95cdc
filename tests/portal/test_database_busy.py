"""A request that finds no free database connection in time (every one in use under load) is
answered 503 with Retry-After, not 500, and changes nothing; the pool is sized by configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app, runtime
from portal.chat.events import NAMESPACE as NS
from portal.extensions import db, socketio
from portal.models import Record, utcnow
from portal.services.errors import Busy
from tests.conftest import RECORD, RequestClient, make_config, make_person


@pytest.fixture
def small_pool_app(tmp_path: Path) -> Flask:
    """The suite's database with a pool of one connection and a short wait for it (on SQLite, a
    file: an in-memory database has a single shared connection and no pool)."""
    uri = os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'node.db'}"
    settings = {"SQLALCHEMY_DATABASE_URI": uri, "DATABASE_POOL_SIZE": 1, "DATABASE_MAX_OVERFLOW": 0,
                "DATABASE_POOL_TIMEOUT": 0.2}  # fmt: skip
    app = create_app(type("SmallPool", (make_config(tmp_path),), settings))
    app.test_client_class = RequestClient
    with app.app_context():
        db.drop_all()
        db.create_all()
        runtime.node_key(create=True)
        runtime.ensure_chain(utcnow())
    yield app
    with app.app_context():
        db.drop_all()
        db.engine.dispose()


def test_no_connection_in_time_is_503_with_retry_after(small_pool_app: Flask) -> None:
    app = small_pool_app
    client: FlaskClient = app.test_client()
    with app.app_context():
        doctor = make_person(client, "doctor", "dr.osei", "Dr. Ama Osei")
        patient = make_person(client, "patient", "alice", "Alice Moreau")
        assert db.engine.pool.size() == 1
        db.session.remove()  # give back what signing up used
        held = db.engine.connect()  # the only connection, busy elsewhere
        try:
            url = f"/api/v1/patients/{patient.id}/records"
            answer = client.post(url, json=RECORD, headers=doctor.headers)
            assert answer.status_code == 503, answer.get_data(as_text=True)
            assert answer.json["error"]["code"] == "busy"
            assert answer.headers["Retry-After"] == "5"
        finally:
            held.close()
        assert db.session.query(Record).count() == 0  # the refused write left nothing behind
        db.session.remove()
        again = client.post(url, json=RECORD, headers=doctor.headers)
        assert again.status_code == 201, again.json
        assert db.session.query(Record).count() == 1


def test_a_chat_event_with_no_connection_in_time_answers_busy(small_pool_app: Flask) -> None:
    app = small_pool_app
    client: FlaskClient = app.test_client()
    with app.app_context():
        patient = make_person(client, "patient", "alice", "Alice Moreau")
        db.session.remove()
    socket = socketio.test_client(app, namespace=NS, auth={"token": patient.token})
    assert socket.is_connected(NS)
    assert socket.emit("sync", {}, namespace=NS, callback=True)["ok"] is True
    with app.app_context():
        held = db.engine.connect()
        try:
            answer = socket.emit("sync", {}, namespace=NS, callback=True)
        finally:
            held.close()
    assert answer == {"error": {"code": "busy", "message": Busy().message}}
    assert socket.emit("sync", {}, namespace=NS, callback=True)["ok"] is True
    socket.disconnect(NS)


def test_a_granted_read_with_every_pooled_connection_in_use_still_gets_the_chain_lock(small_pool_app: Flask) -> None:
    """A logged read holds the pool's only connection when it takes the chain lock: the lock's
    connection must come from elsewhere, or the read waits for itself (under load: every request
    holding a connection, each waiting for the lock whose holder waits for a connection)."""
    app = small_pool_app
    client: FlaskClient = app.test_client()
    with app.app_context():
        doctor = make_person(client, "doctor", "dr.osei", "Dr. Ama Osei")
        reader = make_person(client, "doctor", "dr.ruiz", "Dr. Ana Ruiz")
        patient = make_person(client, "patient", "alice", "Alice Moreau")
        db.session.remove()  # give back what signing up used
    written = client.post(f"/api/v1/patients/{patient.id}/records", json=RECORD, headers=doctor.headers)
    assert written.status_code == 201, written.json
    granted = client.post("/api/v1/grants", json={"doctor_id": reader.id}, headers=patient.headers)
    assert granted.status_code == 201, granted.json
    answer = client.get(f"/api/v1/records/{written.json['id']}", headers=reader.headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.json["access"]["mode"] == "grant"
    log = client.get("/api/v1/access-log", headers=patient.headers)
    assert [e["reader"]["id"] for e in log.json["entries"]] == [reader.id]
