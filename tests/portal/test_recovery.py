"""A patient's recovery key and "Forgot password" with it: the key is shown once and confirmed
with two of its words; a reset keeps the same user key (every record and grant still opens), ends
every session and closes its chat connections, is on the ledger signed by the patient's own key
and in their access log, and is told once at the next sign-in; any failure is one answer that
changes nothing and is throttled. The same route takes the front desk's one-time code instead of
the words (its success: tests/portal/test_escrow.py); a body with both proofs, or neither, is
refused."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from mnemonic import Mnemonic
from sqlalchemy import func, select

from core.ledger import decode_transaction
from portal.api import recovery as recovery_api
from portal.extensions import db, socketio
from portal.models import AccessEntry, LedgerTransaction, User
from tests.conftest import PASSWORD, RECORD, Person, produce
from tests.portal.test_front_door import Clock

NEW_PASSWORD = "violet-lantern-orchard-47"
NO_MATCH = {"code": "unauthorized", "message": recovery_api.NO_MATCH}
DESK_CODE = "ABCD-EFGH-JKLM-NPQR-STUV"  # well formed; no front desk issued it
NS = "/chat"
ADDRESS = "198.51.100.7"


def begin(client: FlaskClient, person: Person, password: str = PASSWORD) -> Any:
    return client.post("/api/v1/account/recovery-key", json={"password": password}, headers=person.headers)


def confirm(client: FlaskClient, person: Person, words: dict[str, str]) -> Any:
    return client.post("/api/v1/account/recovery-key/confirm", json={"words": words}, headers=person.headers)


def answers(key: dict[str, Any]) -> dict[str, str]:
    return {str(p): key["words"][p - 1] for p in key["confirm"]}


def make_key(client: FlaskClient, person: Person) -> list[str]:
    """A confirmed recovery key's 12 words."""
    key = begin(client, person)
    assert key.status_code == 201, key.json
    done = confirm(client, person, answers(key.json))
    assert done.status_code == 200, done.json
    return key.json["words"]


def recover(
    client: FlaskClient, username: str, words: list[str] | str, password: str = NEW_PASSWORD, address: str = ""
) -> Any:
    phrase = words if isinstance(words, str) else " ".join(words)
    body = {"username": username, "recovery_key": phrase, "new_password": password}
    return client.post("/api/v1/auth/recover", json=body, environ_base={"REMOTE_ADDR": address or ADDRESS})


def recover_with_code(client: FlaskClient, username: str, code: str = DESK_CODE, password: str = NEW_PASSWORD) -> Any:
    body = {"username": username, "desk_code": code, "new_password": password}
    return client.post("/api/v1/auth/recover", json=body, environ_base={"REMOTE_ADDR": ADDRESS})


def sign_in(client: FlaskClient, username: str, password: str) -> Any:
    return client.post("/api/v1/auth/token", json={"username": username, "password": password})


def status(client: FlaskClient, person: Person) -> dict[str, Any]:
    answer = client.get("/api/v1/account/recovery-key", headers=person.headers)
    assert answer.status_code == 200, answer.json
    return answer.json


def write(client: FlaskClient, author: Person, patient: Person, title: str) -> str:
    body = {**RECORD, "title": title}
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json=body, headers=author.headers)
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def recover_rows() -> list[LedgerTransaction]:
    return list(db.session.scalars(select(LedgerTransaction).where(LedgerTransaction.kind == "recover")))


def test_recovery_key_is_shown_once_and_active_only_once_confirmed(client: FlaskClient, patient: Person) -> None:
    assert status(client, patient) == {"set": False, "set_at": None, "pending": False}
    key = begin(client, patient)
    assert key.status_code == 201
    words, (first, second) = key.json["words"], key.json["confirm"]
    assert len(words) == 12 and Mnemonic("english").check(" ".join(words))
    assert 1 <= first < second <= 12
    assert key.json["qr_svg"].startswith("<svg") and 'xmlns="http://www.w3.org/2000/svg"' in key.json["qr_svg"]
    assert status(client, patient) == {"set": False, "set_at": None, "pending": True}

    wrong = confirm(client, patient, {str(first): words[second - 1], str(second): words[first - 1]})
    assert wrong.status_code == 422
    assert wrong.json["error"]["message"] == (
        f"Those are not word {first} and word {second} of your new recovery key. Check them and try again."
    )
    missing = confirm(client, patient, {str(first): words[first - 1]})
    assert missing.status_code == 422
    assert missing.json["error"]["message"] == f"Type word {first} and word {second} of your new recovery key."
    assert status(client, patient)["set"] is False

    done = confirm(client, patient, {str(first): f"  {words[first - 1].upper()} ", str(second): words[second - 1]})
    assert done.status_code == 200
    assert done.json["set"] is True and done.json["pending"] is False and done.json["set_at"].endswith("Z")
    assert confirm(client, patient, answers(key.json)).status_code == 409  # nothing pending any more


