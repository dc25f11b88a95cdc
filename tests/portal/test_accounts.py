"""Accounts, tokens, sessions and key custody."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal import runtime
from portal.extensions import db
from portal.models import AuthSession, LedgerTransaction, User, utcnow
from portal.services import accounts
from portal.services.errors import Unauthorized
from tests.conftest import PASSWORD, RECORD, Person, produce


def test_patient_registers_and_gets_keys_on_the_ledger(app: Flask, client: FlaskClient) -> None:
    answer = client.post(
        "/api/v1/auth/register",
        json={"username": "dana", "password": "long-enough-pw", "display_name": "Dana", "date_of_birth": "1990-01-01"},
    )
    assert answer.status_code == 201
    assert answer.json["user"]["role"] == "patient"
    user = db.session.scalar(select(User).where(User.username == "dana"))
    assert len(user.rsa_public_key) > 400 and len(user.umbral_public_key) == 33
    assert produce(app) == 1
    tx = db.session.get(LedgerTransaction, user.key_tx_hash)
    assert tx.status == "committed" and tx.kind == "key"
    assert client.get("/api/v1/chain/verify").json["valid"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"username": "x", "password": "long-enough-pw", "display_name": "X"}, "Username must be 3-40 characters"),
        ({"username": "Dana!", "password": "long-enough-pw", "display_name": "X"}, "Username must be 3-40 characters"),
        ({"username": "dana", "password": "short", "display_name": "X"}, "Password must be at least 10 characters."),
        ({"username": "dana", "password": 12345678901, "display_name": "X"}, "`password` must be text."),
        ({"username": "dana", "password": "long-enough-pw", "display_name": ""}, "Display name must be 1-120"),
        ({"username": ["dana"], "password": "long-enough-pw", "display_name": "X"}, "`username` must be text."),
        ({"username": "dana", "password": "long-enough-pw"}, "`display_name` is required."),
        ({"username": "dana", "password": "long-enough-pw", "display_name": "X", "role": "admin"}, "`role`: Unknown"),
    ],
)
def test_invalid_registration(client: FlaskClient, body: dict, message: str) -> None:
    answer = client.post("/api/v1/auth/register", json={"date_of_birth": "1990-01-01", **body})
    assert answer.status_code == 422
    assert answer.json["error"]["code"] == "validation_failed"
    assert message in answer.json["error"]["message"]
    assert db.session.scalar(select(func.count()).select_from(User)) == 0


def test_invalid_registration_names_each_bad_field(client: FlaskClient) -> None:
    answer = client.post("/api/v1/auth/register", json={"username": 7, "role": "admin"})
    assert answer.status_code == 422
    assert answer.json["error"]["fields"] == {
        "username": "`username` must be text.",
        "password": "`password` is required.",
        "display_name": "`display_name` is required.",
        "date_of_birth": "`date_of_birth` is required.",
        "role": "Unknown field.",
    }
    assert answer.json["error"]["message"] == (
        "Some fields are not valid: `date_of_birth`, `display_name`, `password`, `role`, `username`."
    )


def test_invalid_registration_taken_username(client: FlaskClient, patient: Person) -> None:
    answer = client.post(
        "/api/v1/auth/register",
        json={"username": "alice", "password": "long-enough-pw", "display_name": "A", "date_of_birth": "1990-01-01"},
    )
    assert answer.status_code == 409
    assert answer.json["error"]["message"] == "The username 'alice' is taken."


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice", "password": "wrong-password!"},
        {"username": "nobody", "password": PASSWORD},
    ],
)
def test_invalid_login(client: FlaskClient, patient: Person, body: dict) -> None:
    answer = client.post("/api/v1/auth/token", json=body)
    assert answer.status_code == 401
    assert answer.json == {"error": {"code": "unauthorized", "message": "Wrong username or password."}}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"username": "alice"}, {"password": "`password` is required."}),
        ({"username": 5, "password": PASSWORD}, {"username": "`username` must be text."}),
    ],
)
def test_invalid_login_request(client: FlaskClient, patient: Person, body: dict, fields: dict) -> None:
    """A sign-in without a password, or with a number for a name, is malformed (422), not a wrong guess."""
    answer = client.post("/api/v1/auth/token", json=body)
    assert answer.status_code == 422
    [message] = fields.values()
    assert answer.json == {"error": {"code": "validation_failed", "message": message, "fields": fields}}


def test_logout_ends_the_token(client: FlaskClient, patient: Person) -> None:
    assert client.get("/api/v1/me", headers=patient.headers).json["user"]["username"] == "alice"
    assert client.delete("/api/v1/auth/token", headers=patient.headers).status_code == 204
    answer = client.get("/api/v1/me", headers=patient.headers)
    assert answer.status_code == 401
    assert db.session.scalar(select(func.count()).select_from(AuthSession)) == 0


def test_token_expiry_ends_access(app: Flask, client: FlaskClient, patient: Person) -> None:
    later = utcnow() + timedelta(seconds=app.config["API_TOKEN_TTL_SECONDS"] + 1)
    assert accounts.resolve(patient.token, utcnow()) is not None
    assert accounts.resolve(patient.token, later) is None


def test_invalid_tokens(client: FlaskClient, patient: Person) -> None:
    for header in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer x" * 50}):
        answer = client.get("/api/v1/records", headers=header)
        assert answer.status_code == 401, header
    forged = patient.token[:-2] + ("AA" if not patient.token.endswith("AA") else "BB")
    assert client.get("/api/v1/records", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_password_change_rewraps_keys(app: Flask, client: FlaskClient, doctor: Person, patient: Person) -> None:
    created = client.post(f"/api/v1/patients/{patient.id}/records", json=RECORD, headers=doctor.headers).json
    second = client.post("/api/v1/auth/token", json={"username": "alice", "password": PASSWORD}).json["token"]
    user = db.session.scalar(select(User).where(User.username == "alice"))
    before = (user.wrapped_user_key, user.kdf_salt, user.sealed_private_keys)

    answer = client.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "a-brand-new-password"},
        headers=patient.headers,
    )
    assert answer.status_code == 204
    db.session.refresh(user)
    assert user.wrapped_user_key != before[0] and user.kdf_salt != before[1]
    assert user.sealed_private_keys == before[2]  # only the wrapping changed
    # The other session is ended; this one still opens the record.
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {second}"}).status_code == 401
    assert client.get(f"/api/v1/records/{created['id']}", headers=patient.headers).status_code == 200
    assert client.post("/api/v1/auth/token", json={"username": "alice", "password": PASSWORD}).status_code == 401
    fresh = client.post("/api/v1/auth/token", json={"username": "alice", "password": "a-brand-new-password"}).json
    answer = client.get(f"/api/v1/records/{created['id']}", headers={"Authorization": f"Bearer {fresh['token']}"})
    assert answer.status_code == 200 and answer.json["title"] == RECORD["title"]


def test_invalid_password_change_wrong_current(client: FlaskClient, patient: Person) -> None:
    answer = client.post(
        "/api/v1/me/password",
        json={"current_password": "not-my-password", "new_password": "a-brand-new-password"},
        headers=patient.headers,
    )
    assert answer.status_code == 401
    assert answer.json["error"]["message"] == "The current password is wrong."


def test_unlocking_needs_the_token(app: Flask, patient: Person) -> None:
    """The session row alone (a database copy) cannot unwrap the user key without the token."""
    actor = accounts.resolve(patient.token, utcnow())
    assert actor is not None
    actor.keys()  # works with the real token
    impostor = accounts.Actor(actor.user, actor.session, "a" * 43)
    with pytest.raises(Exception, match="decryption failed"):
        impostor.keys()


def test_cli_create_user(app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["medledger", "create-user", "--role", "admin", "--username", "root.admin", "--password", "long-enough-pw"]
    )
    assert result.exit_code == 0, result.output
    assert "created admin root.admin" in result.output
    prompted = runner.invoke(
        args=["medledger", "create-user", "--role", "patient", "--username", "pat"],
        input="long-enough-pw\nlong-enough-pw\n",
    )
    assert prompted.exit_code == 0, prompted.output
    token = accounts.login("pat", "long-enough-pw", kind="api", ttl_seconds=60, kdf=runtime.kdf(), now=utcnow()).token
    assert token
    bad = runner.invoke(
        args=["medledger", "create-user", "--role", "doctor", "--username", "dr.x", "--password", "long-enough-pw"]
    )
    assert bad.exit_code != 0 and "Hospital must be 1-120 characters." in bad.output


def test_wrong_password_never_opens_keys(app: Flask, patient: Person) -> None:
    with pytest.raises(Unauthorized):
        accounts.login("alice", PASSWORD + "x", kind="api", ttl_seconds=60, kdf=runtime.kdf(), now=utcnow())
