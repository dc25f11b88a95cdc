"""An approval whose answer was lost between the two hospitals (a slow node, a dropped
connection) can be sent again from the desk: the holder releases the same share again on fresh
signatures, and the home node answers a repeated approval as taken, so neither side is stuck."""

from __future__ import annotations

from typing import Any

import pytest

from portal.extensions import db
from portal.models import RecoveryCase, utcnow
from portal.services import escrow
from tests.portal import test_escrow
from tests.portal.test_escrow import Hospital, InProcessPeers, _open

hospitals, alice = test_escrow.hospitals, test_escrow.alice  # the two hospitals and their patient


def _lose_the_answer_once(monkeypatch: pytest.MonkeyPatch, path_end: str) -> list[str]:
    """The request to a path ending in `path_end` arrives and is handled, but its answer is lost once."""
    lost: list[str] = []
    post = InProcessPeers.post

    def lossy(self: InProcessPeers, peer: str, path: str, body: dict[str, Any]) -> Any:
        answer = post(self, peer, path, body)
        if path.endswith(path_end) and not lost:
            lost.append(path)
            return None
        return answer

    monkeypatch.setattr(InProcessPeers, "post", lossy)
    return lost


def _status(hospital: Hospital, case: str) -> str:
    with hospital.ctx():
        return db.session.get(RecoveryCase, case).status


def test_a_release_whose_answer_was_lost_is_sent_again(
    hospitals: tuple[Hospital, Hospital], alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, holder = hospitals
    case = _open(home, alice)
    lost = _lose_the_answer_once(monkeypatch, "/escrow/release")
    with home.ctx(), pytest.raises(escrow.PeerUnavailable):
        escrow.approve(home.user("admin2"), case, utcnow(), home.keys("admin2"))
    assert lost and _status(holder, case) == "released" and _status(home, case) == "open"
    with home.ctx():
        escrow.approve(home.user("admin2"), case, utcnow(), home.keys("admin2"))  # again, signed afresh
        _, code = escrow.issue_code(home.user("admin"), case, utcnow())  # the share fits
    assert _status(home, case) == "issued" and code


def test_a_holder_approval_whose_answer_was_lost_is_sent_again(
    hospitals: tuple[Hospital, Hospital], alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, holder = hospitals
    case = _open(home, alice)
    lost = _lose_the_answer_once(monkeypatch, "/approval")
    with holder.ctx(), pytest.raises(escrow.PeerUnavailable):
        escrow.approve(holder.user("admin.b"), case, utcnow(), holder.keys("admin.b"))
    assert lost and _status(home, case) == "approved" and _status(holder, case) == "waiting"
    with holder.ctx():
        escrow.approve(holder.user("admin.b"), case, utcnow(), holder.keys("admin.b"))
    assert _status(holder, case) == "released" and _status(home, case) == "approved"
    with home.ctx():
        _, code = escrow.issue_code(home.user("admin"), case, utcnow())
    assert code
