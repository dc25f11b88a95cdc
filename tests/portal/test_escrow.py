"""Hospital-assisted recovery between two member hospitals, each a whole app with its own database
and node key in one consortium; their node-to-node requests are signed and verified as between
real nodes (only the HTTP hop is in-process). tests/multinode/test_escrow_across.py runs it
across real node processes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from core.consensus import Params
from core.consensus.messages import sign_request
from core.crypto import BoxKey, NodeKey, UserKeys, aead, open_user_keys
from core.errors import DecryptionError
from core.ledger import decode_transaction
from portal import consortium, create_app, runtime
from portal.extensions import db, socketio
from portal.models import (
    AccessEntry,
    Escrow,
    HeldShare,
    LedgerTransaction,
    MemberNode,
    RecoveryCase,
    User,
    utcnow,
)
from portal.services import accounts, escrow, federation
from portal.services.errors import Conflict, Forbidden, NotFound, Unauthorized
from tests.conftest import PASSWORD, RequestClient, make_config
from tests.portal.test_pages import csrf

NEW_PASSWORD = "violet-canyon-orbit-lantern"
PRIVATE_AAD = accounts.PRIVATE_KEYS_AAD


class InProcessPeers:
    """The signed transport between the two hospitals: each request is signed with the sender's
    node key and checked by the receiver's node routes like any peer's; a hospital set `down`
    does not answer."""

    def __init__(self, node: NodeKey, hospitals: dict[str, Hospital]) -> None:
        self.node, self.hospitals = node, hospitals
        self.urls = {n: f"http://{n}.invalid" for n in hospitals if n != node.node_id}

    def post(self, peer: str, path: str, body: dict[str, Any]) -> Any:
        other = self.hospitals.get(peer)
        if other is None or other.down:
            return None
        data = json.dumps(body).encode()
        headers = sign_request(self.node, "POST", path, data, int(time.time() * 1000))
        answer = other.client.open(path, method="POST", data=data, headers=headers, content_type="application/json")
        return answer.json if answer.status_code == 200 else None


@dataclass
class Hospital:
    app: Flask
    client: FlaskClient
    node_id: str
    down: bool = False
    people: dict[str, str] = field(default_factory=dict)  # username -> account id

    @contextmanager
    def ctx(self) -> Iterator[None]:
        with self.app.app_context():
            yield

    def user(self, username: str) -> User:
        found = db.session.scalar(select(User).where(User.username == username))
        assert found is not None
        return found

    def keys(self, username: str) -> UserKeys:
        """The account's private keys, as its signed-in session opens them (approvals are signed)."""
        user, user_key = accounts._authenticate(username, PASSWORD, runtime.kdf())
        return open_user_keys(user.sealed_private_keys, user_key, PRIVATE_AAD + user.public_id.encode())

    def add(self, role: str, username: str, name: str) -> str:
        with self.ctx():
            user = accounts.create_user(
                role=role, username=username, password=PASSWORD, display_name=name,
                hospital="Test Hospital" if role == "doctor" else None,
                licence_number="LIC-1" if role == "doctor" else None,
                date_of_birth="1984-03-21" if role == "patient" else None,
                kdf=runtime.kdf(), home=runtime.node_key(), now=utcnow(),
            )  # fmt: skip
            self.people[username] = user.public_id
            return user.public_id

    def token(self, username: str, password: str = PASSWORD) -> Any:
        return self.client.post("/api/v1/auth/token", json={"username": username, "password": password})


def share_keys(hospitals: dict[str, Hospital]) -> None:
    """What each hospital learns from the other through the ledger: its accounts' keys (so an
    admin is known as one) and its box key. Projected as stored blocks are."""
    for name, source in hospitals.items():
        with source.ctx():
            rows = [
                (row.hash, row.encoded)
                for row in db.session.scalars(select(LedgerTransaction).where(LedgerTransaction.kind == "key"))
            ]
        for other_name, target in hospitals.items():
            if other_name != name:
                with target.ctx():
                    federation.project([decode_transaction(encoded) for _, encoded in rows])
                    for tx_hash, encoded in rows:  # on its ledger, where signed approvals are checked
                        if db.session.get(LedgerTransaction, tx_hash) is None:
                            row = LedgerTransaction(hash=tx_hash, kind="key", encoded=encoded, status="committed")
                            db.session.add(row)
                    db.session.commit()


