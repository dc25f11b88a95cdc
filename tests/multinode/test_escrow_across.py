"""Hospital-assisted recovery across real node processes on loopback: a patient of hospital 1
forgot her password; hospital 1's front desk checks her identity and opens a case, hospital 2
(which holds the other share of her key) approves it on its own portal, and she sets a new
password with the one-time code, keeping her keys. The recovery is on both nodes' ledgers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest
import requests

from portal.demo import PASSWORD
from portal.launcher import LocalNode, add_patient, api, running, sign_in
from tests.multinode.test_consortium import free_base_port, wait_for
from tests.multinode.test_find_by_id import TIMEOUT, portal_session

SLOT_MS = 500
NEW_PASSWORD = "violet-canyon-orbit-lantern"


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """Override the suite's key pool: these nodes make their own keys in their own processes."""


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalNode]]:
    folder = tmp_path_factory.mktemp("escrow-across")
    with running(Path(folder), 2, free_base_port(3), slot_ms=SLOT_MS, epoch_slots=30, miss_limit=3) as cluster:
        yield cluster


def add_admin(node: LocalNode, username: str, name: str) -> None:
    node.flask(
        "medledger", "create-user", "--role", "admin", "--username", username, "--password", PASSWORD,
        "--display-name", name,
    )  # fmt: skip


def desk(session: requests.Session, node: LocalNode) -> tuple[str, str]:
    page = session.get(f"{node.url}/admin/recoveries", timeout=TIMEOUT).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    return unescape(page), token.group(1) if token else ""


def post(session: requests.Session, node: LocalNode, path: str, data: dict[str, str]) -> requests.Response:
    _, token = desk(session, node)
    return session.post(f"{node.url}{path}", data={**data, "csrf_token": token}, allow_redirects=False, timeout=30)


def escrow_state(node: LocalNode, username: str, password: str = PASSWORD) -> str:
    token, _ = sign_in(node, username, password)  # a sign-in makes the shares once hospital 2 is known
    _, answer = api(node, "GET", "/account/escrow", token=token)
    return answer["state"]


def test_the_holding_hospitals_admin_approves_a_recovery(hospitals: list[LocalNode]) -> None:
    home, holder = hospitals
    add_admin(home, "desk.one", "Desk One")
    add_admin(holder, "desk.two", "Desk Two")
    _, patient = add_patient(home, "ines", "Ines Moreau")
    wait_for(lambda: escrow_state(home, "ines") == "held", 60, "Ines's second share held by hospital 2")

    front = portal_session(home, "desk.one")
    answer = post(front, home, f"/admin/recoveries/new/{patient}", {"identity_check": "passport", "confirm": "yes"})
    assert answer.status_code == 302, answer.text
    page, _ = desk(front, home)
    case = re.search(r'id="case-([0-9a-f-]{36})"', page).group(1)

    second = portal_session(holder, "desk.two")

    def holder_sees_the_case() -> bool:
        if f'id="case-{case}"' in desk(second, holder)[0]:
            return True
        post(front, home, f"/admin/recoveries/{case}/announce", {})  # once hospital 2 knows Desk One's key
        return False

    wait_for(holder_sees_the_case, 60, "the case on hospital 2's desk")
    assert "waiting for your approval" in desk(second, holder)[0]
    answer = post(front, home, f"/admin/recoveries/{case}/issue", {})
    assert answer.status_code == 409  # no code before the second approval

    def approved() -> bool:
        return post(second, holder, f"/admin/recoveries/{case}/approve", {}).status_code == 302

    wait_for(approved, 60, "hospital 1 taking Desk Two's approval (once it knows Desk Two's key)")
    issued = post(front, home, f"/admin/recoveries/{case}/issue", {})
    assert issued.status_code == 200
    code = re.search(r"<strong>([A-Z0-9-]{24})</strong>", issued.text).group(1)

    body = {"username": "ines", "desk_code": code, "new_password": NEW_PASSWORD}
    status, answer = api(home, "POST", "/auth/recover", body)
    assert status == 204, answer
    assert api(home, "POST", "/auth/token", {"username": "ines", "password": PASSWORD})[0] == 401
    assert escrow_state(home, "ines", NEW_PASSWORD) == "held"
    token, _ = sign_in(home, "ines", NEW_PASSWORD)
    _, status_answer = api(home, "GET", "/account/escrow", token=token)
    [recovery] = status_answer["recoveries"]
    assert (recovery["opened_by"], recovery["approved_by"], recovery["approved_by_hospital"]) == (
        "Desk One",
        "Desk Two",
        "Hospital 2",
    )

    def on_the_holders_ledger() -> bool:
        _, top = api(holder, "GET", "/chain/blocks?limit=1")
        heights = range(top["height"], max(top["height"] - 40, 0), -1)
        return any(recovery["tx_hash"] in repr(api(holder, "GET", f"/chain/blocks/{h}")[1]) for h in heights)

    wait_for(on_the_holders_ledger, 60, "the escrow_recovery transaction on hospital 2's ledger")