def test_a_new_key_replaces_the_old_only_when_confirmed(client: FlaskClient, patient: Person) -> None:
    old = make_key(client, patient)
    new = begin(client, patient).json
    assert confirm(client, patient, {str(p): "abandon" for p in new["confirm"]}).status_code == 422
    assert recover(client, patient.username, new["words"]).json["error"] == NO_MATCH  # not active yet
    assert recover(client, patient.username, old).status_code == 204  # the old one still is

    again = sign_in(client, patient.username, NEW_PASSWORD).json
    patient.token = again["token"]
    assert confirm(client, patient, answers(new)).status_code == 200
    assert recover(client, patient.username, old, "another-fresh-meadow-19").json["error"] == NO_MATCH
    assert recover(client, patient.username, new["words"], "another-fresh-meadow-19").status_code == 204


def test_reset_keeps_records_and_grants_ends_sessions_and_is_logged(
    app: Flask, client: FlaskClient, patient: Person, doctor: Person, other_doctor: Person
) -> None:
    record_id = write(client, other_doctor, patient, "Cardiology letter")
    granted = client.post("/api/v1/grants", json={"doctor_id": doctor.id}, headers=patient.headers)
    assert granted.status_code == 201
    words = make_key(client, patient)
    second_session = sign_in(client, patient.username, PASSWORD).json["token"]

    typed = "  ".join(f"{n}. {w.upper()}" for n, w in enumerate(words, start=1))  # as written on paper
    assert recover(client, patient.username, typed).status_code == 204

    for token in (patient.token, second_session):
        assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert sign_in(client, patient.username, PASSWORD).status_code == 401
    signed_in = sign_in(client, patient.username, NEW_PASSWORD)
    assert signed_in.status_code == 200
    [notice] = signed_in.json["notices"]
    assert notice["kind"] == "recovered" and notice["method"] == "recovery_key" and notice["at"].endswith("Z")
    patient.token = signed_in.json["token"]
    assert sign_in(client, patient.username, NEW_PASSWORD).json["notices"] == []  # told once

    opened = client.get(f"/api/v1/records/{record_id}", headers=patient.headers)
    assert opened.status_code == 200 and opened.json["title"] == "Cardiology letter"
    assert client.get(f"/api/v1/records/{record_id}", headers=doctor.headers).json["title"] == "Cardiology letter"
    new_grant = client.post("/api/v1/grants", json={"doctor_id": other_doctor.id}, headers=patient.headers)
    assert new_grant.status_code == 201  # the same private keys sign and re-encrypt
    assert status(client, patient)["set"] is True  # the key still works for the next time

    log = client.get("/api/v1/access-log", headers=patient.headers).json["entries"]
    events = [e for e in log if e["record"] is None]
    assert [(e["mode"], e["event"], e["reader"]["id"]) for e in events] == [
        ("recovery_key", "Password reset with your recovery key", patient.id)
    ]

    produce(app)
    [row] = recover_rows()
    assert row.status == "committed" and row.block_height is not None
    assert row.hash == events[0]["tx_hash"]
    tx = decode_transaction(row.encoded)
    user = db.session.scalar(select(User).where(User.username == patient.username))
    assert tx.signer == user.key_id
    assert tx.payload == {"account": patient.id, "method": "recovery_key", "at": tx.payload["at"]}