@pytest.fixture
def hospitals(tmp_path: Path) -> Iterator[tuple[Hospital, Hospital]]:
    keys = [NodeKey.generate("node-1"), NodeKey.generate("node-2")]
    params = Params(2, 1000, 60, 3, int(time.time() * 1000))
    block, peers = consortium.create("escrow-test", [(k, f"http://{k.node_id}.invalid") for k in keys], params)
    consortium.write(tmp_path / "genesis.json", block, peers)
    everyone: dict[str, Hospital] = {}
    for number, key in enumerate(keys, 1):
        folder = tmp_path / key.node_id
        folder.mkdir()
        key.save(folder / "node.key", None)

        class Config(make_config(folder)):  # type: ignore[misc,valid-type]
            NODE_ID = key.node_id
            GENESIS_PATH = str(tmp_path / "genesis.json")
            HOSPITAL_NAME = f"Hospital {number}"
            if number == 2:  # its own database, whichever the suite uses
                SQLALCHEMY_DATABASE_URI = f"sqlite:///{folder / 'node.db'}"

        app = create_app(Config)
        app.test_client_class = RequestClient
        hospital = Hospital(app, app.test_client(), key.node_id)
        everyone[key.node_id] = hospital
        app.extensions["medledger.escrow"] = lambda key=key: escrow.Here(
            runtime.node_key(), runtime.box_key(), InProcessPeers(key, everyone)
        )
        with app.app_context():
            db.drop_all()
            db.create_all()
            runtime.ensure_chain(utcnow())
    for hospital in everyone.values():
        with hospital.ctx():
            for other in keys:
                if other.node_id != hospital.node_id:
                    db.session.add(
                        MemberNode(
                            node_id=other.node_id, hospital=other.node_id, box_key=BoxKey.of(other).public, tx_hash="x"
                        )
                    )
            db.session.commit()
    home, holder = everyone["node-1"], everyone["node-2"]
    home.add("admin", "admin", "Hospital Admin")
    home.add("admin", "admin2", "Second Admin")
    holder.add("admin", "admin.b", "Holder Admin")
    yield home, holder
    for hospital in everyone.values():
        with hospital.ctx():
            db.session.remove()
            db.drop_all()
            db.engine.dispose()


@pytest.fixture
def alice(hospitals: tuple[Hospital, Hospital]) -> str:
    home, holder = hospitals
    patient = home.add("patient", "alice", "Alice Moreau")
    share_keys({"node-1": home, "node-2": holder})
    return patient


def _open(home: Hospital, account: str, admin: str = "admin") -> str:
    with home.ctx():
        return escrow.open_case(home.user(admin), account, "passport", utcnow(), home.keys(admin)).id


def _recover(home: Hospital, username: str, code: str, password: str = NEW_PASSWORD) -> Any:
    return home.client.post(
        "/api/v1/auth/recover", json={"username": username, "desk_code": code, "new_password": password}
    )


def test_shares_are_made_at_registration_and_neither_alone_opens_the_keys(
    hospitals: tuple[Hospital, Hospital], alice: str
) -> None:
    home, holder = hospitals
    with home.ctx():
        user = home.user("alice")
        row = db.session.get(Escrow, user.id)
        assert row is not None and row.enabled and row.holder == "node-2" and row.pending is None
        me = escrow.here()
        home_share = aead.decrypt(me.escrow_key(), row.share, escrow._home_aad(alice, "node-1"))
        sealed_keys = user.sealed_private_keys
    with holder.ctx():
        held = db.session.get(HeldShare, (alice, "node-1"))
        assert held is not None
        held_share = escrow.here().box.open(held.share, escrow._held_aad(alice, "node-1", "node-2"))
    aad = PRIVATE_AAD + alice.encode()
    for share in (home_share, held_share):
        with pytest.raises(DecryptionError):
            open_user_keys(sealed_keys, share, aad)
    assert open_user_keys(sealed_keys, escrow._xor(home_share, held_share), aad).key_id == user.key_id


def test_the_holder_is_chosen_by_rendezvous_hashing(hospitals: tuple[Hospital, Hospital]) -> None:
    home, _ = hospitals
    with home.ctx():
        me = escrow.here()
        db.session.add(MemberNode(node_id="node-3", hospital="Hospital 3", box_key=bytes(32), tx_hash="y"))
        me.peers.urls["node-3"] = "http://node-3.invalid"
        chosen = {escrow.choose_holder(f"00000000-0000-4000-8000-{n:012d}", me) for n in range(40)}
        assert chosen == {"node-2", "node-3"}
        account = "00000000-0000-4000-8000-000000000007"
        assert escrow.choose_holder(account, me) == escrow.choose_holder(account, me)


