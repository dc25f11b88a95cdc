"""The front door: sign-in throttling per account and address (growing waits, then a lockout,
with Retry-After; the owner is told at the next sign-in), registration rate limits (in memory
and shared through the real Redis), password strength, and per-route body limits."""

from __future__ import annotations

import base64
import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from portal import create_app, runtime
from portal.extensions import db
from portal.models import utcnow
from tests.conftest import PASSWORD, PNG, RECORD, Person, make_config
from tests.portal.test_pages import csrf


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    for module in ("portal.api.routes", "portal.auth.routes"):
        monkeypatch.setattr(f"{module}.utcnow", clock)
    return clock


def sign_in(client: FlaskClient, username: str, password: str, address: str = "203.0.113.7"):  # type: ignore[no-untyped-def]
    return client.post(
        "/api/v1/auth/token",
        json={"username": username, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


def test_sign_in_waits_grow_then_lock_and_the_owner_is_told(client: FlaskClient, patient: Person, clock: Clock) -> None:
    for _ in range(3):  # LOGIN_FREE: answered at once
        assert sign_in(client, patient.username, "wrong password").status_code == 401
    assert sign_in(client, patient.username, "wrong password").status_code == 401  # the 4th: wait 1 s
    waiting = sign_in(client, patient.username, PASSWORD)  # the right password waits too
    assert waiting.status_code == 429 and waiting.headers["Retry-After"] == "1"
    assert waiting.json["error"] == {
        "code": "rate_limited",
        "message": "Too many failed sign-ins for this account; wait 1 second and try again.",
    }
    clock.advance(1)
    assert sign_in(client, patient.username, "wrong password").status_code == 401  # the 5th: wait 2 s
    clock.advance(1)
    assert sign_in(client, patient.username, PASSWORD).headers["Retry-After"] == "1"
    for failures in range(6, 11):  # each after its wait: 2, 4, 8, 16, 32 s, then locked at the 10th
        clock.advance(2 ** (failures - 5))
        assert sign_in(client, patient.username, "wrong password").status_code == 401
    locked = sign_in(client, patient.username, PASSWORD)
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "900"
    assert "locked for 15 more minutes" in locked.json["error"]["message"]

    clock.advance(900)
    welcome = sign_in(client, patient.username, PASSWORD)
    assert welcome.status_code == 200
    assert welcome.json["failed_attempts"] == {
        "count": 10,
        "last_at": (clock.now - timedelta(seconds=900)).isoformat() + "Z",
    }
    again = sign_in(client, patient.username, PASSWORD)
    assert again.json["failed_attempts"] == {"count": 0, "last_at": None}


def test_unknown_names_are_throttled_alike(client: FlaskClient, clock: Clock) -> None:
    """No way to learn which accounts exist from the throttle."""
    for _ in range(4):
        assert sign_in(client, "nobody-here", "wrong password").status_code == 401
    refused = sign_in(client, "nobody-here", "wrong password")
    assert refused.status_code == 429 and "this account" in refused.json["error"]["message"]


def test_sign_in_throttled_per_address(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person, clock: Clock
) -> None:
    app.config.update(LOGIN_FREE=1, LOGIN_ADDRESS_FACTOR=2)  # an address: 2 free failures
    for name in ("guess-1", "guess-2", "guess-3"):
        assert sign_in(client, name, "wrong password", "198.51.100.9").status_code == 401
    refused = sign_in(client, other_patient.username, PASSWORD, "198.51.100.9")
    assert refused.status_code == 429 and "your network address" in refused.json["error"]["message"]
    assert sign_in(client, other_patient.username, PASSWORD, "198.51.100.10").status_code == 200
    # A success does not clear the address: one good account cannot launder guesses.
    assert sign_in(client, patient.username, PASSWORD, "198.51.100.9").status_code == 429


def test_portal_sign_in_throttled_with_a_clear_page(client: FlaskClient, doctor: Person, clock: Clock) -> None:
    def attempt(password: str):  # type: ignore[no-untyped-def]
        form = {"username": doctor.username, "password": password, "csrf_token": csrf(client, "/login")}
        return client.post("/login", data=form)

    for _ in range(4):
        assert attempt("wrong password").status_code == 401
    refused = attempt(PASSWORD)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "Too many failed sign-ins for this account" in refused.get_data(as_text=True)
    clock.advance(1)
    assert attempt(PASSWORD).status_code == 302
    page = client.get("/doctor/patients").get_data(as_text=True)
    assert "4 failed sign-in attempts on your account since your last sign-in" in page


def register(client: FlaskClient, username: str, address: str = "192.0.2.1", password: str = PASSWORD):  # type: ignore[no-untyped-def]
    body = {"username": username, "password": password, "display_name": "New Patient", "date_of_birth": "1990-01-01"}
    return client.post("/api/v1/auth/register", json=body, environ_base={"REMOTE_ADDR": address})


def test_registration_rate_limited_per_address(app: Flask, client: FlaskClient) -> None:
    app.config["REGISTER_RATE_LIMIT"] = "2 per hour"
    assert [register(client, f"new.{i}").status_code for i in range(2)] == [201, 201]
    refused = register(client, "new.2")
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    assert register(client, "new.3", address="192.0.2.2").status_code == 201


def test_registration_limit_shared_through_redis(tmp_path: Path) -> None:
    """Two servers of one node (two apps) with REDIS_URL count registrations together."""
    node = f"node-{uuid.uuid4().hex[:8]}"  # a fresh key prefix: nothing left from earlier runs

    class Shared(make_config(tmp_path)):  # type: ignore[misc,valid-type]
        REDIS_URL = "redis://127.0.0.1:6379/15"
        REGISTER_RATE_LIMIT = "2 per hour"
        NODE_ID = node
        SQLALCHEMY_DATABASE_URI = os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'shared.db'}"

    first, second = create_app(Shared), create_app(Shared)
    assert first.config["RATELIMIT_STORAGE_URI"] == "redis://127.0.0.1:6379/15"
    with first.app_context():
        db.create_all()
        runtime.node_key(create=True)
        runtime.ensure_chain(utcnow())
        assert register(first.test_client(), "shared.1").status_code == 201
    with second.app_context():
        assert register(second.test_client(), "shared.2").status_code == 201
    with first.app_context():
        assert register(first.test_client(), "shared.3").status_code == 429
        db.drop_all()


@pytest.mark.parametrize(
    ("username", "password", "message"),
    [
        ("new.pat", "password1234", "This password is too easy to guess: This is a very common password."),
        ("margaret.h", "margaret.h2024", "This password is too easy to guess"),
        ("new.pat", "qwertyuiop", "This password is too easy to guess"),
        ("new.pat", "short", "Password must be at least 10 characters."),
    ],
)
def test_invalid_weak_passwords(client: FlaskClient, username: str, password: str, message: str) -> None:
    answer = register(client, username, password=password)
    assert answer.status_code == 422 and message in answer.json["error"]["message"], answer.json


def test_weak_new_password_refused(client: FlaskClient, patient: Person) -> None:
    body = {"current_password": PASSWORD, "new_password": "alice12345"}
    answer = client.post("/api/v1/me/password", json=body, headers=patient.headers)
    assert answer.status_code == 422 and "too easy to guess" in answer.json["error"]["message"]


def test_body_limits_per_route(client: FlaskClient, doctor: Person, patient: Person) -> None:
    padding = "x" * (65 * 1024)
    too_big = client.post("/api/v1/auth/token", json={"username": "a", "password": padding})
    assert too_big.status_code == 413 and too_big.json["error"]["code"] == "too_large"
    grant = client.post("/api/v1/grants", json={"doctor_id": doctor.id, "pad": padding}, headers=patient.headers)
    assert grant.status_code == 413
    # A record upload may be larger: its attachments have their own limit.
    scan = base64.b64encode(PNG + bytes(60 * 1024)).decode()
    record = {**RECORD, "attachments": [{"filename": "scan.png", "data": scan}]}
    written = client.post(f"/api/v1/patients/{patient.id}/records", json=record, headers=doctor.headers)
    assert written.status_code == 201, written.json
    # Node-to-node calls have their own limit: an unsigned one this size is refused as unsigned.
    node = client.post("/node/v1/transactions", data=padding, content_type="application/json")
    assert node.status_code == 401
