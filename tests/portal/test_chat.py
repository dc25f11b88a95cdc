"""Chat: identity keys on the ledger (REST) and the /chat events (Flask-SocketIO's test client):
membership, store-then-relay, delivery until acknowledged, history, limits, refusals."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from flask_socketio import SocketIOTestClient
from sqlalchemy import update

from core.encoding import b64d, b64e
from core.ledger import decode_transaction
from portal import runtime
from portal.chat import events
from portal.extensions import db, socketio
from portal.models import AuthSession, ChatKey, ChatMessage, LedgerTransaction, utcnow
from portal.services import accounts, chat, ledger
from tests.conftest import Person, make_person, produce
from tests.portal.test_matching import HEADACHE, error, pseudonym, put_profile
from tests.portal.test_pages import log_in

NS = "/chat"


def p256() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return b64e(key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))


@pytest.fixture
def carol(client: FlaskClient) -> Person:
    return make_person(client, "patient", "carol", "Carol Diaz")


def connect(client: FlaskClient, asker: Person, asked: Person, accept: bool = True) -> str:
    """Profiles for both, a request and (by default) its acceptance: the conversation id."""
    put_profile(client, asker, [HEADACHE])
    put_profile(client, asked, [HEADACHE])
    answer = client.post(f"/api/v1/matches/{pseudonym(asked)}/connect", headers=asker.headers)
    assert answer.status_code == 201, answer.json
    conversation = answer.json["connection"]["id"]
    if accept:
        assert client.post(f"/api/v1/connections/{conversation}/accept", headers=asked.headers).status_code == 200
    return conversation


@pytest.fixture
def conversation(client: FlaskClient, patient: Person, other_patient: Person) -> str:
    return connect(client, patient, other_patient)


def sio(app: Flask, who: Person | None, **kwargs: Any) -> SocketIOTestClient:
    auth = {"token": who.token} if who else None
    return socketio.test_client(app, namespace=NS, auth=auth, **kwargs)


def call(client: SocketIOTestClient, event: str, *args: Any) -> Any:
    return client.emit(event, *args, namespace=NS, callback=True)


def payload(item: dict[str, Any]) -> Any:
    args = item["args"]
    return args[0] if isinstance(args, list) else args


def received(client: SocketIOTestClient, *names: str) -> list[dict[str, Any]]:
    """Payloads of the received events named `names`, in order."""
    return [payload(item) for item in client.get_received(NS) if item["name"] in names]


def envelope(n: int) -> dict[str, Any]:
    return {"v": 1, "seq": n, "ct": b64e(bytes([n]) * 40)}


# -- identity keys --------------------------------------------------------------------------


def test_chat_key_goes_to_the_ledger_and_peers_see_changes(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person, conversation: str
) -> None:
    assert client.get("/api/v1/chat/key", headers=patient.headers).json == {"key": None}
    first_key = p256()
    first = client.put("/api/v1/chat/key", json={"key": first_key}, headers=patient.headers)
    assert first.status_code == 200
    registered = first.json["key"]
    assert registered["key"] == first_key and registered["height"] is None and len(registered["fingerprint"]) == 64
    row = db.session.get(LedgerTransaction, registered["tx"])
    assert row is not None and row.kind == "chat_key"
    tx = decode_transaction(row.encoded)
    salt = b64d(registered["salt"])
    assert len(salt) == 16
    assert tx.payload == {
        "subject": hashlib.sha256(salt + pseudonym(patient).encode()).hexdigest(),
        "salt": registered["salt"],
        "key": first_key,
        "fingerprint": registered["fingerprint"],
    }
    assert registered["subject"] == tx.payload["subject"]
    assert tx.signer == runtime.node_key().key_id  # signed by this node: no account key links it
    assert patient.id.encode() not in row.encoded and pseudonym(patient).encode() not in row.encoded
    height = produce(app)
    assert height is not None
    assert ledger.verify_chain().valid
    assert client.get("/api/v1/chat/key", headers=patient.headers).json["key"]["height"] == height
    again = client.put("/api/v1/chat/key", json={"key": first_key}, headers=patient.headers).json["key"]
    assert again["tx"] == registered["tx"]  # the same key twice is one registration

    seen = client.get(f"/api/v1/chat/keys/{pseudonym(patient)}", headers=other_patient.headers).json["key"]
    assert (seen["key"], seen["tx"], seen["height"], seen["previous"]) == (first_key, registered["tx"], height, [])
    assert (seen["salt"], seen["subject"]) == (registered["salt"], registered["subject"])
    second_key = p256()
    client.put("/api/v1/chat/key", json={"key": second_key}, headers=patient.headers)
    seen = client.get(f"/api/v1/chat/keys/{pseudonym(patient)}", headers=other_patient.headers).json["key"]
    assert seen["key"] == second_key and seen["height"] is None
    assert [(k["key"], k["tx"]) for k in seen["previous"]] == [(first_key, registered["tx"])]
    assert seen["previous"][0]["superseded_at"] is not None
    assert seen["salt"] != registered["salt"]  # a fresh salt: the two registrations do not link on the ledger
    produce(app)
    assert ledger.verify_chain().valid


def test_invalid_chat_key_lookups(client: FlaskClient, patient: Person, other_patient: Person, carol: Person) -> None:
    pending = connect(client, patient, other_patient, accept=False)
    client.put("/api/v1/chat/key", json={"key": p256()}, headers=patient.headers)
    refused = (404, "not_found", "No chat key for this pseudonym.")
    assert error(client.get(f"/api/v1/chat/keys/{pseudonym(patient)}", headers=other_patient.headers)) == refused
    put_profile(client, carol, [HEADACHE])
    assert error(client.get(f"/api/v1/chat/keys/{pseudonym(patient)}", headers=carol.headers)) == refused
    client.post(f"/api/v1/connections/{pending}/accept", headers=other_patient.headers)
    answer = client.get(f"/api/v1/chat/keys/{pseudonym(other_patient)}", headers=patient.headers)
    assert error(answer) == (404, "not_found", "This patient has not registered a chat key yet.")
    answer = client.get("/api/v1/chat/keys/nobody-here-0000", headers=patient.headers)
    assert error(answer) == refused
    client.post("/api/v1/blocks", json={"pseudonym": pseudonym(patient)}, headers=other_patient.headers)
    assert error(client.get(f"/api/v1/chat/keys/{pseudonym(patient)}", headers=other_patient.headers)) == refused


@pytest.mark.parametrize(
    "body",
    [{}, {"key": "abc"}, {"key": 5}, {"key": b64e(b"\x04" + bytes(64))}, {"key": "A" * 400}],
)
def test_invalid_chat_key(client: FlaskClient, patient: Person, body: dict[str, Any]) -> None:
    answer = client.put("/api/v1/chat/key", json=body, headers=patient.headers)
    assert error(answer) == (
        422,
        "validation_failed",
        "`key` must be a P-256 public key: the 65-byte uncompressed point in base64url.",
    )


def test_invalid_chat_key_compressed(client: FlaskClient, patient: Person) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = b64e(key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint))
    answer = client.put("/api/v1/chat/key", json={"key": compressed}, headers=patient.headers)
    assert answer.status_code == 422


# -- connecting to /chat --------------------------------------------------------------------


def test_invalid_socket_connect_without_valid_token(app: Flask, client: FlaskClient, patient: Person) -> None:
    assert not sio(app, None).is_connected(NS)
    assert not socketio.test_client(app, namespace=NS, auth={"token": "forged"}).is_connected(NS)
    client.delete("/api/v1/auth/token", headers=patient.headers)
    assert not sio(app, patient).is_connected(NS)  # a token that was signed out


def test_invalid_socket_connect_as_doctor(app: Flask, client: FlaskClient, doctor: Person) -> None:
    assert not sio(app, doctor).is_connected(NS)
    log_in(client, doctor.username)  # the portal's session cookie is read, and still only patients chat
    assert not socketio.test_client(app, namespace=NS, flask_test_client=client).is_connected(NS)


def test_sign_out_disconnects_that_sessions_sockets(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person, conversation: str
) -> None:
    alice, bob = sio(app, patient), sio(app, other_patient)
    second_token = client.post("/api/v1/auth/token", json={"username": "alice", "password": patient.password}).json
    alice_phone = socketio.test_client(app, namespace=NS, auth={"token": second_token["token"]})
    assert call(alice, "join", {"conversation": conversation})["ok"] is True
    assert client.delete("/api/v1/auth/token", headers=patient.headers).status_code == 204
    assert not alice.is_connected(NS)  # at once, not at its next event
    assert alice_phone.is_connected(NS) and bob.is_connected(NS)  # other sessions stay
    alice_phone.get_received(NS)
    call(bob, "send", {"conversation": conversation, "envelope": envelope(1)})
    assert [m["envelope"] for m in received(alice_phone, "message")] == [envelope(1)]


def test_a_password_change_disconnects_the_other_sessions_sockets(
    app: Flask, client: FlaskClient, patient: Person, conversation: str
) -> None:
    current = sio(app, patient)
    other_token = client.post("/api/v1/auth/token", json={"username": "alice", "password": patient.password}).json
    other_phone = socketio.test_client(app, namespace=NS, auth={"token": other_token["token"]})
    assert other_phone.is_connected(NS)
    wrong = {"current_password": "not-the-password", "new_password": "a-brand-new-password"}
    assert client.post("/api/v1/me/password", json=wrong, headers=patient.headers).status_code == 401
    assert other_phone.is_connected(NS)  # a refused change ends nothing
    change = {"current_password": patient.password, "new_password": "a-brand-new-password"}
    assert client.post("/api/v1/me/password", json=change, headers=patient.headers).status_code == 204
    assert not other_phone.is_connected(NS)  # at once: its session has ended
    assert current.is_connected(NS)  # the session that changed the password goes on
    assert call(current, "join", {"conversation": conversation})["ok"] is True


def test_session_expired_mid_connection(app: Flask, patient: Person, conversation: str) -> None:
    alice = sio(app, patient)
    assert call(alice, "join", {"conversation": conversation})["ok"] is True
    db.session.execute(update(AuthSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    answer = call(alice, "send", {"conversation": conversation, "envelope": envelope(0)})
    assert answer == {"error": {"code": "unauthorized", "message": "Your session has ended; sign in again."}}
    assert not alice.is_connected(NS)
    assert db.session.query(ChatMessage).count() == 0


# -- membership -----------------------------------------------------------------------------


def test_join_answers_peer_and_role(app: Flask, patient: Person, other_patient: Person, conversation: str) -> None:
    assert call(sio(app, patient), "join", {"conversation": conversation}) == {
        "ok": True,
        "conversation": conversation,
        "peer": pseudonym(other_patient),
        "self": pseudonym(patient),
        "role": "initiator",
        "more": False,
    }
    assert call(sio(app, other_patient), "join", {"conversation": int(conversation)})["role"] == "responder"


def test_invalid_someone_elses_conversation(app: Flask, carol: Person, conversation: str) -> None:
    intruder = sio(app, carol)
    refused = {"error": {"code": "forbidden", "message": "You are not a member of this conversation."}}
    assert call(intruder, "join", {"conversation": conversation}) == refused
    assert call(intruder, "send", {"conversation": conversation, "envelope": envelope(0)}) == refused
    assert call(intruder, "handshake", {"conversation": conversation, "message": {"type": "hello"}}) == refused
    assert call(intruder, "history", {"conversation": conversation}) == refused
    assert call(intruder, "ack", {"conversation": conversation, "up_to": 10}) == refused
    assert call(intruder, "join", {"conversation": "999"}) == refused  # no hint whether it exists
    assert db.session.query(ChatMessage).count() == 0


def test_invalid_conversation_not_yet_accepted(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    pending = connect(client, patient, other_patient, accept=False)
    answer = call(sio(app, patient), "send", {"conversation": pending, "envelope": envelope(0)})
    assert answer == {"error": {"code": "conflict", "message": "This conversation has not been accepted."}}


def test_invalid_after_a_block(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person, conversation: str
) -> None:
    client.post("/api/v1/blocks", json={"pseudonym": pseudonym(patient)}, headers=other_patient.headers)
    closed = {
        "error": {"code": "forbidden", "message": "This conversation is closed: one of you has blocked the other."}
    }
    assert call(sio(app, patient), "send", {"conversation": conversation, "envelope": envelope(0)}) == closed
    assert call(sio(app, other_patient), "join", {"conversation": conversation}) == closed


# -- relay, delivery, history ---------------------------------------------------------------


def test_relay_live_and_deliver_offline_items_once_in_order(
    app: Flask, patient: Person, other_patient: Person, conversation: str
) -> None:
    alice, bob = sio(app, patient), sio(app, other_patient)
    for client in (alice, bob):
        call(client, "join", {"conversation": conversation})
        client.get_received(NS)
    hello = {"type": "hello", "v": 1, "eph": "A" * 87}
    sent = call(alice, "handshake", {"conversation": conversation, "message": hello})
    assert sent["ok"] is True
    live = received(bob, "handshake")
    assert live == [
        {"conversation": conversation, "id": sent["id"], "from": pseudonym(patient), "from_device": "",
         "to_device": "", "own": False, "message": hello, "sent_at": sent["sent_at"]}
    ]  # fmt: skip
    assert received(alice, "handshake", "message") == []  # nothing echoed to the sender
    assert call(bob, "ack", {"conversation": conversation, "up_to": sent["id"]}) == {"ok": True}

    bob.disconnect(NS)
    ids = [call(alice, "send", {"conversation": conversation, "envelope": envelope(n)})["id"] for n in range(3)]
    assert ids == sorted(ids)
    bob = sio(app, other_patient)  # back online: the three, in order, once, and the unread count
    events = bob.get_received(NS)
    messages = [e["args"][0] if isinstance(e["args"], list) else e["args"] for e in events if e["name"] == "message"]
    assert [(m["id"], m["envelope"]) for m in messages] == [(i, envelope(n)) for n, i in enumerate(ids)]
    assert {"conversation": conversation, "count": 3} in [e["args"][0] for e in events if e["name"] == "unread"]
    assert call(bob, "join", {"conversation": conversation})["ok"] is True
    assert received(bob, "message") == []  # joining does not send them a second time

    assert call(bob, "ack", {"conversation": conversation, "up_to": ids[1]}) == {"ok": True}
    assert received(bob, "unread") == [{"conversation": conversation, "count": 1}]
    assert call(bob, "sync", {}) == {"ok": True, "count": 1, "more": False}
    assert [m["id"] for m in received(bob, "message")] == [ids[2]]
    call(bob, "ack", {"conversation": conversation, "up_to": ids[2]})
    bob.disconnect(NS)
    assert received(sio(app, other_patient), "message", "handshake") == []  # acknowledged: never again


def test_history_pages_backwards(app: Flask, patient: Person, other_patient: Person, conversation: str) -> None:
    alice = sio(app, patient)
    ids = [call(alice, "send", {"conversation": conversation, "envelope": envelope(n)})["id"] for n in range(5)]
    bob = sio(app, other_patient)
    page = call(bob, "history", {"conversation": conversation, "limit": 2})
    assert page["ok"] is True and page["more"] is True
    assert [(m["id"], m["kind"], m["from"], m["body"]) for m in page["messages"]] == [
        (ids[3], "message", pseudonym(patient), envelope(3)),
        (ids[4], "message", pseudonym(patient), envelope(4)),
    ]
    page = call(bob, "history", {"conversation": conversation, "before": ids[3], "limit": 2})
    assert [m["id"] for m in page["messages"]] == ids[1:3] and page["more"] is True
    page = call(bob, "history", {"conversation": conversation, "before": ids[1], "limit": 2})
    assert [m["id"] for m in page["messages"]] == ids[:1] and page["more"] is False
    assert call(alice, "history", {"conversation": conversation})["messages"][-1]["id"] == ids[4]


def test_stored_as_sent(app: Flask, patient: Person, conversation: str) -> None:
    call(sio(app, patient), "send", {"conversation": conversation, "envelope": envelope(7)})
    row = db.session.query(ChatMessage).one()
    assert row.kind == "message" and row.delivered_at is None
    assert '"ct":"' + envelope(7)["ct"] + '"' in row.body


# -- limits and bad input -------------------------------------------------------------------


def test_send_is_rate_limited(app: Flask, patient: Person, conversation: str) -> None:
    app.config["CHAT_SEND_RATE_PER_MINUTE"] = 3
    alice = sio(app, patient)
    for n in range(3):
        assert call(alice, "send", {"conversation": conversation, "envelope": envelope(n)})["ok"] is True
    assert call(alice, "send", {"conversation": conversation, "envelope": envelope(3)}) == {
        "error": {"code": "rate_limited", "message": "You can send 3 messages a minute; wait a moment."}
    }


NOT_MEMBER = "You are not a member of this conversation."
NOT_ENVELOPE = "`envelope` must be a non-empty JSON object."
NOT_MESSAGE = "`message` must be a non-empty JSON object."
BAD = "validation_failed"
LONE_SURROGATE = "`envelope.ct` holds an invalid character (a lone surrogate)."
BAD_CHAR = "`cid` holds an invalid character (a lone surrogate)."
BIG_ENVELOPE = "The envelope is larger than 65536 bytes."
BIG_MESSAGE = "The message is larger than 4096 bytes."
BAD_CID = "`cid` must be 1-64 characters: letters, digits, _ or -."


@pytest.mark.parametrize(
    ("event", "data", "code", "message"),
    [
        ("send", {"envelope": {"ct": "x"}}, "forbidden", NOT_MEMBER),
        ("send", {"conversation": "C"}, BAD, NOT_ENVELOPE),
        ("send", {"conversation": "C", "envelope": {}}, BAD, NOT_ENVELOPE),
        ("send", {"conversation": "C", "envelope": "ct"}, BAD, NOT_ENVELOPE),
        ("send", {"conversation": "C", "envelope": {"ct": "x" * 70000}}, "too_large", BIG_ENVELOPE),
        ("handshake", {"conversation": "C", "message": {"e": "x" * 5000}}, "too_large", BIG_MESSAGE),
        ("handshake", {"conversation": "C", "message": ["hello"]}, BAD, NOT_MESSAGE),
        ("ack", {"conversation": "C", "up_to": "7"}, "validation_failed", "`up_to` must be a message id."),
        ("ack", {"conversation": "C", "up_to": -1}, "validation_failed", "`up_to` must be a message id."),
        ("history", {"conversation": "C", "limit": 0}, "validation_failed", "`limit` must be 1-100."),
        ("history", {"conversation": "C", "limit": 101}, "validation_failed", "`limit` must be 1-100."),
        ("history", {"conversation": "C", "before": "x"}, BAD, "`before` must be a message id or null."),
        ("history", {"conversation": "C", "before": 2**63}, BAD, "`before` is a number beyond 64 bits."),
        ("history", {"conversation": "C", "after": 0}, BAD, "`after` must be a message id or null."),
        ("history", {"conversation": "C", "after": 2**70}, BAD, "`after` is a number beyond 64 bits."),
        ("history", {"conversation": "C", "after": 1, "before": 5}, BAD, "Send `before` or `after`, not both."),
        ("ack", {"conversation": "C", "up_to": 2**63}, BAD, "`up_to` is a number beyond 64 bits."),
        ("ack", {"conversation": "C", "up_to": 0}, BAD, "`up_to` must be a message id."),
        ("join", {"conversation": 2**64}, BAD, "`conversation` is a number beyond 64 bits."),
        ("join", {"conversation": 2**63 - 1}, "forbidden", NOT_MEMBER),
        ("join", {"conversation": "99999999999999999999"}, "forbidden", NOT_MEMBER),
        ("join", {"conversation": "²"}, "forbidden", NOT_MEMBER),
        ("send", {"conversation": 2**64, "envelope": {"ct": "x"}}, BAD, "`conversation` is a number beyond 64 bits."),
        ("send", {"conversation": "C", "envelope": {"ct": "\ud800"}}, BAD, LONE_SURROGATE),
        ("send", {"conversation": "C", "envelope": {"ct": "x"}, "cid": "\udfff"}, BAD, BAD_CHAR),
        ("send", {"conversation": "C", "envelope": {"ct": "x"}, "cid": "a b"}, BAD, BAD_CID),
        ("send", {"conversation": "C", "envelope": {"ct": "x"}, "cid": "x" * 65}, BAD, BAD_CID),
        ("send", {"conversation": "C", "envelope": {"ct": "x"}, "cid": 7}, BAD, BAD_CID),
        ("send", {"conversation": "C", "envelope": {"ct": "x"}, "cid": "abc\n"}, BAD, BAD_CID),
        ("join", {"conversation": "1\n"}, "forbidden", NOT_MEMBER),
        ("join", {"conversation": True}, "forbidden", NOT_MEMBER),
        ("join", {"conversation": "1; DROP TABLE"}, "forbidden", NOT_MEMBER),
        ("join", ["C"], "validation_failed", "`join` takes one JSON object."),
        ("sync", "now", "validation_failed", "`sync` takes one JSON object."),
    ],
)  # fmt: skip
def test_invalid_event_input(
    app: Flask, patient: Person, conversation: str, event: str, data: Any, code: str, message: str
) -> None:
    if isinstance(data, dict) and data.get("conversation") == "C":
        data = {**data, "conversation": conversation}
    answer = call(sio(app, patient), event, data)
    assert answer == {"error": {"code": code, "message": message}}
    assert db.session.query(ChatMessage).count() == 0


def test_connection_events_reach_the_other_patient(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    alice, bob = sio(app, patient), sio(app, other_patient)
    request = client.post(f"/api/v1/matches/{pseudonym(other_patient)}/connect", headers=patient.headers).json
    (told,) = received(bob, "connection")
    assert told["connection"]["id"] == request["connection"]["id"]
    assert (told["connection"]["direction"], told["connection"]["state"]) == ("in", "pending")
    client.post(f"/api/v1/connections/{request['connection']['id']}/accept", headers=other_patient.headers)
    (answered,) = received(alice, "connection")
    assert (answered["connection"]["direction"], answered["connection"]["state"]) == ("out", "accepted")
    assert call(alice, "join", {"conversation": request["connection"]["id"]})["ok"] is True


# -- round 2: delivery order, idempotent sends, backlog limits, races -----------------------


def _two_conversations(client: FlaskClient, bob: Person, alice: Person, carol: Person) -> tuple[str, str]:
    """Alice-Bob (asked first, lower id) and Carol-Bob, both accepted."""
    first = connect(client, alice, bob)
    put_profile(client, carol, [HEADACHE])
    answer = client.post(f"/api/v1/matches/{pseudonym(bob)}/connect", headers=carol.headers)
    second = answer.json["connection"]["id"]
    assert client.post(f"/api/v1/connections/{second}/accept", headers=bob.headers).status_code == 200
    return first, second


def test_backlog_is_sent_before_the_live_room_is_joined(
    app: Flask, patient: Person, other_patient: Person, conversation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = sio(app, patient)
    ids = [call(alice, "send", {"conversation": conversation, "envelope": envelope(n)})["id"] for n in range(3)]
    log: list[tuple[str, Any]] = []
    real_join, real_emit = events.join_room, events.emit
    monkeypatch.setattr(events, "join_room", lambda room: (log.append(("join", room)), real_join(room))[1])
    monkeypatch.setattr(
        events, "emit", lambda name, data, **kw: (log.append((name, data.get("id"))), real_emit(name, data, **kw))[1]
    )
    sio(app, other_patient)
    room = events.conversation_room(int(conversation), accounts.get_user(other_patient.id).id)
    assert [entry for entry in log if entry[0] == "message" or entry == ("join", room)] == [
        ("message", ids[0]),
        ("message", ids[1]),
        ("message", ids[2]),
        ("join", room),
    ]


def test_join_uses_the_conversations_own_cursor(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    """An item of a conversation opened later is sent even when its id is below what other
    conversations already sent on this connection."""
    with_alice, with_carol = _two_conversations(client, other_patient, patient, carol)
    early = call(sio(app, carol), "send", {"conversation": with_carol, "envelope": envelope(1)})["id"]
    client.post("/api/v1/blocks", json={"pseudonym": pseudonym(carol)}, headers=other_patient.headers)
    later = call(sio(app, patient), "send", {"conversation": with_alice, "envelope": envelope(2)})["id"]
    assert early < later
    bob = sio(app, other_patient)
    assert [m["id"] for m in received(bob, "message")] == [later]  # the blocked conversation is closed
    assert client.delete(f"/api/v1/blocks/{pseudonym(carol)}", headers=other_patient.headers).status_code == 204
    assert call(bob, "join", {"conversation": with_carol})["ok"] is True
    assert [(m["id"], m["conversation"]) for m in received(bob, "message")] == [(early, with_carol)]


def test_backlog_over_the_budget_says_more_and_sync_continues(
    app: Flask,
    client: FlaskClient,
    patient: Person,
    other_patient: Person,
    carol: Person,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chat, "MAX_BACKLOG", 2)
    app.config["CHAT_MAX_UNDELIVERED"] = 2  # a round sends at most 2 items
    with_alice, with_carol = _two_conversations(client, other_patient, patient, carol)
    from_alice = [call(sio(app, patient), "send", {"conversation": with_alice, "envelope": envelope(n)})["id"]
                  for n in range(2)]  # fmt: skip
    carol_client = sio(app, carol)
    from_carol = [call(carol_client, "send", {"conversation": with_carol, "envelope": envelope(n)})["id"]
                  for n in range(2)]  # fmt: skip
    bob = sio(app, other_patient)
    got = bob.get_received(NS)
    assert [payload(e)["id"] for e in got if e["name"] == "message"] == from_alice
    assert [payload(e) for e in got if e["name"] == "backlog"] == [{"more": True}]
    call(bob, "ack", {"conversation": with_alice, "up_to": from_alice[-1]})
    assert call(bob, "sync", {}) == {"ok": True, "count": 2, "more": False}
    assert [m["id"] for m in received(bob, "message")] == from_carol
    call(bob, "ack", {"conversation": with_carol, "up_to": from_carol[-1]})
    live = call(carol_client, "send", {"conversation": with_carol, "envelope": envelope(9)})["id"]
    assert [m["id"] for m in received(bob, "message")] == [live]  # sync joined the live room


def test_history_pages_forwards_after_an_id(
    app: Flask, patient: Person, other_patient: Person, conversation: str
) -> None:
    alice = sio(app, patient)
    ids = [call(alice, "send", {"conversation": conversation, "envelope": envelope(n)})["id"] for n in range(5)]
    bob = sio(app, other_patient)
    page = call(bob, "history", {"conversation": conversation, "after": ids[1], "limit": 2})
    assert [m["id"] for m in page["messages"]] == ids[2:4] and page["more"] is True
    page = call(bob, "history", {"conversation": conversation, "after": ids[3], "limit": 2})
    assert [m["id"] for m in page["messages"]] == ids[4:] and page["more"] is False


def test_send_with_the_same_cid_is_stored_once(
    app: Flask, patient: Person, other_patient: Person, conversation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = sio(app, patient), sio(app, other_patient)
    bob.get_received(NS)
    first = call(alice, "send", {"conversation": conversation, "envelope": envelope(1), "cid": "out-1_a"})
    assert first["ok"] is True and first["duplicate"] is False
    again = call(alice, "send", {"conversation": conversation, "envelope": envelope(1), "cid": "out-1_a"})
    assert again == {"ok": True, "id": first["id"], "sent_at": first["sent_at"], "duplicate": True}
    # Two sends of one cid at the same moment: the database keeps one, both get its id.
    real = chat._same_cid
    seen: list[int] = []
    monkeypatch.setattr(chat, "_same_cid", lambda *a: (seen.append(1), None if len(seen) == 1 else real(*a))[1])
    raced = call(alice, "send", {"conversation": conversation, "envelope": envelope(1), "cid": "out-1_a"})
    assert raced == again
    assert [m["id"] for m in received(bob, "message")] == [first["id"]]
    assert db.session.query(ChatMessage).count() == 1
    other = call(alice, "send", {"conversation": conversation, "envelope": envelope(2), "cid": "out-2"})
    assert other["duplicate"] is False and other["id"] > first["id"]


def test_invalid_send_when_the_peer_has_too_many_unread(
    app: Flask, patient: Person, other_patient: Person, conversation: str
) -> None:
    app.config["CHAT_MAX_UNDELIVERED"] = 2
    alice = sio(app, patient)
    ids = [call(alice, "send", {"conversation": conversation, "envelope": envelope(n)})["id"] for n in range(2)]
    assert call(alice, "send", {"conversation": conversation, "envelope": envelope(3)}) == {
        "error": {
            "code": "too_many_unread",
            "message": "The other patient has too many unread messages; try again once they have read some.",
        }
    }
    assert db.session.query(ChatMessage).count() == 2
    call(sio(app, other_patient), "ack", {"conversation": conversation, "up_to": ids[0]})
    assert call(alice, "send", {"conversation": conversation, "envelope": envelope(3)})["ok"] is True


def test_chat_key_registration_race(client: FlaskClient, patient: Person, monkeypatch: pytest.MonkeyPatch) -> None:
    key = p256()
    first = client.put("/api/v1/chat/key", json={"key": key}, headers=patient.headers).json["key"]
    real = chat.current_key
    calls: list[int] = []

    def not_committed_yet(user: Any, device: str = "") -> Any:  # the first look misses the other request's key
        calls.append(1)
        return None if len(calls) % 2 == 1 else real(user, device)

    monkeypatch.setattr(chat, "current_key", not_committed_yet)
    same = client.put("/api/v1/chat/key", json={"key": key}, headers=patient.headers)
    assert same.status_code == 200 and same.json["key"]["tx"] == first["tx"]
    other = client.put("/api/v1/chat/key", json={"key": p256()}, headers=patient.headers)
    assert error(other) == (409, "conflict", "Your chat key changed at the same time; try again.")
    monkeypatch.undo()
    assert db.session.query(ChatKey).filter(ChatKey.superseded_at.is_(None)).count() == 1
    assert client.get("/api/v1/chat/key", headers=patient.headers).json["key"]["tx"] == first["tx"]


def test_largest_ids_are_accepted(app: Flask, patient: Person, other_patient: Person, conversation: str) -> None:
    """2^63-1 is a valid id on every database, even where the id column is a 32-bit INTEGER."""
    sent = call(sio(app, patient), "send", {"conversation": conversation, "envelope": envelope(1)})["id"]
    bob = sio(app, other_patient)
    top = 2**63 - 1
    assert call(bob, "history", {"conversation": conversation, "after": top})["messages"] == []
    page = call(bob, "history", {"conversation": conversation, "before": top})
    assert [m["id"] for m in page["messages"]] == [sent]
    assert call(bob, "ack", {"conversation": conversation, "up_to": top}) == {"ok": True}
    assert db.session.get(ChatMessage, sent).delivered_at is not None