def test_release_without_a_second_approval_is_refused(hospitals: tuple[Hospital, Hospital], alice: str) -> None:
    home, _ = hospitals
    case_id = _open(home, alice)
    with home.ctx():
        with pytest.raises(Conflict, match="needs both approvals"):
            escrow.issue_code(home.user("admin"), case_id, utcnow())
        with pytest.raises(Forbidden, match="another admin than the one who opened"):
            escrow.approve(home.user("admin"), case_id, utcnow())
        assert db.session.get(RecoveryCase, case_id).code_hash is None
    assert _recover(home, "alice", "ABCD-EFGH-JKLM-NPQR-STUV").status_code == 401
    assert home.token("alice").status_code == 200  # nothing changed


def test_two_admins_of_the_home_hospital_recover_a_patient_at_the_desk(
    hospitals: tuple[Hospital, Hospital], alice: str
) -> None:
    home, holder = hospitals
    client = home.client
    client.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": csrf(client, "/login")})
    url = f"/admin/recoveries/new/{alice}"
    answer = client.post(url, data={"identity_check": "passport", "confirm": "yes", "csrf_token": csrf(client, url)})
    assert answer.status_code == 302
    with home.ctx():
        case = db.session.scalar(select(RecoveryCase).where(RecoveryCase.account == alice))
        assert case.status == "open" and case.opened_by_name == "Hospital Admin"
        case_id = case.id
        escrow.approve(home.user("admin2"), case_id, utcnow(), home.keys("admin2"))
    page = client.post(
        f"/admin/recoveries/{case_id}/issue", data={"csrf_token": csrf(client, "/admin/recoveries")}
    ).get_data(as_text=True)
    code = re.search(r"<strong>([A-Z0-9-]{24})</strong>", unescape(page)).group(1)
    with home.ctx():
        stored = db.session.get(RecoveryCase, case_id)
        assert stored.status == "issued" and code not in repr(stored.__dict__) and stored.peer_share is None

    assert _recover(home, "alice", code, "password").status_code == 422  # too easy: the code is not spent
    answer = _recover(home, "alice", code.lower().replace("-", " "))
    assert answer.status_code == 204, answer.json
    with home.ctx():
        user = home.user("alice")
        assert (user.recovered_method, user.recovered_notice) == ("escrow", True)  # told at the next sign-in
    assert home.token("alice").status_code == 401
    signed_in = home.token("alice", NEW_PASSWORD)
    assert signed_in.status_code == 200
    assert [(n["kind"], n["method"]) for n in signed_in.json["notices"]] == [("recovered", "escrow")]
    assert home.token("alice", NEW_PASSWORD).json["notices"] == []  # told once
    assert _recover(home, "alice", code, "another-violet-canyon-orbit").status_code == 401  # once only
    headers = {"Authorization": f"Bearer {signed_in.json['token']}"}
    log = home.client.get("/api/v1/access-log", headers=headers).json
    assert any("front desk" in (entry.get("event") or "") for entry in log["entries"]), log

    with home.ctx():
        user = home.user("alice")
        [entry] = db.session.scalars(select(AccessEntry).where(AccessEntry.reader_id == user.id)).all()
        assert entry.mode == "escrow" and entry.record_id is None
        tx = decode_transaction(db.session.get(LedgerTransaction, entry.tx_hash).encoded)
        assert tx.kind == "escrow_recovery" and tx.signer == runtime.node_key().key_id
        runtime.node_key().verifier().verify(tx.signature, tx.signing_bytes())
        assert tx.payload["account"] == alice and tx.payload["method"] == "escrow"
        assert {tx.payload["opened_by"]["account"], tx.payload["approved_by"]["account"]} == {
            home.people["admin"],
            home.people["admin2"],
        }
        assert b"Alice" not in tx.encoded and b"passport" not in tx.encoded
    with holder.ctx():
        assert db.session.get(RecoveryCase, case_id).status == "released"


