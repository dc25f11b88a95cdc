"""Sign-out after inactivity (portal/idle.py): portal pages after 15 minutes, the app's API tokens
after 30, both configurable, enforced by the server (pages, API, and `accounts.resolve`, which chat
uses), announced to the browser, and never a 500 on a strange token.

Time passes by moving a session's stored times back: a session whose created and deadline times
are both N minutes earlier is exactly a session N minutes older."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import AuthSession, utcnow
from portal.services import accounts
from tests.conftest import PASSWORD, Person
from tests.portal.test_pages import csrf, log_in

FIND = "/doctor/patients"


def time_passes(minutes: float, kind: str | None = None) -> None:
    shift = timedelta(minutes=minutes)
    query = select(AuthSession) if kind is None else select(AuthSession).where(AuthSession.kind == kind)
    for row in db.session.scalars(query):
        row.created_at, row.expires_at = row.created_at - shift, row.expires_at - shift
    db.session.commit()


def sessions(kind: str) -> int:
    return db.session.scalar(select(func.count()).select_from(AuthSession).where(AuthSession.kind == kind))


def expires_in(answer) -> int:  # type: ignore[no-untyped-def]
    return int(answer.headers["X-Session-Expires-In"])


# ---- the app's API tokens: 30 minutes


def test_an_api_token_idle_for_30_minutes_is_refused_with_a_clear_401(client: FlaskClient, patient: Person) -> None:
    answer = client.get("/api/v1/me", headers=patient.headers)
    assert answer.status_code == 200
    assert 1790 <= expires_in(answer) <= 1800
    assert answer.headers["X-Session-Warning-Seconds"] == "60"
    time_passes(29)
    assert client.get("/api/v1/me", headers=patient.headers).status_code == 200
    time_passes(30.5)
    answer = client.get("/api/v1/me", headers=patient.headers)
    assert answer.status_code == 401
    assert answer.json == {
        "error": {
            "code": "session_idle",
            "message": "You were signed out after 30 minutes without activity. Sign in again.",
        }
    }
    assert "X-Session-Expires-In" not in answer.headers
    assert sessions("api") == 0  # ended for good: the wrapped key is gone
    again = client.get("/api/v1/me", headers=patient.headers)
    assert again.status_code == 401 and again.json["error"]["code"] == "unauthorized"


def test_activity_keeps_an_api_token_alive(client: FlaskClient, patient: Person) -> None:
    for _ in range(4):  # 80 minutes in all, never 30 without a request
        time_passes(20)
        answer = client.get("/api/v1/records", headers=patient.headers)
        assert answer.status_code == 200, answer.json
        assert expires_in(answer) >= 1790


def test_a_fresh_token_is_idle_from_its_creation(app: Flask, client: FlaskClient, patient: Person) -> None:
    answer = client.post("/api/v1/auth/token", json={"username": patient.username, "password": PASSWORD})
    token = answer.json["token"]
    assert answer.json["expires_at"] <= (utcnow() + timedelta(minutes=30, seconds=1)).isoformat() + "Z"
    time_passes(31)
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_chat_and_every_other_user_of_a_session_refuse_it_once_idle(app: Flask, patient: Person) -> None:
    assert accounts.resolve(patient.token, utcnow()) is not None
    time_passes(31)
    assert accounts.resolve(patient.token, utcnow()) is None  # what the chat socket checks on every event


def test_the_app_limit_is_configurable(app: Flask, client: FlaskClient, patient: Person) -> None:
    app.config["APP_IDLE_MINUTES"] = 5
    app.config["IDLE_WARNING_SECONDS"] = 30
    answer = client.get("/api/v1/me", headers=patient.headers)
    assert answer.headers["X-Session-Warning-Seconds"] == "30"
    assert expires_in(answer) <= 300  # moved back to five minutes from now
    time_passes(6)
    answer = client.get("/api/v1/me", headers=patient.headers)
    assert answer.status_code == 401 and "after 5 minutes without activity" in answer.json["error"]["message"]


def test_the_lifetime_of_a_token_still_ends_it(app: Flask, client: FlaskClient, patient: Person) -> None:
    app.config["API_TOKEN_TTL_SECONDS"] = 600
    answer = client.get("/api/v1/me", headers=patient.headers)
    assert expires_in(answer) <= 600  # activity never moves it past the end of its lifetime
    time_passes(9)
    assert expires_in(client.get("/api/v1/me", headers=patient.headers)) <= 60
    time_passes(1.5)
    answer = client.get("/api/v1/me", headers=patient.headers)
    assert answer.status_code == 401 and answer.json["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer " + "x" * 5000,
        "Bearer " + "é" * 40,
        "Bearer \x00" + "a" * 40,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer " + "a" * 43,
    ],
    ids=["long", "latin-1", "nul", "empty", "basic", "unknown"],
)
def test_invalid_tokens_get_401_never_500(client: FlaskClient, header: str) -> None:
    answer = client.get("/api/v1/me", headers={"Authorization": header})
    assert answer.status_code == 401, answer.get_data(as_text=True)
    assert answer.json["error"]["code"] == "unauthorized"


# ---- the portal: 15 minutes


def test_a_portal_session_idle_for_15_minutes_goes_to_sign_in_with_the_reason(
    client: FlaskClient, doctor: Person
) -> None:
    log_in(client, doctor.username)
    page = client.get(FIND)
    assert page.status_code == 200
    assert 890 <= expires_in(page) <= 900
    time_passes(14, "web")
    assert client.get(FIND).status_code == 200
    time_passes(15.5, "web")
    answer = client.get(FIND)
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/login")
    assert sessions("web") == 0
    login = client.get("/login").get_data(as_text=True)
    assert "You were signed out after 15 minutes without activity. Sign in again." in login
    assert client.get(FIND).status_code == 302  # and it stays signed out
    assert sessions("api") == 1  # the doctor's API token is another session, with its own clock


def test_a_portal_form_sent_after_the_limit_is_not_accepted(
    client: FlaskClient, doctor: Person, patient: Person
) -> None:
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/records/new"
    token = csrf(client, url)
    time_passes(16, "web")
    answer = client.post(url, data={"csrf_token": token, "title": "Late", "category": "general"})
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/login")
    assert sessions("web") == 0


def test_the_portal_limit_is_configurable(app: Flask, client: FlaskClient, doctor: Person) -> None:
    app.config["PORTAL_IDLE_MINUTES"] = 2
    log_in(client, doctor.username)
    assert expires_in(client.get(FIND)) <= 120
    time_passes(2.5, "web")
    client.get(FIND)
    assert "after 2 minutes without activity" in client.get("/login").get_data(as_text=True)


def test_pages_carry_the_warning_and_status_does_not_count_as_activity(client: FlaskClient, doctor: Person) -> None:
    assert 'id="idle-warning"' not in client.get("/login").get_data(as_text=True)
    log_in(client, doctor.username)
    page = client.get(FIND).get_data(as_text=True)
    assert 'id="idle-warning"' in page and "Stay signed in" in page
    script = re.search(r'<script src="/static/idle.js"[^>]*>', page)
    assert (
        script
        and 'data-warning-seconds="60"' in script.group(0)
        and 'data-keep-alive-url="/session/keep-alive"' in script.group(0)
    )
    time_passes(10, "web")
    status = client.get("/session/status")
    assert status.status_code == 200 and 290 <= status.json["expires_in"] <= 300
    assert status.json["warning_seconds"] == 60
    time_passes(4, "web")
    assert 50 <= client.get("/session/status").json["expires_in"] <= 60  # asking did not move it


def test_stay_signed_in_moves_the_deadline(client: FlaskClient, doctor: Person) -> None:
    log_in(client, doctor.username)
    token = csrf(client, FIND)
    time_passes(14.5, "web")
    assert client.post("/session/keep-alive").status_code == 400  # CSRF, as every unsafe request
    answer = client.post("/session/keep-alive", headers={"X-CSRF-Token": token, "Accept": "application/json"})
    assert answer.status_code == 200 and answer.json["expires_in"] >= 890
    time_passes(14.5, "web")
    assert client.get(FIND).status_code == 200


def test_status_and_keep_alive_answer_json_when_signed_out(client: FlaskClient, doctor: Person) -> None:
    assert client.get("/session/status").status_code == 401
    log_in(client, doctor.username)
    token = csrf(client, FIND)
    time_passes(16, "web")
    answer = client.post("/session/keep-alive", headers={"X-CSRF-Token": token})
    assert answer.status_code == 401
    assert answer.json["error"]["code"] == "session_idle"
    assert answer.json["error"]["login"] == "/login"
    assert client.get("/session/status").json["error"]["code"] == "unauthorized"
