"""One patient, every hospital: three real node processes on loopback.

Alice registers at hospital 1. Doctors at hospitals 1 and 2 write for her; a doctor at
hospital 3 asks for access, Alice approves at home, and the doctor reads both records
(and an attachment written at hospital 2) on his own node, with fragments gathered from
the proxies. Alice's access log at home shows those reads; her revocation stops them;
and with her home node killed, a doctor she granted again still reads. Every wait is
bounded.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.consensus.messages import sign_request
from core.crypto import NodeKey, generate_user_keys
from core.encoding import b64e
from core.ledger import key_payload, sign_transaction
from portal.launcher import LocalNode, running
from tests.multinode.test_consortium import free_base_port, key_of, wait_for

SLOT_MS = 500
PASSWORD = "federation-password-1"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """Override the suite's key pool: these nodes make their own keys in their own processes."""


def call(node: LocalNode, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(node.url + "/api/v1" + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def until(
    node: LocalNode, method: str, path: str, body: Any, token: str, ok: int, what: str, timeout: float = 30
) -> Any:
    """Repeat a call until it answers `ok` (the ledger reaches each node within seconds)."""
    last: list[Any] = []

    def done() -> bool:
        status, answer = call(node, method, path, body, token)
        last[:] = [status, answer]
        return status == ok

    try:
        wait_for(done, timeout, what)
    except AssertionError as error:
        raise AssertionError(f"{error}; last answer {last}") from None
    return last[1]


def login(node: LocalNode, username: str) -> str:
    status, answer = call(node, "POST", "/auth/token", {"username": username, "password": PASSWORD})
    assert status == 200, answer
    return answer["token"]


def doctor(node: LocalNode, username: str, name: str) -> tuple[str, str]:
    node.flask(
        "medledger", "create-user", "--role", "doctor", "--username", username, "--password", PASSWORD,
        "--display-name", name, "--hospital", f"Hospital of {node.node_id}", "--licence-number", "L-1",
    )  # fmt: skip
    token = login(node, username)
    return token, call(node, "GET", "/me", token=token)[1]["user"]["id"]


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalNode]]:
    folder = tmp_path_factory.mktemp("federation")
    with running(Path(folder), 3, free_base_port(4), slot_ms=SLOT_MS, epoch_slots=30, miss_limit=3) as cluster:
        yield cluster