def test_a_reset_with_the_desk_code_closes_the_accounts_chat_connections(
    hospitals: tuple[Hospital, Hospital], alice: str
) -> None:
    home, _ = hospitals
    sockets = [
        socketio.test_client(home.app, namespace="/chat", auth={"token": home.token("alice").json["token"]})
        for _ in range(2)  # two sessions, say a phone and a laptop
    ]
    assert all(socket.is_connected("/chat") for socket in sockets)
    case_id = _open(home, alice)
    with home.ctx():
        escrow.approve(home.user("admin2"), case_id, utcnow(), home.keys("admin2"))
        _, code = escrow.issue_code(home.user("admin"), case_id, utcnow())
    assert _recover(home, "alice", "ABCD-EFGH-JKLM-NPQR-STUV").status_code == 401
    assert all(socket.is_connected("/chat") for socket in sockets)  # a wrong code ends nothing
    assert _recover(home, "alice", code).status_code == 204
    assert not any(socket.is_connected("/chat") for socket in sockets)  # at once: their sessions have ended


def test_the_holders_admin_approves_and_a_doctor_keeps_their_keys(hospitals: tuple[Hospital, Hospital]) -> None:
    home, holder = hospitals
    doctor = home.add("doctor", "dr.osei", "Dr. Ama Osei")
    share_keys({"node-1": home, "node-2": holder})
    with home.ctx():
        before = home.user("dr.osei").key_id
    case_id = _open(home, doctor)
    with holder.ctx():
        waiting = db.session.get(RecoveryCase, case_id)
        assert waiting.status == "waiting" and waiting.opened_by_name == "Hospital Admin"
        with pytest.raises(Forbidden, match="another hospital"):  # nor can it be opened there
            escrow.open_case(holder.user("admin.b"), doctor, "passport", utcnow())
        escrow.approve(holder.user("admin.b"), case_id, utcnow(), holder.keys("admin.b"))
        assert db.session.get(RecoveryCase, case_id).status == "released"
    with home.ctx():
        approved = db.session.get(RecoveryCase, case_id)
        assert approved.status == "approved" and approved.approved_by_node == "node-2"
        _, code = escrow.issue_code(home.user("admin"), case_id, utcnow())
    assert _recover(home, "dr.osei", code).status_code == 204
    client = home.client
    client.post("/login", data={"username": "dr.osei", "password": NEW_PASSWORD, "csrf_token": csrf(client, "/login")})
    assert "Your password was reset without your old one" in client.get("/doctor/patients").get_data(as_text=True)
    answer = home.token("dr.osei", NEW_PASSWORD)
    assert answer.status_code == 200 and answer.json["notices"] == []  # told once, on the portal
    with home.ctx():
        actor = accounts.resolve(answer.json["token"], utcnow())
        assert actor.keys().key_id == before  # the same keys: records and grants stay readable


