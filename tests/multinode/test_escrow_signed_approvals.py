"""Signed approvals across real node processes on loopback: two admins of hospital 1 recover a
patient whose second share hospital 2 holds. Each signs their step with their own key from
their portal session; hospital 2 checks both signatures against its own ledger before it
releases the share. Requests that hospital 1's node key alone can make (unsigned, forged or
doubled approvals) are refused by hospital 2."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from core.consensus.messages import sign_request
from core.crypto import load_node_key
from core.encoding import b64e
from portal.launcher import LocalNode, add_patient, api, running, sign_in
from tests.multinode.test_consortium import free_base_port, wait_for
from tests.multinode.test_escrow_across import add_admin, desk, escrow_state, post
from tests.multinode.test_find_by_id import TIMEOUT, portal_session

SLOT_MS = 500


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """Override the suite's key pool: these nodes make their own keys in their own processes."""


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalNode]]:
    folder = tmp_path_factory.mktemp("escrow-signed")
    with running(Path(folder), 2, free_base_port(3), slot_ms=SLOT_MS, epoch_slots=30, miss_limit=3) as cluster:
        yield cluster


def from_home_node(home: LocalNode, holder: LocalNode, path: str, body: dict[str, Any]) -> requests.Response:
    """A node request signed with hospital 1's node key: all that its key and database can send."""
    node = load_node_key(home.folder / "node.key", None)
    data = json.dumps(body).encode()
    headers = {**sign_request(node, "POST", path, data, int(time.time() * 1000)), "Content-Type": "application/json"}
    return requests.post(f"{holder.url}{path}", data=data, headers=headers, timeout=TIMEOUT)


def test_two_home_admins_sign_and_the_holder_checks_both(hospitals: list[LocalNode]) -> None:
    home, holder = hospitals
    add_admin(home, "desk.one", "Desk One")
    add_admin(home, "desk.two", "Desk Two")
    one, two = sign_in(home, "desk.one")[1], sign_in(home, "desk.two")[1]
    _, patient = add_patient(home, "noor", "Noor Haddad")
    wait_for(lambda: escrow_state(home, "noor") == "held", 60, "Noor's second share held by hospital 2")

    front = portal_session(home, "desk.one")
    answer = post(front, home, f"/admin/recoveries/new/{patient}", {"identity_check": "passport", "confirm": "yes"})
    assert answer.status_code == 302, answer.text
    case = re.search(r'id="case-([0-9a-f-]{36})"', desk(front, home)[0]).group(1)

    # What hospital 1's node key and database alone can send: refused by hospital 2.
    opener = {"account": one, "name": "Desk One"}

    def refusal(approved_by: dict[str, Any], opened_by: dict[str, Any] = opener) -> str:
        body = {"case": case, "account": patient, "opened_by": opened_by, "approved_by": approved_by}
        answer = from_home_node(home, holder, "/node/v1/escrow/release", body)
        assert answer.status_code == 403, answer.text
        return answer.json()["error"]["message"]

    def both_known_on_the_holder() -> bool:  # hospital 2's ledger has both admins' keys
        return "is not signed" in refusal({"account": two, "name": "Desk Two"})

    wait_for(both_known_on_the_holder, 60, "hospital 2 knowing both admins of hospital 1")
    now = int(time.time() * 1000)
    forged = {"account": two, "name": "Desk Two", "signature": b64e(b"\1" * 256), "at": now}
    assert "opener's approval is not signed" in refusal(forged)
    signed_opener = {**opener, "signature": b64e(b"\2" * 256), "at": now}
    assert "does not verify" in refusal(forged, signed_opener)
    assert "two different admins" in refusal({**opener, "signature": b64e(b"\3" * 256), "at": now})

    second = portal_session(home, "desk.two")  # the real thing, signed from Desk Two's portal session

    def approved() -> bool:  # sent again (signed afresh) if hospital 2's answer came too late
        return post(second, home, f"/admin/recoveries/{case}/approve", {}).status_code == 302

    wait_for(approved, 60, "hospital 2 releasing its share on the two signed approvals")
    issued = post(front, home, f"/admin/recoveries/{case}/issue", {})
    assert issued.status_code == 200, issued.text
    assert re.search(r"<strong>([A-Z0-9-]{4}(-[A-Z0-9]{4}){4})</strong>", issued.text)

    def on_the_holders_ledger() -> bool:
        _, top = api(holder, "GET", "/chain/blocks?limit=1")
        heights = range(top["height"], max(top["height"] - 40, 0), -1)
        return any(case in repr(api(holder, "GET", f"/chain/blocks/{h}")[1]) for h in heights)

    wait_for(on_the_holders_ledger, 60, "the escrow_recovery transaction on hospital 2's ledger")
