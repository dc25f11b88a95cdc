"""Signed approvals: the node holding the other share releases it only when both admins signed
the case's statement with their own keys, as its own ledger registered them. Here the home
node itself (its node key, which signs every node request) sends forged, unsigned, stale or
doubled approvals, and the holder refuses each, logs why and keeps its share."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from core.consensus.messages import sign_request
from core.encoding import b64e
from portal import runtime
from portal.extensions import db
from portal.models import HeldShare, RecoveryCase, epoch_ms, utcnow
from portal.services import escrow
from portal.services.errors import Unauthorized
from tests.portal import test_escrow
from tests.portal.test_escrow import Hospital, _open

RELEASE = "/node/v1/escrow/release"
hospitals, alice = test_escrow.hospitals, test_escrow.alice  # the two hospitals and their patient


def _signed(hospital: Hospital, username: str, case: str, account: str, check: str, at: int) -> dict[str, Any]:
    """An admin of node-1 as a release request names them, signing with `username`'s key."""
    with hospital.ctx():
        user = hospital.user(username)
        statement = escrow.approval_statement(case, account, "node-1", "node-2", user.public_id, check, at)
        signature = b64e(hospital.keys(username).sign(statement))
        return {"account": user.public_id, "name": user.display_name, "signature": signature, "at": at}


def _from_home(home: Hospital, target: Hospital, path: str, body: dict[str, Any]) -> Any:
    """A node request signed with the home node's own key: what its key and database can send."""
    with home.ctx():
        node = runtime.node_key()
    data = json.dumps(body).encode()
    headers = sign_request(node, "POST", path, data, int(time.time() * 1000))
    return target.client.open(path, method="POST", data=data, headers=headers, content_type="application/json")


def _released(holder: Hospital, case: str) -> bool:
    with holder.ctx():
        row = db.session.get(RecoveryCase, case)
        return row is not None and row.status == "released"


def test_the_holder_refuses_forged_unsigned_stale_or_doubled_approvals(
    hospitals: tuple[Hospital, Hospital], alice: str, caplog: pytest.LogCaptureFixture
) -> None:
    home, holder = hospitals
    # The handler on the logger itself, enabled: whatever other tests did to propagation or to the
    # existing loggers (Alembic's logging set-up disables them).
    refused_log = logging.getLogger("portal.services.escrow")
    disabled, refused_log.disabled = refused_log.disabled, False
    refused_log.addHandler(caplog.handler)
    try:
        caplog.set_level(logging.WARNING, logger=refused_log.name)
        _refusals_then_release(home, holder, alice, caplog)
    finally:
        refused_log.removeHandler(caplog.handler)
        refused_log.disabled = disabled


def _refusals_then_release(home: Hospital, holder: Hospital, alice: str, caplog: pytest.LogCaptureFixture) -> None:
    case = _open(home, alice)
    with home.ctx():
        opened = db.session.get(RecoveryCase, case)
        assert opened.opened_signature is not None  # signed by the opener, kept for the release
        opened_at = epoch_ms(opened.opened_at)
    now = epoch_ms(utcnow())
    opener = _signed(home, "admin", case, alice, escrow.IN_PERSON, opened_at)
    second = _signed(home, "admin2", case, alice, escrow.SECOND_APPROVAL, now)

    def release(opened_by: dict[str, Any], approved_by: dict[str, Any]) -> Any:
        body = {"case": case, "account": alice, "opened_by": opened_by, "approved_by": approved_by}
        return _from_home(home, holder, RELEASE, body)

    unsigned = {key: second[key] for key in ("account", "name")}
    answer = release(opener, unsigned)
    assert answer.status_code == 403 and "not signed with their own key" in answer.json["error"]["message"]

    # admin2's name, but signed with the opener's key (what a node holding one admin's session could do)
    forged = {**second, "signature": _signed(home, "admin", case, alice, escrow.SECOND_APPROVAL, now)["signature"]}
    answer = release(opener, forged)
    assert answer.status_code == 403 and "does not verify" in answer.json["error"]["message"]

    # a genuine signature of admin2, but for another case (or another step) does not carry over
    other_case = _signed(home, "admin2", "22222222-2222-4222-8222-222222222222", alice, escrow.SECOND_APPROVAL, now)
    answer = release(opener, {**second, "signature": other_case["signature"]})
    assert answer.status_code == 403 and "does not verify" in answer.json["error"]["message"]
    answer = release(
        opener, {**second, "signature": _signed(home, "admin2", case, alice, escrow.IN_PERSON, now)["signature"]}
    )
    assert answer.status_code == 403 and "does not verify" in answer.json["error"]["message"]
    answer = release({**opener, "signature": b64e(b"\0" * 256)}, second)
    assert answer.status_code == 403 and "opener's signature does not verify" in answer.json["error"]["message"]

    stale_at = epoch_ms(utcnow() - escrow.APPROVAL_FRESH - timedelta(minutes=1))
    answer = release(opener, _signed(home, "admin2", case, alice, escrow.SECOND_APPROVAL, stale_at))
    assert answer.status_code == 403 and "too old" in answer.json["error"]["message"]

    doubled = _signed(home, "admin", case, alice, escrow.SECOND_APPROVAL, now)
    answer = release(opener, doubled)
    assert answer.status_code == 403 and "two different admins" in answer.json["error"]["message"]

    assert not _released(holder, case)
    # Each record once: with propagation on, the root logger's handler saw it too.
    records = dict.fromkeys(caplog.records)
    refusals = [r.getMessage() for r in records if "refused escrow request" in r.getMessage()]
    assert len(refusals) == 7 and all("node-1" in line for line in refusals)
    with holder.ctx():
        assert db.session.scalar(select(HeldShare).where(HeldShare.account == alice)) is not None

    answer = release(opener, second)  # both genuine: released, once
    assert answer.status_code == 200 and isinstance(answer.json["share"], str)
    assert _released(holder, case)


