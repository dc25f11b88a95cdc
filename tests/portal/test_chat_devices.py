"""Chat keys per device: each of a patient's devices registers its own key on the ledger (with a
device id), peers see every device's key, and a lost device is removed from another one, which
revokes its key by a `chat_key_revoke` transaction."""

from __future__ import annotations

import hashlib
import os

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from core.encoding import b64d, b64e
from core.errors import InvalidTransaction
from core.ledger import decode_transaction
from core.ledger.kinds import check_chat_key, check_chat_key_revoke
from portal import runtime
from portal.extensions import db, socketio
from portal.models import ChatKey, ChatMessage, LedgerTransaction, User
from portal.services import chat, ledger
from tests.conftest import Person, make_person, produce
from tests.portal.test_chat import NS, call, connect, envelope, p256, received
from tests.portal.test_matching import error, pseudonym

PHONE, TABLET = b64e(os.urandom(16)), b64e(os.urandom(16))
NO_DEVICE = "No such device of yours."
REMOVED = "This device was removed from your account: it cannot use the chat any more."
BAD_DEVICE = "`device` must be a device id: 16 random bytes in base64url."


def register(client: FlaskClient, who: Person, key: str, device: str | None) -> dict:
    """Register `key` for `device`, signed in on that device (one sign-in per device)."""
    headers = who.headers if device in (None, PHONE) else sign_in(client, who)
    answer = client.put("/api/v1/chat/key", json={"key": key, "device": device}, headers=headers)
    assert answer.status_code == 200, answer.json
    return answer.json["key"]


def peer_view(client: FlaskClient, of: Person, by: Person) -> dict:
    answer = client.get(f"/api/v1/chat/keys/{pseudonym(of)}", headers=by.headers)
    assert answer.status_code == 200, answer.json
    return answer.json["key"]


def ledger_payload(tx_hash: str) -> tuple[str, dict]:
    row = db.session.get(LedgerTransaction, tx_hash)
    assert row is not None
    tx = decode_transaction(row.encoded)
    assert tx.signer == runtime.node_key().key_id
    return row.kind, tx.payload


