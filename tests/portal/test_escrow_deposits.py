"""When escrow shares can be made and handed over: a hospital alone waits for a second one (and
says so), a share its holder did not take waits at home and is delivered by the node's periodic
work once the holder answers, and a holder that leaves the consortium gets a share that no
longer fits: the next sign-in splits the key afresh."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, select

from core.crypto import BoxKey, aead
from portal import runtime
from portal.extensions import db
from portal.models import Escrow, HeldShare, MemberNode, RecoveryCase, utcnow
from portal.services import escrow
from tests.conftest import PASSWORD
from tests.portal import test_escrow
from tests.portal.test_escrow import Hospital, InProcessPeers, _open, share_keys

hospitals = test_escrow.hospitals  # the two hospitals, each with its own database and node key


def _state(hospital: Hospital, username: str) -> dict[str, Any]:
    token = hospital.token(username).json["token"]  # a sign-in: shares are made or handed over here
    answer = hospital.client.get("/api/v1/account/escrow", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    return answer.json


def _shares(home: Hospital, holder: Hospital, account: str) -> tuple[bytes, bytes | None]:
    """The home share and the held share of an account, opened with each node's own key."""
    with home.ctx():
        user = db.session.scalar(select(escrow.User).where(escrow.User.public_id == account))
        row = db.session.get(Escrow, user.id)
        home_share = aead.decrypt(escrow.here().escrow_key(), row.share, escrow._home_aad(account, "node-1"))
    with holder.ctx():
        held = db.session.get(HeldShare, (account, "node-1"))
        opened = escrow.here().box.open(held.share, escrow._held_aad(account, "node-1", "node-2")) if held else None
    return home_share, opened


def _leave(home: Hospital, node: str) -> None:
    """`node` is no longer a member as `home` sees it: no box key on its ledger tables."""
    with home.ctx():
        db.session.execute(delete(MemberNode).where(MemberNode.node_id == node))
        db.session.commit()


def _join(home: Hospital, holder: Hospital) -> None:
    """`holder` is a member again as `home` sees it: its box key back on the ledger tables."""
    with holder.ctx():
        box = BoxKey.of(runtime.node_key()).public
    with home.ctx():
        db.session.add(MemberNode(node_id=holder.node_id, hospital=holder.node_id, box_key=box, tx_hash="x"))
        db.session.commit()


def test_a_hospital_alone_waits_for_a_second_one_and_escrows_at_the_next_sign_in(
    hospitals: tuple[Hospital, Hospital],
) -> None:
    home, holder = hospitals
    _leave(home, "node-2")  # hospital 1 alone: no other member hospital
    account = home.add("patient", "bea", "Bea Lund")
    state = _state(home, "bea")
    assert (state["state"], state["holder"], state["enabled"]) == ("waiting", None, True)
    with home.ctx():
        row = db.session.scalar(select(Escrow).join(escrow.User).where(escrow.User.public_id == account))
        assert row.share is None and row.pending is None  # nothing is split while no one can hold a half
        with pytest.raises(escrow.Conflict, match="waiting for a second member hospital"):
            escrow.open_case(home.user("admin"), account, "passport", utcnow(), home.keys("admin"))

    _join(home, holder)  # a second member hospital joins
    share_keys({"node-1": home, "node-2": holder})
    state = _state(home, "bea")  # made at this sign-in, automatically
    assert (state["state"], state["holder"]) == ("held", "node-2")
    home_share, held_share = _shares(home, holder, account)
    assert held_share is not None and home_share != held_share


def test_a_share_the_holder_did_not_take_is_delivered_once_it_answers(
    hospitals: tuple[Hospital, Hospital], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, holder = hospitals
    holder.down = True
    account = home.add("patient", "cleo", "Cleo Marsh")
    state = _state(home, "cleo")
    assert (state["state"], state["holder"]) == ("delivering", "node-2")
    home.add("patient", "dara", "Dara Quinn")
    with home.ctx():
        assert len(db.session.scalars(select(Escrow).where(Escrow.pending.is_not(None))).all()) == 2
    with holder.ctx():
        assert db.session.get(HeldShare, (account, "node-1")) is None

    tries: list[str] = []
    post = InProcessPeers.post

    def counted(self: InProcessPeers, peer: str, path: str, body: dict[str, Any]) -> Any:
        tries.append(path)
        return post(self, peer, path, body)

    monkeypatch.setattr(InProcessPeers, "post", counted)
    with home.ctx():
        assert escrow.deliver_pending(utcnow()) == 0  # still down: one try for that holder, not one per share
    assert tries == ["/node/v1/escrow/deposit"]

    holder.down = False  # back: the node's periodic work (the producer's sync step) hands both over
    with home.ctx():
        assert escrow.deliver_pending(utcnow()) == 2
        assert db.session.scalars(select(Escrow).where(Escrow.pending.is_not(None))).all() == []
        assert escrow.deliver_pending(utcnow()) == 0
    with holder.ctx():
        assert db.session.get(HeldShare, (account, "node-1")) is not None
    token = home.client.post("/api/v1/auth/token", json={"username": "cleo", "password": PASSWORD}).json["token"]
    shown = home.client.get("/api/v1/account/escrow", headers={"Authorization": f"Bearer {token}"}).json
    assert (shown["state"], shown["holder_hospital"]) == ("held", "node-2")


def test_a_holder_that_left_is_replaced_by_a_fresh_split_at_the_next_sign_in(
    hospitals: tuple[Hospital, Hospital],
) -> None:
    home, holder = hospitals
    account = home.add("patient", "eve", "Eve Noor")
    share_keys({"node-1": home, "node-2": holder})
    old_home, old_held = _shares(home, holder, account)
    user_key = escrow._xor(old_home, old_held)
    case = _open(home, account)

    _leave(home, "node-2")  # the holder left the consortium
    with home.ctx(), pytest.raises(escrow.Conflict, match="left the consortium"):
        escrow.open_case(home.user("admin2"), account, "passport", utcnow(), home.keys("admin2"))
    state = _state(home, "eve")
    assert (state["state"], state["holder"]) == ("waiting", None)  # no other member: waits for one
    with home.ctx():
        assert db.session.get(RecoveryCase, case).status == "cancelled"  # it relied on the old holder
        row = db.session.scalar(select(Escrow).join(escrow.User).where(escrow.User.public_id == account))
        assert row.share is None  # the old home share is gone: the old holder's half fits nothing here

    _join(home, holder)  # a member (here the same node, back) can hold a share again
    assert _state(home, "eve")["state"] == "held"
    new_home, new_held = _shares(home, holder, account)
    assert escrow._xor(new_home, new_held) == user_key  # the same user key, split afresh
    assert new_home != old_home and escrow._xor(new_home, old_held) != user_key
