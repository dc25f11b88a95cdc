"""Chat: identity keys on the ledger (REST) and the /chat events (Flask-SocketIO's test client):
membership, store-then-relay, delivery until acknowledged, history, limits, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from flask_socketio import SocketIOTestClient

from core.encoding import b64e
from core.ledger import decode_transaction
from portal.extensions import db, socketio
from portal.models import ChatMessage, LedgerTransaction
from portal.services import ledger
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


def received(client: SocketIOTestClient, *names: str) -> list[dict[str, Any]]:
    """Payloads of the received events named `names`, in order."""
    out = []
    for item in client.get_received(NS):
        if item["name"] in names:
            args = item["args"]
            out.append(args[0] if isinstance(args, list) else args)
    return out


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
    assert tx.payload == {"account": patient.id, "key": first_key, "fingerprint": registered["fingerprint"]}
    height = produce(app)
    assert height is not None
    assert ledger.verify_chain().valid
    assert client.get("/api/v1/chat/key", headers=patient.headers).json["key"]["height"] == height
    again = client.put("/api/v1/chat/key", json={"key": first_key}, headers=patient.headers).json["key"]
    assert again["tx"] == registered["tx"]  # the same key twice is one registration

    seen = client.get(f"/api/v1/chat/keys/{pseudonym(patient)}", headers=other_patient.headers).json["key"]
    assert (seen["key"], seen["tx"], seen["height"], seen["previous"]) == (first_key, registered["tx"], height, [])
    second_key = p256()
    client.put("/api/v1/chat/key", json={"key": second_key}, headers=patient.headers)
    seen = client.get(f"/api/v1/chat/keys/{pseudonym(patient)}", headers=other_patient.headers).json["key"]
    assert seen["key"] == second_key and seen["height"] is None
    assert [(k["key"], k["tx"]) for k in seen["previous"]] == [(first_key, registered["tx"])]
    assert seen["previous"][0]["superseded_at"] is not None


def test_invalid_chat_key_lookups(client: FlaskClient, patient: Person, other_patient: Person, carol: Person) -> None:
    pending = connect(client, patient, other_patient, accept=False)
    client.put("/api/v1/chat/key", json={"key": p256()}, headers=patient.headers)
    refused = (403, "forbidden", "You can see the chat key of a patient you are connected with only.")
    assert error(client.get(f"/api/v1/chat/keys/{pseudonym(patient)}", headers=other_patient.headers)) == refused
    put_profile(client, carol, [HEADACHE])
    assert error(client.get(f"/api/v1/chat/keys/{pseudonym(patient)}", headers=carol.headers)) == refused
    client.post(f"/api/v1/connections/{pending}/accept", headers=other_patient.headers)
    answer = client.get(f"/api/v1/chat/keys/{pseudonym(other_patient)}", headers=patient.headers)
    assert error(answer) == (404, "not_found", "This patient has not registered a chat key yet.")
    answer = client.get("/api/v1/chat/keys/nobody-here-0000", headers=patient.headers)
    assert error(answer) == (404, "not_found", "No patient has this pseudonym.")
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


def test_session_ended_mid_connection(app: Flask, client: FlaskClient, patient: Person, conversation: str) -> None:
    alice = sio(app, patient)
    assert call(alice, "join", {"conversation": conversation})["ok"] is True
    client.delete("/api/v1/auth/token", headers=patient.headers)
    answer = call(alice, "send", {"conversation": conversation, "envelope": envelope(0)})
    assert answer == {"error": {"code": "unauthorized", "message": "Your session has ended; sign in again."}}
    assert not alice.is_connected(NS)


# -- membership -----------------------------------------------------------------------------


def test_join_answers_peer_and_role(app: Flask, patient: Person, other_patient: Person, conversation: str) -> None:
    assert call(sio(app, patient), "join", {"conversation": conversation}) == {
        "ok": True,
        "conversation": conversation,
        "peer": pseudonym(other_patient),
        "role": "initiator",
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
        {"conversation": conversation, "id": sent["id"], "from": pseudonym(patient), "message": hello,
         "sent_at": sent["sent_at"]}
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
    assert call(bob, "sync", {}) == {"ok": True, "count": 1}
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
BIG_ENVELOPE = "The envelope is larger than 65536 bytes."
BIG_MESSAGE = "The message is larger than 4096 bytes."


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