def test_an_opted_out_patient_cannot_be_recovered(hospitals: tuple[Hospital, Hospital], alice: str) -> None:
    home, holder = hospitals
    token = home.token("alice").json["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert home.client.get("/api/v1/account/escrow", headers=headers).json["state"] == "held"
    answer = home.client.put("/api/v1/account/escrow", json={"enabled": False}, headers=headers)
    assert answer.status_code == 200 and answer.json["state"] == "off" and not answer.json["enabled"]
    with home.ctx():
        row = db.session.get(Escrow, home.user("alice").id)
        assert (row.share, row.pending, row.holder) == (None, None, None)
        with pytest.raises(Conflict, match="turned hospital-assisted recovery off"):
            escrow.open_case(home.user("admin"), alice, "passport", utcnow())
    with holder.ctx():
        assert db.session.get(HeldShare, (alice, "node-1")) is None
    home.client.post(
        "/login", data={"username": "admin", "password": PASSWORD, "csrf_token": csrf(home.client, "/login")}
    )
    url = f"/admin/recoveries/new/{alice}"
    page = home.client.post(
        url, data={"identity_check": "passport", "confirm": "yes", "csrf_token": csrf(home.client, url)}
    )
    assert page.status_code == 409 and "turned hospital-assisted recovery off" in unescape(page.get_data(as_text=True))

    answer = home.client.put("/api/v1/account/escrow", json={"enabled": True}, headers=headers)
    assert answer.json["state"] == "held"
    with holder.ctx():
        assert db.session.get(HeldShare, (alice, "node-1")) is not None


def test_an_account_made_while_the_holder_was_down_gets_its_share_there_at_sign_in(
    hospitals: tuple[Hospital, Hospital],
) -> None:
    home, holder = hospitals
    holder.down = True
    account = home.add("patient", "carol", "Carol Diaz")
    with home.ctx():
        assert db.session.get(Escrow, home.user("carol").id).pending is not None
    holder.down = False
    assert home.token("carol").status_code == 200
    with home.ctx():
        assert db.session.get(Escrow, home.user("carol").id).pending is None
    with holder.ctx():
        assert db.session.get(HeldShare, (account, "node-1")) is not None


def test_doctors_and_patients_cannot_use_the_desk_or_opt_doctors_out(
    hospitals: tuple[Hospital, Hospital], alice: str
) -> None:
    home, _ = hospitals
    doctor = home.add("doctor", "dr.osei", "Dr. Ama Osei")
    client = home.client
    client.post("/login", data={"username": "dr.osei", "password": PASSWORD, "csrf_token": csrf(client, "/login")})
    assert client.get("/admin/recoveries").status_code == 403
    assert client.get(f"/admin/recoveries/new/{alice}").status_code == 403
    with home.ctx():
        for who in ("dr.osei", "alice"):
            with pytest.raises(Forbidden):
                escrow.open_case(home.user(who), alice, "passport", utcnow())
        with pytest.raises(Forbidden, match="own account"):
            escrow.open_case(home.user("admin"), home.people["admin"], "passport", utcnow())
    headers = {"Authorization": f"Bearer {home.token('dr.osei').json['token']}"}
    answer = home.client.put("/api/v1/account/escrow", json={"enabled": False}, headers=headers)
    assert answer.status_code == 403 and home.client.get("/api/v1/account/escrow", headers=headers).json["enabled"]
    assert doctor


def test_invalid_node_requests_are_refused(hospitals: tuple[Hospital, Hospital], alice: str) -> None:
    home, holder = hospitals
    path = "/node/v1/escrow/release"
    body = json.dumps({"case": alice, "account": alice, "opened_by": {}, "approved_by": {}}).encode()
    stranger = NodeKey.generate("node-1")  # the right name, the wrong key
    headers = sign_request(stranger, "POST", path, body, int(time.time() * 1000))
    answer = holder.client.open(path, method="POST", data=body, headers=headers, content_type="application/json")
    assert answer.status_code == 401 and "bad signature" in answer.json["error"]["message"]

    with home.ctx():
        node = runtime.node_key()
    release = {
        "case": "11111111-1111-4111-8111-111111111111", "account": alice,
        "opened_by": {"account": home.people["admin"], "name": "Hospital Admin"},
        "approved_by": {"account": home.people["alice"], "name": "Alice"},  # not an admin
    }  # fmt: skip
    data = json.dumps(release).encode()
    headers = sign_request(node, "POST", path, data, int(time.time() * 1000))
    first = holder.client.open(path, method="POST", data=data, headers=headers, content_type="application/json")
    assert first.status_code == 403 and "admins of the account's home node" in first.json["error"]["message"]
    again = holder.client.open(path, method="POST", data=data, headers=headers, content_type="application/json")
    assert again.status_code == 401 and "replayed" in again.json["error"]["message"]

    case_id = _open(home, alice)
    with holder.ctx():
        other = runtime.node_key()
    approval = f"/node/v1/escrow/cases/{case_id}/approval"
    forged = {"account": alice, "share": "A" * 80, "approved_by": {"account": home.people["admin2"], "name": "X"}}
    data = json.dumps(forged).encode()
    headers = sign_request(node, "POST", approval, data, int(time.time() * 1000))  # the home node itself
    answer = home.client.open(approval, method="POST", data=data, headers=headers, content_type="application/json")
    assert answer.status_code == 403 and "Only the node holding" in answer.json["error"]["message"]
    headers = sign_request(other, "POST", approval, data, int(time.time() * 1000))  # the holder, not its admin
    answer = home.client.open(approval, method="POST", data=data, headers=headers, content_type="application/json")
    assert answer.status_code == 403 and "admin of that node" in answer.json["error"]["message"]
    with home.ctx():
        assert db.session.get(RecoveryCase, case_id).status == "open"


def test_invalid_recovery_inputs_get_clear_answers(hospitals: tuple[Hospital, Hospital], alice: str) -> None:
    home, _ = hospitals
    assert _recover(home, "nobody", "ABCD-EFGH-JKLM-NPQR-STUV").status_code == 401
    assert home.client.post("/api/v1/auth/recover", json={"username": "alice"}).status_code == 422
    with home.ctx():
        with pytest.raises(NotFound):
            escrow.open_case(home.user("admin"), "not-an-id", "passport", utcnow())
        with pytest.raises(Conflict, match="already under way"):
            _open(home, alice)
            escrow.open_case(home.user("admin2"), alice, "passport", utcnow())
    with pytest.raises(Unauthorized), home.ctx():
        escrow.recover_with_code("alice", "x" * 1000, NEW_PASSWORD, runtime.kdf(), utcnow())