def test_an_unsigned_case_or_holder_approval_is_refused(hospitals: tuple[Hospital, Hospital], alice: str) -> None:
    home, holder = hospitals
    case = "33333333-3333-4333-8333-333333333333"
    with home.ctx():
        admin = home.user("admin")
        opener = {"account": admin.public_id, "name": admin.display_name}
    body = {"case": case, "account": alice, "identity_check": "passport", "opened_by": opener}
    answer = _from_home(home, holder, "/node/v1/escrow/cases", body)
    assert answer.status_code == 403 and "not signed" in answer.json["error"]["message"]
    with holder.ctx():
        assert db.session.get(RecoveryCase, case) is None  # not on the holder's desk

    real = _open(home, alice)  # signed: on the holder's desk
    with holder.ctx():
        assert db.session.get(RecoveryCase, real).status == "waiting"
        node = runtime.node_key()
        admin_b = holder.user("admin.b")
    approval = f"/node/v1/escrow/cases/{real}/approval"
    forged = {"account": alice, "share": "A" * 80, "approved_by": {"account": admin_b.public_id, "name": "X"}}
    data = json.dumps(forged).encode()
    headers = sign_request(node, "POST", approval, data, int(time.time() * 1000))  # the holder node, unsigned admin
    answer = home.client.open(approval, method="POST", data=data, headers=headers, content_type="application/json")
    assert answer.status_code == 403 and "not signed" in answer.json["error"]["message"]
    with home.ctx():
        assert db.session.get(RecoveryCase, real).status == "open"


def test_an_approval_needs_the_admins_own_keys(hospitals: tuple[Hospital, Hospital], alice: str) -> None:
    home, _ = hospitals
    with home.ctx():
        with pytest.raises(Unauthorized, match="your own key"):
            escrow.open_case(home.user("admin"), alice, "passport", utcnow())  # no session keys
        with pytest.raises(Unauthorized, match="your own key"):  # another admin's keys
            escrow.open_case(home.user("admin"), alice, "passport", utcnow(), home.keys("admin2"))
    case = _open(home, alice)
    with home.ctx():
        with pytest.raises(Unauthorized, match="your own key"):
            escrow.approve(home.user("admin2"), case, utcnow(), home.keys("admin"))
        assert db.session.get(RecoveryCase, case).status == "open"
        escrow.approve(home.user("admin2"), case, utcnow(), home.keys("admin2"))
        assert db.session.get(RecoveryCase, case).status == "approved"


def test_a_case_older_than_a_week_needs_a_new_opening(hospitals: tuple[Hospital, Hospital], alice: str) -> None:
    home, holder = hospitals
    case = _open(home, alice)
    week_ago = utcnow() - escrow.OPENED_MAX_AGE - timedelta(minutes=1)
    for hospital in (home, holder):
        with hospital.ctx():
            db.session.get(RecoveryCase, case).opened_at = week_ago
            db.session.commit()
    with home.ctx(), pytest.raises(escrow.Conflict, match="more than 7 days ago"):
        escrow.approve(home.user("admin2"), case, utcnow(), home.keys("admin2"))
    with holder.ctx():
        with pytest.raises(escrow.Conflict, match="more than 7 days ago"):
            escrow.approve(holder.user("admin.b"), case, utcnow(), holder.keys("admin.b"))
        assert db.session.get(RecoveryCase, case).status == "waiting"
    with home.ctx():  # and what the home node's key could send instead is refused by the holder
        opened = db.session.get(RecoveryCase, case)
        opener = escrow._opener(opened)
    second = _signed(home, "admin2", case, alice, escrow.SECOND_APPROVAL, epoch_ms(utcnow()))
    body = {"case": case, "account": alice, "opened_by": opener, "approved_by": second}
    answer = _from_home(home, holder, RELEASE, body)
    assert answer.status_code == 403 and "opener's signature is too old" in answer.json["error"]["message"]