def test_each_device_has_its_own_key_on_the_ledger(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    connect(client, patient, other_patient)
    phone_key, tablet_key = p256(), p256()
    phone = register(client, patient, phone_key, PHONE)
    tablet = register(client, patient, tablet_key, TABLET)
    assert register(client, patient, phone_key, PHONE)["tx"] == phone["tx"]  # the same again: no new transaction
    for row, key, device in ((phone, phone_key, PHONE), (tablet, tablet_key, TABLET)):
        kind, payload = ledger_payload(row["tx"])
        salt = b64d(payload["salt"])
        assert kind == "chat_key" and payload["device"] == device and payload["key"] == key
        assert payload["subject"] == hashlib.sha256(salt + pseudonym(patient).encode()).hexdigest()
        assert row["device"] == device and row["revoked_at"] is None

    devices = client.get("/api/v1/chat/devices", headers=patient.headers).json["devices"]
    assert [(d["device"], d["key"]) for d in devices] == [(TABLET, tablet_key), (PHONE, phone_key)]
    seen = peer_view(client, patient, other_patient)
    assert [(d["device"], d["key"]) for d in seen["devices"]] == [(TABLET, tablet_key), (PHONE, phone_key)]
    assert (seen["key"], seen["previous"], seen["revoked"]) == (tablet_key, [], [])

    # A new key on the phone supersedes the phone's key only.
    renewed = p256()
    register(client, patient, renewed, PHONE)
    seen = peer_view(client, patient, other_patient)
    assert sorted(d["key"] for d in seen["devices"]) == sorted([tablet_key, renewed])
    assert [k["key"] for k in seen["previous"]] == [phone_key]
    assert produce(app) is not None and ledger.verify_chain().valid


def test_a_key_from_before_device_ids_is_taken_over_by_its_device(
    client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    connect(client, patient, other_patient)
    key = p256()
    legacy = register(client, patient, key, None)
    assert legacy["device"] == "" and "device" not in ledger_payload(legacy["tx"])[1]
    named = register(client, patient, key, PHONE)
    assert named["tx"] != legacy["tx"]
    seen = peer_view(client, patient, other_patient)
    assert [(d["device"], d["key"]) for d in seen["devices"]] == [(PHONE, key)]
    assert [k["tx"] for k in seen["previous"]] == [legacy["tx"]]


def test_invalid_one_key_for_two_devices(client: FlaskClient, patient: Person) -> None:
    key = p256()
    register(client, patient, key, PHONE)
    answer = client.put("/api/v1/chat/key", json={"key": key, "device": TABLET}, headers=sign_in(client, patient))
    assert error(answer) == (409, "conflict", "This chat key is already registered for another of your devices.")


def test_removing_a_lost_device_revokes_its_key_on_the_ledger(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    connect(client, patient, other_patient)
    phone_key, tablet_key = p256(), p256()
    register(client, patient, phone_key, PHONE)
    register(client, patient, tablet_key, TABLET)
    removed = client.delete(f"/api/v1/chat/devices/{TABLET}", headers=patient.headers)
    assert removed.status_code == 200, removed.json
    device = removed.json["device"]
    assert device["device"] == TABLET and device["revoked_at"] is not None and device["revoke_height"] is None
    kind, payload = ledger_payload(device["revoke_tx"])
    salt = b64d(payload["salt"])
    assert kind == "chat_key_revoke"
    assert payload == {
        "subject": hashlib.sha256(salt + pseudonym(patient).encode()).hexdigest(),
        "salt": payload["salt"],
        "fingerprint": device["fingerprint"],
        "device": TABLET,
    }
    assert payload["salt"] != device["salt"]  # a fresh salt: the revocation does not link to the registration
    height = produce(app)
    assert height is not None and ledger.verify_chain().valid

    seen = peer_view(client, patient, other_patient)
    assert [d["device"] for d in seen["devices"]] == [PHONE]
    assert [(k["device"], k["key"], k["revoke_height"]) for k in seen["revoked"]] == [(TABLET, tablet_key, height)]
    assert seen["previous"] == []
    assert [d["device"] for d in client.get("/api/v1/chat/devices", headers=patient.headers).json["devices"]] == [PHONE]
    # The removed device, or its key on another device id, never comes back.
    again = client.put("/api/v1/chat/key", json={"key": p256(), "device": TABLET}, headers=sign_in(client, patient))
    assert error(again) == (403, "forbidden", REMOVED)
    reused = client.put("/api/v1/chat/key", json={"key": tablet_key, "device": b64e(os.urandom(16))},
                        headers=sign_in(client, patient))  # fmt: skip
    assert error(reused) == (403, "forbidden", REMOVED)
    assert error(client.delete(f"/api/v1/chat/devices/{TABLET}", headers=patient.headers)) == (
        404, "not_found", NO_DEVICE,
    )  # fmt: skip
    assert db.session.query(ChatKey).filter(ChatKey.current_user_id.is_not(None)).count() == 1


def test_invalid_device_removals(client: FlaskClient, patient: Person, other_patient: Person) -> None:
    register(client, patient, p256(), PHONE)
    doctor = make_person(client, "doctor", "dr.devices", "Dr Devices")
    assert error(client.delete(f"/api/v1/chat/devices/{PHONE}", headers=other_patient.headers)) == (
        404, "not_found", NO_DEVICE,
    )  # fmt: skip
    assert client.delete(f"/api/v1/chat/devices/{PHONE}", headers=doctor.headers).status_code == 403
    assert client.get("/api/v1/chat/devices", headers=doctor.headers).status_code == 403
    assert client.delete(f"/api/v1/chat/devices/{PHONE}").status_code == 401
    for bad in ("short", "A" * 23, "A" * 21 + "=", "A" * 21 + "B"):
        answer = client.delete(f"/api/v1/chat/devices/{bad}", headers=patient.headers)
        assert error(answer) == (422, "validation_failed", BAD_DEVICE), bad
    answer = client.put("/api/v1/chat/key", json={"key": p256(), "device": "not a device"}, headers=patient.headers)
    assert error(answer)[:2] == (422, "validation_failed")
    assert [d["device"] for d in client.get("/api/v1/chat/devices", headers=patient.headers).json["devices"]] == [PHONE]


def test_ledger_kinds_for_devices() -> None:
    point = b64d(p256())
    salt = os.urandom(16)
    key_payload = {
        "subject": hashlib.sha256(salt + b"x").hexdigest(),
        "salt": b64e(salt),
        "key": b64e(point),
        "fingerprint": hashlib.sha256(point).hexdigest(),
        "device": PHONE,
    }
    check_chat_key(key_payload)
    check_chat_key({k: v for k, v in key_payload.items() if k != "device"})  # registered before device ids
    revoke = {k: key_payload[k] for k in ("subject", "salt", "fingerprint", "device")}
    check_chat_key_revoke(revoke)
    for bad in ({**key_payload, "device": "short"}, {**key_payload, "device": 7}, {**key_payload, "extra": 1}):
        with pytest.raises(InvalidTransaction):
            check_chat_key(bad)
    for bad in (
        {k: v for k, v in revoke.items() if k != "device"},
        {**revoke, "fingerprint": "00"},
        {**revoke, "device": b64e(os.urandom(15))},
        {**revoke, "key": key_payload["key"]},
    ):
        with pytest.raises(InvalidTransaction):
            check_chat_key_revoke(bad)


def sign_in(client: FlaskClient, who: Person) -> dict[str, str]:
    """Another sign-in of `who` (as on another device): its Authorization header."""
    answer = client.post("/api/v1/auth/token", json={"username": who.username, "password": who.password})
    assert answer.status_code == 200, answer.json
    return {"Authorization": f"Bearer {answer.json['token']}"}


def test_removing_a_device_ends_its_sign_ins_and_keeps_it_off_the_chat(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    conversation = connect(client, patient, other_patient)
    tablet_headers = sign_in(client, patient)
    tablet_token = tablet_headers["Authorization"].removeprefix("Bearer ")
    register(client, patient, p256(), PHONE)
    answer = client.put("/api/v1/chat/key", json={"key": p256(), "device": TABLET}, headers=tablet_headers)
    assert answer.status_code == 200, answer.json
    tablet_socket = socketio.test_client(app, namespace=NS, auth={"token": tablet_token, "device": TABLET})
    phone_socket = socketio.test_client(app, namespace=NS, auth={"token": patient.token, "device": PHONE})
    assert tablet_socket.is_connected(NS) and phone_socket.is_connected(NS)
    assert call(tablet_socket, "join", {"conversation": conversation})["ok"] is True

    # A sign-in runs on one device: the phone's cannot pose as the tablet, nor remove itself.
    wrong = socketio.test_client(app, namespace=NS, auth={"token": patient.token, "device": TABLET})
    assert not wrong.is_connected(NS)
    assert error(client.delete(f"/api/v1/chat/devices/{PHONE}", headers=patient.headers)) == (
        409, "conflict", "This is the device you are using: remove it from another one.",
    )  # fmt: skip

    assert client.delete(f"/api/v1/chat/devices/{TABLET}", headers=patient.headers).status_code == 200
    assert not tablet_socket.is_connected(NS)  # closed at once
    assert phone_socket.is_connected(NS)
    assert client.get("/api/v1/chat/devices", headers=tablet_headers).status_code == 401  # its sign-in ended
    # Signed in again (the password was on the lost tablet too?), it still cannot use the chat.
    again = sign_in(client, patient)
    again_token = again["Authorization"].removeprefix("Bearer ")
    refused = socketio.test_client(app, namespace=NS, auth={"token": again_token, "device": TABLET})
    assert not refused.is_connected(NS)
    key = client.put("/api/v1/chat/key", json={"key": p256(), "device": TABLET},
                     headers=again)  # fmt: skip
    assert error(key) == (
        403,
        "forbidden",
        "This device was removed from your account: it cannot use the chat any more.",
    )
    assert call(phone_socket, "join", {"conversation": conversation})["ok"] is True


# -- one message sealed for every device ------------------------------------------------------

LAPTOP = b64e(os.urandom(16))


def device_socket(app: Flask, client: FlaskClient, who: Person, device: str, first: bool = False):
    """A sign-in of `who` on `device` with its own chat key, and its /chat connection."""
    headers = who.headers if first else sign_in(client, who)
    answer = client.put("/api/v1/chat/key", json={"key": p256(), "device": device}, headers=headers)
    assert answer.status_code == 200, answer.json
    token = headers["Authorization"].removeprefix("Bearer ")
    socket = socketio.test_client(app, namespace=NS, auth={"token": token, "device": device})
    assert socket.is_connected(NS)
    return socket


def items(socket, conversation: str) -> list[tuple[int, str, bool, dict]]:
    """(id, from_device, own, envelope) of each envelope received in the conversation."""
    return [
        (item["id"], item["from_device"], item["own"], item["envelope"])
        for item in received(socket, "message")
        if item["conversation"] == conversation
    ]


def test_each_copy_reaches_only_its_device_and_each_pair_is_acknowledged_apart(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    conversation = connect(client, patient, other_patient)
    phone = device_socket(app, client, patient, PHONE, first=True)
    tablet = device_socket(app, client, patient, TABLET)
    laptop = device_socket(app, client, other_patient, LAPTOP, first=True)
    for socket in (phone, tablet, laptop):
        assert call(socket, "join", {"conversation": conversation})["ok"] is True
        socket.get_received(NS)

    # The peer seals one message for each of the patient's two devices, under one cid.
    for device, n in ((PHONE, 1), (TABLET, 2)):
        sent = call(laptop, "send", {"conversation": conversation, "envelope": envelope(n), "cid": "m1",
                                     "to_device": device})  # fmt: skip
        assert sent["ok"] is True and sent["duplicate"] is False, sent
    again = call(laptop, "send", {"conversation": conversation, "envelope": envelope(1), "cid": "m1",
                                  "to_device": PHONE})  # fmt: skip
    assert again["duplicate"] is True
    on_phone, on_tablet = items(phone, conversation), items(tablet, conversation)
    assert [(f, o, e) for _, f, o, e in on_phone] == [(LAPTOP, False, envelope(1))]
    assert [(f, o, e) for _, f, o, e in on_tablet] == [(LAPTOP, False, envelope(2))]
    # One message, two copies: counted once as unread.
    user = db.session.scalar(select(User).where(User.username == patient.username))
    assert chat.unread_count(user, int(conversation)) == 1

    # The phone's copy for the patient's own tablet: marked as the patient's own, from the phone.
    own = call(phone, "send", {"conversation": conversation, "envelope": envelope(3), "cid": "m2",
                               "to_device": TABLET, "to_own": True})  # fmt: skip
    assert own["ok"] is True, own
    assert [(f, o, e) for _, f, o, e in items(tablet, conversation)] == [(PHONE, True, envelope(3))]
    assert items(laptop, conversation) == [] and items(phone, conversation) == []
    assert chat.unread_count(user, int(conversation)) == 1  # one's own copy is never unread

    # The phone acknowledges what the laptop sent it: the tablet's copies still wait for the tablet.
    up_to = on_tablet[0][0]
    assert call(phone, "ack", {"conversation": conversation, "up_to": up_to, "from_device": LAPTOP})["ok"] is True
    phone.disconnect(NS)
    tablet.disconnect(NS)
    tablet_again = socketio.test_client(
        app, namespace=NS, auth={"token": _token_of(client, patient, TABLET), "device": TABLET}
    )
    assert tablet_again.is_connected(NS)
    backlog = items(tablet_again, conversation)
    assert [(f, o, e) for _, f, o, e in backlog] == [(LAPTOP, False, envelope(2)), (PHONE, True, envelope(3))]
    # Acknowledging one lane leaves the other waiting.
    assert call(tablet_again, "ack", {"conversation": conversation, "up_to": backlog[-1][0],
                                      "from_device": PHONE, "own": True})["ok"] is True  # fmt: skip
    assert call(tablet_again, "sync", {})["ok"] is True
    assert [(f, e) for _, f, _, e in items(tablet_again, conversation)] == [(LAPTOP, envelope(2))]
    # The lane's history: only what the laptop sent to this device.
    page = call(tablet_again, "history", {"conversation": conversation, "before": None, "from_device": LAPTOP})
    assert [(m["from_device"], m["to_device"], m["body"]) for m in page["messages"]] == [(LAPTOP, TABLET, envelope(2))]


def _token_of(client: FlaskClient, who: Person, device: str) -> str:
    """A fresh sign-in of `who` for `device` (a reconnecting device signs in again)."""
    return sign_in(client, who)["Authorization"].removeprefix("Bearer ")


def test_a_removed_device_is_sent_nothing_and_bad_lanes_are_refused(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    conversation = connect(client, patient, other_patient)
    phone = device_socket(app, client, patient, PHONE, first=True)
    device_socket(app, client, patient, TABLET)
    laptop = device_socket(app, client, other_patient, LAPTOP, first=True)
    assert call(laptop, "join", {"conversation": conversation})["ok"] is True
    assert client.delete(f"/api/v1/chat/devices/{TABLET}", headers=patient.headers).status_code == 200

    refused = call(laptop, "send", {"conversation": conversation, "envelope": envelope(1), "cid": "x",
                                    "to_device": TABLET})  # fmt: skip
    assert refused["error"] == {"code": "device_removed",
                                "message": "That device was removed: nothing is sent to it any more."}  # fmt: skip
    stored = call(laptop, "stored", {"conversation": conversation, "cid": "x", "to_device": TABLET})
    assert stored == {"ok": True, "stored": False}
    for bad, text in (
        ({"to_device": b64e(os.urandom(16))}, "`to_device` is not a device of this conversation."),
        ({"to_device": "short"}, BAD_DEVICE),
        ({"to_own": True}, "A copy for your own device must name `to_device`."),
        ({"to_device": PHONE, "to_own": "yes"}, "`to_own` must be true or false."),
        ({"to_device": LAPTOP}, "`to_device` is not a device of this conversation."),  # its own device, as the peer's
    ):
        answer = call(laptop, "send", {"conversation": conversation, "envelope": envelope(1), "cid": "y", **bad})
        assert answer["error"]["message"] == text, (bad, answer)
    assert call(phone, "ack", {"conversation": conversation, "up_to": 1, "own": "no"})["error"]["message"] == (
        "`own` must be true or false."
    )
    assert db.session.query(ChatMessage).count() == 0