def test_a_reset_closes_the_accounts_chat_connections(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    words = make_key(client, patient)
    second_session = sign_in(client, patient.username, PASSWORD).json["token"]
    sockets = [socketio.test_client(app, namespace=NS, auth={"token": t}) for t in (patient.token, second_session)]
    bystander = socketio.test_client(app, namespace=NS, auth={"token": other_patient.token})
    assert all(socket.is_connected(NS) for socket in [*sockets, bystander])
    assert recover(client, patient.username, Mnemonic("english").generate(128)).status_code == 401
    assert recover_with_code(client, patient.username).status_code == 401
    assert all(socket.is_connected(NS) for socket in sockets)  # a refused proof ends nothing
    assert recover(client, patient.username, words).status_code == 204
    assert not any(socket.is_connected(NS) for socket in sockets)  # at once: their sessions have ended
    assert bystander.is_connected(NS)


@pytest.mark.parametrize(
    "case", ["other_words", "mistyped_word", "unknown_name", "doctor_name", "no_key_yet", "tampered_wrap", "eleven"]
)
def test_invalid_recovery_is_one_answer_and_changes_nothing(
    client: FlaskClient, patient: Person, other_patient: Person, doctor: Person, case: str
) -> None:
    words = make_key(client, patient)
    username, phrase = patient.username, " ".join(words)
    if case == "other_words":
        phrase = Mnemonic("english").generate(128)
    elif case == "mistyped_word":
        phrase = " ".join([*words[:5], "zoo" if words[5] != "zoo" else "zone", *words[6:]])
    elif case == "unknown_name":
        username = "nobody.here"
    elif case == "doctor_name":
        username = doctor.username
    elif case == "no_key_yet":
        username = other_patient.username
    elif case == "eleven":
        phrase = " ".join(words[:11])
    elif case == "tampered_wrap":
        user = db.session.scalar(select(User).where(User.username == patient.username))
        wrap = bytearray(user.recovery_wrapped_user_key)
        wrap[-1] ^= 1
        user.recovery_wrapped_user_key = bytes(wrap)
        db.session.commit()
    before = {u.username: u.wrapped_user_key for u in db.session.scalars(select(User))}

    refused = recover(client, username, phrase)
    assert refused.status_code == 401 and refused.json["error"] == NO_MATCH
    db.session.expire_all()
    assert {u.username: u.wrapped_user_key for u in db.session.scalars(select(User))} == before
    assert client.get("/api/v1/me", headers=patient.headers).status_code == 200  # the session lives
    assert sign_in(client, patient.username, PASSWORD).json["notices"] == []
    assert recover_rows() == []
    assert db.session.scalar(select(func.count()).select_from(AccessEntry)) == 0


def test_invalid_new_password_is_refused_before_anything(client: FlaskClient, patient: Person) -> None:
    words = make_key(client, patient)
    weak = recover(client, patient.username, words, "password123")
    assert weak.status_code == 422 and "too easy to guess" in weak.json["error"]["message"]
    assert client.get("/api/v1/me", headers=patient.headers).status_code == 200
    assert sign_in(client, patient.username, PASSWORD).status_code == 200


def test_invalid_password_when_making_a_key_keeps_the_session(client: FlaskClient, patient: Person) -> None:
    wrong = begin(client, patient, "not my password at all")
    assert wrong.status_code == 422 and wrong.json["error"]["message"] == "The password is not right."
    assert status(client, patient) == {"set": False, "set_at": None, "pending": False}
    assert client.get("/api/v1/me", headers=patient.headers).status_code == 200


def test_non_patients_have_no_recovery_key(client: FlaskClient, doctor: Person, admin: Person) -> None:
    for person in (doctor, admin):
        for answer in (
            client.get("/api/v1/account/recovery-key", headers=person.headers),
            begin(client, person),
            confirm(client, person, {"1": "abandon", "2": "ability"}),
        ):
            assert answer.status_code == 403
            assert answer.json["error"]["message"] == "Only patients of this hospital have a recovery key."
    assert client.post("/api/v1/account/recovery-key", json={"password": PASSWORD}).status_code == 401


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    for module in ("portal.api.routes", "portal.api.recovery"):
        monkeypatch.setattr(f"{module}.utcnow", clock)
    return clock


def test_recovery_is_throttled_like_sign_in(client: FlaskClient, patient: Person, clock: Clock) -> None:
    words = make_key(client, patient)
    for _ in range(4):  # 3 answered at once, then the 4th sets a 1 s wait
        assert recover(client, patient.username, Mnemonic("english").generate(128)).status_code == 401
    waiting = recover(client, patient.username, words, address="203.0.113.40")  # the right key waits too
    assert waiting.status_code == 429 and waiting.headers["Retry-After"] == "1"
    assert sign_in(client, patient.username, PASSWORD).status_code == 429  # one count for both doors
    clock.advance(1)
    assert recover(client, patient.username, words).status_code == 204


def test_recovery_is_throttled_per_address_too(client: FlaskClient, clock: Clock) -> None:
    """Many names tried from one address: the address waits as at sign-in (5 times the account's
    free failures), whichever name comes next."""
    for n in range(16):
        key = Mnemonic("english").generate(128)
        assert recover(client, f"someone.{n}", key, address="203.0.113.41").status_code == 401
    refused = recover(client, "someone.else", Mnemonic("english").generate(128), address="203.0.113.41")
    assert refused.status_code == 429 and "your network address" in refused.json["error"]["message"]


@pytest.mark.parametrize("case", ["unknown_name", "no_case", "malformed", "patient_with_a_key"])
def test_a_wrong_desk_code_is_the_same_answer_and_changes_nothing(
    client: FlaskClient, patient: Person, case: str
) -> None:
    username, code = patient.username, DESK_CODE
    if case == "unknown_name":
        username = "nobody.here"
    elif case == "malformed":
        code = "not a code"
    elif case == "patient_with_a_key":
        make_key(client, patient)
    before = {u.username: u.wrapped_user_key for u in db.session.scalars(select(User))}
    refused = recover_with_code(client, username, code)
    assert refused.status_code == 401 and refused.json["error"] == NO_MATCH
    db.session.expire_all()
    assert {u.username: u.wrapped_user_key for u in db.session.scalars(select(User))} == before
    assert client.get("/api/v1/me", headers=patient.headers).status_code == 200


def test_a_weak_password_is_refused_before_the_desk_code_is_tried(client: FlaskClient, patient: Person) -> None:
    for _ in range(6):  # not counted as failures
        weak = recover_with_code(client, patient.username, password="password123")
        assert weak.status_code == 422 and "too easy to guess" in weak.json["error"]["message"]
    assert sign_in(client, patient.username, PASSWORD).status_code == 200


def test_desk_codes_are_throttled_with_sign_in_and_recovery_keys(
    client: FlaskClient, patient: Person, clock: Clock
) -> None:
    words = make_key(client, patient)
    for _ in range(4):  # 3 answered at once, then the 4th sets a 1 s wait
        assert recover_with_code(client, patient.username).status_code == 401
    waiting = recover_with_code(client, patient.username)
    assert waiting.status_code == 429 and waiting.headers["Retry-After"] == "1"
    assert recover(client, patient.username, words, address="203.0.113.40").status_code == 429  # one count
    assert sign_in(client, patient.username, PASSWORD).status_code == 429  # for every door
    clock.advance(1)
    assert recover(client, patient.username, words).status_code == 204


@pytest.mark.parametrize(
    ("proofs", "message"),
    [
        ({}, recovery_api.NO_PROOF),
        ({"recovery_key": "apple " * 12, "desk_code": DESK_CODE}, recovery_api.TWO_PROOFS),
        ({"recovery_key": None, "desk_code": None}, recovery_api.TWO_PROOFS),
        ({"desk_code": 7}, "`desk_code` must be text."),
        ({"recovery_key": ["apple"]}, "`recovery_key` must be text."),
    ],
)
def test_a_reset_takes_exactly_one_proof(
    client: FlaskClient, patient: Person, proofs: dict[str, Any], message: str
) -> None:
    body = {"username": patient.username, "new_password": NEW_PASSWORD, **proofs}
    refused = client.post("/api/v1/auth/recover", json=body)
    assert refused.status_code == 422 and refused.json["error"]["message"] == message
    missing = client.post("/api/v1/auth/recover", json={"username": patient.username, "desk_code": DESK_CODE})
    assert missing.status_code == 422 and missing.json["error"]["fields"] == {
        "new_password": "`new_password` is required."
    }
    assert client.get("/api/v1/me", headers=patient.headers).status_code == 200
    assert sign_in(client, patient.username, PASSWORD).status_code == 200


@pytest.mark.parametrize(
    "body", [{}, {"words": "apple river"}, {"words": {"3": 7}}, {"words": None}, {"words": ["apple", "river"]}]
)
def test_invalid_confirm_body(client: FlaskClient, patient: Person, body: dict[str, Any]) -> None:
    begin(client, patient)
    refused = client.post("/api/v1/account/recovery-key/confirm", json=body, headers=patient.headers)
    assert refused.status_code == 422, refused.json
    if not isinstance(body.get("words"), dict):
        message = '`words` must map the two positions asked for to words, e.g. {"3": "apple", "9": "river"}.'
        assert refused.json["error"]["fields"] == {"words": message}
    assert status(client, patient)["set"] is False


def test_wrong_passwords_when_making_a_key_count_like_failed_sign_ins(
    client: FlaskClient, patient: Person, clock: Clock
) -> None:
    """A signed-in session (a phone left unlocked) cannot guess the password faster here."""
    for _ in range(4):
        assert begin(client, patient, "not my password at all").status_code == 422
    waiting = begin(client, patient)
    assert waiting.status_code == 429 and waiting.headers["Retry-After"] == "1"
    assert client.get("/api/v1/me", headers=patient.headers).status_code == 200
    clock.advance(1)
    assert begin(client, patient).status_code == 201
