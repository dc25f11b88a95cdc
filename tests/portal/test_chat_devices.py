"""Chat keys per device: each of a patient's devices registers its own key on the ledger (with a
device id), peers see every device's key, and a lost device is removed from another one, which
revokes its key by a `chat_key_revoke` transaction."""

from __future__ import annotations

import hashlib
import os

import pytest
from flask import Flask
from flask.testing import FlaskClient

from core.encoding import b64d, b64e
from core.errors import InvalidTransaction
from core.ledger import decode_transaction
from core.ledger.kinds import check_chat_key, check_chat_key_revoke
from portal import runtime
from portal.extensions import db, socketio
from portal.models import ChatKey, LedgerTransaction
from portal.services import ledger
from tests.conftest import Person, make_person, produce
from tests.portal.test_chat import NS, call, connect, p256
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
