"""Shared fixtures: an app with a fresh database per test, and one fixture per actor."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.crypto import UserKeys, generate_user_keys
from portal import create_app, runtime
from portal.config import TestConfig
from portal.extensions import db
from portal.models import utcnow
from portal.services import accounts, ledger

PASSWORD = "correct-horse-battery"

# Nodes started as processes by tests register many accounts from 127.0.0.1.
os.environ.setdefault("REGISTER_RATE_LIMIT", "1000 per minute")


@pytest.fixture(scope="session")
def key_pool() -> list[UserKeys]:
    """Real RSA-3072/Umbral key pairs, made once per session: generating them is the slow part."""
    return [generate_user_keys() for _ in range(8)]


def use_key_pool(monkeypatch: pytest.MonkeyPatch, key_pool: list[UserKeys]) -> None:
    """Hand out pooled key pairs (distinct within a test, each database is fresh)."""
    pool = itertools.chain(key_pool, iter(generate_user_keys, None))
    monkeypatch.setattr(accounts, "generate_user_keys", lambda: next(pool))


@pytest.fixture(autouse=True)
def fast_keys(monkeypatch: pytest.MonkeyPatch, key_pool: list[UserKeys]) -> None:
    use_key_pool(monkeypatch, key_pool)


def make_config(tmp: Path) -> type[TestConfig]:
    class Config(TestConfig):
        NODE_KEY_PATH = str(tmp / "node.key")
        EMERGENCY_KEY_PATH = str(tmp / "emergency.key")

    return Config


class RequestClient(FlaskClient):
    """Runs each request in its own app context, as in production, so `g` (and Flask-Login's
    cached user) never carries over from one request to the next."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        with self.application.app_context():
            return super().open(*args, **kwargs)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app(make_config(tmp_path))
    app.test_client_class = RequestClient
    with app.app_context():
        db.drop_all()
        db.create_all()
        runtime.node_key(create=True)
        runtime.ensure_chain(utcnow())
        yield app
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass
class Person:
    """A test actor: the account and a live API token."""

    username: str
    password: str
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_person(client: FlaskClient, role: str, username: str, name: str, date_of_birth: str = "1984-03-21") -> Person:
    user = accounts.create_user(
        role=role,
        username=username,
        password=PASSWORD,
        display_name=name,
        hospital="Test Hospital" if role == "doctor" else None,
        licence_number="LIC-1" if role == "doctor" else None,
        date_of_birth=date_of_birth if role == "patient" else None,
        kdf=runtime.kdf(),
        home=runtime.node_key(),
        now=utcnow(),
    )
    answer = client.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.json
    return Person(username, PASSWORD, user.public_id, answer.json["token"])


@pytest.fixture
def patient(client: FlaskClient) -> Person:
    return make_person(client, "patient", "alice", "Alice Moreau")


@pytest.fixture
def other_patient(client: FlaskClient) -> Person:
    return make_person(client, "patient", "bob", "Bob Tanaka")


@pytest.fixture
def doctor(client: FlaskClient) -> Person:
    return make_person(client, "doctor", "dr.osei", "Dr. Ama Osei")


@pytest.fixture
def other_doctor(client: FlaskClient) -> Person:
    return make_person(client, "doctor", "dr.lind", "Dr. Erik Lindqvist")


@pytest.fixture
def admin(client: FlaskClient) -> Person:
    return make_person(client, "admin", "admin", "Hospital Admin")


def produce(app: Flask) -> int | None:
    """Seal pending transactions now, as the node's producer would."""
    return ledger.seal_pending(runtime.node_key())


RECORD = {
    "title": "Asthma review",
    "category": "respiratory",
    "diagnoses": ["J45.909"],
    "symptoms": ["HP:0002094"],
    "notes": "Wheeze on exertion.\nPeak flow 420 L/min.",
    "prescriptions": [{"drug": "Salbutamol", "dose": "100 mcg", "frequency": "as needed", "duration": "30 days"}],
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(40)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