def test_one_patient_every_hospital(hospitals: list[LocalNode]) -> None:
    home, second, third = hospitals
    status, answer = call(
        home, "POST", "/auth/register", {"username": "alice", "password": PASSWORD, "display_name": "Alice Moreau"}
    )
    assert status == 201, answer
    alice = login(home, "alice")
    alice_id = call(home, "GET", "/me", token=alice)[1]["user"]["id"]
    dr_home, _ = doctor(home, "dr.home", "Dr. Home")
    dr_second, _ = doctor(second, "dr.second", "Dr. Second")
    dr_third, third_id = doctor(third, "dr.third", "Dr. Third")

    # Another hospital's doctor finds Alice by her id (not by name) and sees her home hospital.
    assert call(second, "GET", "/patients?q=alice", token=dr_second)[1]["patients"] == []
    found_alice = until(second, "GET", f"/patients/{alice_id}", None, dr_second, 200, "alice known at hospital 2")
    assert found_alice["home_hospital"] == "Hospital 1"
    wait_for(
        lambda: call(second, "GET", f"/patients/{alice_id}", token=dr_second)[1]["display_name"] == "Alice Moreau",
        15, "alice's name resolved from her home node",
    )  # fmt: skip

    # Records written at hospitals 1 and 2, one with an attachment; Alice reads both at home.
    written = {}
    for node, token, title in ((home, dr_home, "Written at home"), (second, dr_second, "Written at hospital 2")):
        body = {"title": title, "category": "general", "notes": "note " + title}
        if node is second:
            body["attachments"] = [{"filename": "scan.png", "data": base64.b64encode(PNG).decode()}]
        written[title] = until(node, "POST", f"/patients/{alice_id}/records", body, token, 201, "record written")["id"]
    wait_for(lambda: len(call(home, "GET", "/records", token=alice)[1]["records"]) == 2, 30, "both records at home")
    status, record = call(home, "GET", f"/records/{written['Written at hospital 2']}", token=alice)
    assert status == 200 and record["notes"] == "note Written at hospital 2"

    # A doctor at hospital 3 asks; Alice sees the request at home with his name and approves it.
    ask = {"patient_id": alice_id, "reason": "Second opinion", "days": 7, "scope": {"type": "all"}}
    until(third, "POST", "/access-requests", ask, dr_third, 201, "request sent from hospital 3")
    wait_for(lambda: call(home, "GET", "/access-requests", token=alice)[1]["requests"], 30, "request at home")
    [request] = call(home, "GET", "/access-requests", token=alice)[1]["requests"]
    assert request["reason"] == "Second opinion" and request["days"] == 7
    wait_for(
        lambda: call(home, "GET", "/access-requests", token=alice)[1]["requests"][0]["doctor"]["display_name"]
        == "Dr. Third", 15, "the doctor's name from his home node",
    )  # fmt: skip
    status, answer = call(home, "POST", f"/access-requests/{request['id']}/approve", {}, alice)
    assert status in (200, 201), answer

    # The doctor lists and opens the whole history on his own node, attachment included.
    listing = until(third, "GET", f"/patients/{alice_id}/records", None, dr_third, 200, "grant at hospital 3")
    wait_for(
        lambda: len(call(third, "GET", f"/patients/{alice_id}/records", token=dr_third)[1]["records"]) == 2,
        30, "both records visible at hospital 3",
    )  # fmt: skip
    for title, record_id in written.items():
        opened = until(third, "GET", f"/records/{record_id}", None, dr_third, 200, f"{title} opened at hospital 3")
        assert opened["title"] == title and opened["access"]["mode"] == "grant"
    attachment = urllib.request.Request(
        f"{third.url}/api/v1/records/{written['Written at hospital 2']}/attachments/0",
        headers={"Authorization": f"Bearer {dr_third}"},
    )
    with urllib.request.urlopen(attachment, timeout=10) as answer:
        assert answer.read() == PNG
    assert listing is not None

    # Alice's access log at home shows the reads made at hospital 3.
    def reads_logged() -> bool:
        entries = call(home, "GET", "/access-log", token=alice)[1]["entries"]
        return sum(1 for e in entries if e["reader"]["id"] == third_id) >= 3

    wait_for(reads_logged, 30, "hospital 3's reads in the access log at home")

    # Revoked at home: refused at hospital 3 within a few seconds.
    [grant] = [g for g in call(home, "GET", "/grants", token=alice)[1]["grants"] if g["doctor"]["id"] == third_id]
    assert call(home, "DELETE", f"/grants/{grant['id']}", token=alice)[0] in (200, 204)
    wait_for(
        lambda: call(third, "GET", f"/records/{written['Written at home']}", token=dr_third)[0] == 403,
        20, "revocation reaching hospital 3",
    )  # fmt: skip

    # Granted again, then the home node dies: hospital 3 still lists and opens her history.
    status, answer = call(home, "POST", "/grants", {"doctor_id": third_id, "days": 3}, alice)
    assert status == 201, answer
    until(third, "GET", f"/records/{written['Written at home']}", None, dr_third, 200, "new grant at hospital 3")
    home.stop()
    records = call(third, "GET", f"/patients/{alice_id}/records", token=dr_third)[1]["records"]
    assert {r["id"] for r in records} == set(written.values())
    status, opened = call(third, "GET", f"/records/{written['Written at home']}", token=dr_third)
    assert status == 200 and opened["title"] == "Written at home"


def test_invalid_unendorsed_doctor_key_refused_by_peers(hospitals: list[LocalNode]) -> None:
    """A node operator cannot mint a doctor with a key no member endorsed."""
    _, second, third = hospitals
    rogue_home = NodeKey.generate("node-2")  # claims to be hospital 2, with another key
    keys = generate_user_keys()
    payload = key_payload(str(uuid.uuid4()), "doctor", keys.public.rsa_der, keys.public.umbral, rogue_home)
    tx = sign_transaction("key", payload, keys, int(time.time() * 1000))
    body = json.dumps({"transactions": [b64e(tx.encoded)]}).encode()
    for node in (third, second):
        path = "/node/v1/transactions"
        headers = {"Content-Type": "application/json", **sign_request(key_of(second), "POST", path, body, _ms())}
        request = urllib.request.Request(node.url + path, data=body, method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert json.loads(answer.read()) == {"accepted": 0, "rejected": 1}


def test_invalid_replayed_node_message_refused(hospitals: list[LocalNode]) -> None:
    _, second, third = hospitals
    path = "/node/v1/doctors?q=dr"
    headers = sign_request(key_of(second), "GET", path, b"", _ms())
    first = urllib.request.Request(third.url + path, headers=headers)
    with urllib.request.urlopen(first, timeout=5) as answer:
        assert answer.status == 200
    with pytest.raises(urllib.error.HTTPError) as replay:
        urllib.request.urlopen(urllib.request.Request(third.url + path, headers=headers), timeout=5)
    assert replay.value.code == 401
    unsigned = urllib.request.Request(third.url + "/node/v1/accounts/" + str(uuid.uuid4()))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=5)
    assert refused.value.code == 401


def _ms() -> int:
    return int(time.time() * 1000)
