"""A recovery code past its hour: the desk shows the case as expired (not as a code issued),
the code opens nothing, and the front desk may open a new case for the same person."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from portal import runtime
from portal.extensions import db
from portal.models import RecoveryCase, utcnow
from portal.services import escrow
from portal.services.errors import Unauthorized
from tests.conftest import PASSWORD
from tests.portal import test_escrow
from tests.portal.test_escrow import NEW_PASSWORD, Hospital, _open
from tests.portal.test_pages import csrf

hospitals, alice = test_escrow.hospitals, test_escrow.alice  # the two hospitals and their patient


def _issued(home: Hospital, account: str) -> tuple[str, str]:
    case = _open(home, account)
    with home.ctx():
        escrow.approve(home.user("admin2"), case, utcnow(), home.keys("admin2"))
        _, code = escrow.issue_code(home.user("admin"), case, utcnow())
    return case, code


def _desk_row(home: Hospital, case: str) -> str:
    page = home.client.get("/admin/recoveries").get_data(as_text=True)
    row = re.search(rf'<tr id="case-{case}">(.*?)</tr>', page, re.S)
    assert row, page
    return row.group(1)


def test_an_expired_code_shows_as_expired_and_a_new_case_can_be_opened(
    hospitals: tuple[Hospital, Hospital], alice: str
) -> None:
    home, _ = hospitals
    client = home.client
    client.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": csrf(client, "/login")})
    case, code = _issued(home, alice)
    assert "code issued" in _desk_row(home, case)

    with home.ctx():
        stored = db.session.get(RecoveryCase, case)
        assert escrow.case_state(stored, utcnow()) == "issued"
        assert escrow.case_state(stored, stored.code_expires_at) == "expired"  # at the hour, not after it
        stored.code_expires_at = utcnow() - timedelta(minutes=1)
        db.session.commit()
    row = _desk_row(home, case)
    assert "code expired" in row and "code issued" not in row
    assert "Cancel" in row  # it can be closed from the desk

    with home.ctx():
        with pytest.raises(Unauthorized, match="has expired"):
            escrow.recover_with_code("alice", code, NEW_PASSWORD, runtime.kdf(), utcnow())
        stored = db.session.get(RecoveryCase, case)
        assert (stored.status, stored.wrapped_key) == ("expired", None)  # stored so: nothing left to open
    assert f'id="case-{case}"' not in client.get("/admin/recoveries").get_data(as_text=True)
    assert home.token("alice").status_code == 200  # the old password still works


def test_an_expired_code_does_not_block_a_new_case(hospitals: tuple[Hospital, Hospital], alice: str) -> None:
    home, _ = hospitals
    case, _ = _issued(home, alice)
    with home.ctx():
        db.session.get(RecoveryCase, case).code_expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    again = _open(home, alice)  # not 'already under way'
    with home.ctx():
        assert db.session.get(RecoveryCase, case).status == "expired"
        states = dict(db.session.execute(select(RecoveryCase.id, RecoveryCase.status)).all())
        assert states == {case: "expired", again: "open"}
