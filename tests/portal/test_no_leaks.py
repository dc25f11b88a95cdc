"""A copy of the database or of the logs reveals no record, symptom or private key."""

from __future__ import annotations

import base64
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from core.crypto import aead, open_user_keys
from core.encoding import b64e
from core.errors import DecryptionError
from portal.extensions import db
from portal.models import Escrow, HeldShare, LedgerBlock, LedgerTransaction, User, utcnow
from portal.services import accounts, escrow
from tests.conftest import PASSWORD, PDF, RECORD, Person, produce
from tests.portal.test_escrow import Hospital, hospitals, share_keys  # noqa: F401 (the two hospitals' fixture)

MARKER = "Patient reports zebra-striped rash since Tuesday"


def dump_database() -> bytes:
    """Every value of every row of every table, as bytes."""
    chunks: list[bytes] = []
    for table in db.metadata.sorted_tables:
        for row in db.session.execute(select(table)):
            for value in row:
                if isinstance(value, bytes | bytearray | memoryview):
                    chunks.append(bytes(value))
                elif value is not None:
                    chunks.append(str(value).encode())
    return b"\n".join(chunks)


def secrets_of(person: Person) -> list[bytes]:
    actor = accounts.resolve(person.token, utcnow())
    assert actor is not None
    keys = actor.keys()
    rsa_der = keys.rsa_private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    d = keys.rsa_private.private_numbers().d
    umbral = keys.umbral_secret.to_be_bytes()
    forms = [rsa_der, d.to_bytes((d.bit_length() + 7) // 8, "big"), umbral]
    return forms + [b64e(f).encode() for f in forms] + [base64.b64encode(f) for f in forms] + [person.token.encode()]


def test_database_and_logs_hold_no_plaintext_or_private_key(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = {**RECORD, "title": "Zebra rash consult", "notes": MARKER}
    body["attachments"] = [{"filename": "zebra.pdf", "data": base64.b64encode(PDF).decode()}]
    created = client.post(f"/api/v1/patients/{patient.id}/records", json=body, headers=doctor.headers)
    assert created.status_code == 201
    produce(app)
    opened = client.get(f"/api/v1/records/{created.json['id']}", headers=patient.headers).json
    assert opened["notes"] == MARKER  # the scan below is meaningful: the plaintext exists and round-trips

    dump = dump_database()
    logs = caplog.text.encode()
    plaintexts = [MARKER, "Zebra rash consult", "zebra.pdf", "Salbutamol", "HP:0002094", "Dyspnea", "J45.909"]
    for needle in [p.encode() for p in plaintexts] + [PDF, PDF[:24]]:
        assert needle not in dump, needle
        assert needle not in logs, needle
    for secret in secrets_of(patient) + secrets_of(doctor):
        assert secret not in dump
        assert secret not in logs


def test_public_chain_endpoints_name_no_one(app: Flask, client: FlaskClient, doctor: Person, patient: Person) -> None:
    client.post(f"/api/v1/patients/{patient.id}/records", json={**RECORD, "notes": MARKER}, headers=doctor.headers)
    height = produce(app)
    assert height is not None
    published = b"".join(
        client.get(url).data
        for url in ["/api/v1/chain/blocks?from=0&limit=100"] + [f"/api/v1/chain/blocks/{h}" for h in range(height + 1)]
    )
    names = ("alice", "Alice Moreau", "1984-03-21", "dr.osei", "Ama Osei", "Test Hospital")
    for needle in (*names, MARKER, RECORD["title"], "Dyspnea"):
        assert needle.encode() not in published, needle


def test_patient_identity_is_never_more_exposed_than_the_name(
    app: Flask, client: FlaskClient, admin: Person, caplog: pytest.LogCaptureFixture
) -> None:
    """A date of birth and a hospital number are kept like the name (docs/security.md): never on
    the ledger or in the logs, and nowhere in the database the name is not."""
    caplog.set_level(logging.DEBUG)
    body = {
        "username": "zoe.q",
        "password": PASSWORD,
        "display_name": "Zoe Quartermaine",
        "date_of_birth": "1957-08-19",
    }
    registered = client.post("/api/v1/auth/register", json=body)
    assert registered.status_code == 201
    desk = db.session.scalar(select(User).where(User.username == "admin"))
    accounts.verify_in_person(desk, registered.json["user"]["id"], "QX-990417", utcnow())
    height = produce(app)
    assert height is not None

    name, identity = b"Zoe Quartermaine", [b"1957-08-19", b"19570819", b"QX-990417"]
    ledger = b"".join(
        [bytes(t.encoded) for t in db.session.scalars(select(LedgerTransaction))]
        + [bytes(b.header) for b in db.session.scalars(select(LedgerBlock))]
        + [client.get(f"/api/v1/chain/blocks/{h}").data for h in range(height + 1)]
    )
    dump, logs = dump_database(), caplog.text.encode()
    assert registered.json["user"]["id"].encode() in ledger  # the scan reads her key registration
    for needle in identity:
        assert needle not in ledger, needle
        assert needle not in logs, needle
        assert needle not in dump or name in dump, needle


def test_recovery_key_is_never_stored_or_logged(
    app: Flask, client: FlaskClient, patient: Person, caplog: pytest.LogCaptureFixture
) -> None:
    """The 12 words, the 128 bits behind them and the key derived from them (docs/recovery.md)
    appear nowhere in the database, the ledger or the logs, before or after a reset with them."""
    from mnemonic import Mnemonic

    from portal.services import recovery

    caplog.set_level(logging.DEBUG)
    made = client.post("/api/v1/account/recovery-key", json={"password": PASSWORD}, headers=patient.headers).json
    words = made["words"]
    confirm = {str(p): words[p - 1] for p in made["confirm"]}
    confirmed = client.post("/api/v1/account/recovery-key/confirm", json={"words": confirm}, headers=patient.headers)
    assert confirmed.status_code == 200
    body = {"username": patient.username, "recovery_key": " ".join(words), "new_password": "violet-lantern-orchard-47"}
    assert client.post("/api/v1/auth/recover", json=body).status_code == 204
    produce(app)

    entropy = bytes(Mnemonic("english").to_entropy(" ".join(words)))
    kek = recovery._kek(entropy)
    needles = [
        " ".join(words).encode(),
        "".join(words).encode(),
        entropy,
        entropy.hex().encode(),
        kek,
        kek.hex().encode(),
    ]
    needles += [b64e(entropy).encode(), base64.b64encode(entropy), b64e(kek).encode(), base64.b64encode(kek)]
    dump, logs = dump_database(), caplog.text.encode()
    for needle in needles:
        assert needle not in dump, needle
        assert needle not in logs, needle


def test_a_database_copy_and_one_escrow_share_reveal_no_private_key(
    hospitals: tuple[Hospital, Hospital],  # noqa: F811 (the fixture imported above)
) -> None:
    """Hospital-assisted recovery (docs/recovery.md): each hospital's database, even with the
    escrow share that node alone can open (the home share under its node key, the held share
    under its box key), holds neither the user key nor a private key, before or after a recovery
    (whose code is kept only hashed)."""
    home, holder = hospitals
    account = home.add("patient", "alice", "Alice Moreau")
    share_keys({"node-1": home, "node-2": holder})
    with home.ctx():
        case = escrow.open_case(home.user("admin"), account, "passport", utcnow(), home.keys("admin")).id
        escrow.approve(home.user("admin2"), case, utcnow(), home.keys("admin2"))
        _, code = escrow.issue_code(home.user("admin"), case, utcnow())
        user = home.user("alice")
        row = db.session.get(Escrow, user.id)
        home_share = aead.decrypt(escrow.here().escrow_key(), row.share, escrow._home_aad(account, "node-1"))
        sealed, aad = user.sealed_private_keys, accounts.PRIVATE_KEYS_AAD + account.encode()
        home_dump = dump_database()
    with holder.ctx():
        held = db.session.get(HeldShare, (account, "node-1"))
        held_share = escrow.here().box.open(held.share, escrow._held_aad(account, "node-1", "node-2"))
        holder_dump = dump_database()
    user_key = bytes(a ^ b for a, b in zip(home_share, held_share, strict=True))
    keys = open_user_keys(sealed, user_key, aad)  # the scan below looks for secrets that exist
    rsa_der = keys.rsa_private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    normal = code.replace("-", "")
    secrets = [user_key, rsa_der, keys.umbral_secret.to_be_bytes(), code.encode(), normal.encode()]
    for dump, own_share in ((home_dump, home_share), (holder_dump, held_share)):
        for secret in secrets + [b64e(s).encode() for s in secrets] + [s.hex().encode() for s in secrets]:
            assert secret not in dump
        with pytest.raises(DecryptionError):
            open_user_keys(sealed, own_share, aad)
        # the node's own share joined with any 32 bytes of its database is not the user key
        windows = {dump[i : i + 32] for i in range(len(dump) - 31)}
        assert bytes(a ^ b for a, b in zip(own_share, user_key, strict=True)) not in windows
