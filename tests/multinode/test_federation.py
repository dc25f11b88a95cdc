"""One patient, every hospital: three real node processes on loopback.

The `make consortium` demo: Alice registers at hospital 1, doctors at hospitals 1 and 2
write for her, hospital 2's doctor holds a grant and hospital 3's asks for access. Alice
approves at home, and the doctor reads the whole history (and an attachment written at
hospital 2) on his own node, with fragments gathered from the proxies. Alice's access
log at home shows those reads; her revocation stops them; and with her home node killed,
a doctor she granted again still reads. Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.consensus.messages import sign_request
from core.crypto import NodeKey, generate_user_keys
from core.encoding import b64e
from core.ledger import key_payload, sign_transaction
from portal.launcher import LocalNode, add_doctor, add_patient, api, api_until, running, seed_demo, sign_in
from tests.multinode.test_consortium import free_base_port, key_of, wait_for

SLOT_MS = 500
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
OTHER_PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def attachment_of(node: LocalNode, token: str, record_id: str) -> bytes:
    request = urllib.request.Request(
        f"{node.url}/api/v1/records/{record_id}/attachments/0", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=15) as answer:
        return answer.read()


class LyingPeer(ThreadingHTTPServer):
    """A member's address answered by a liar: slow, with forged capsule fragments for every
    read and a wrong copy of every attachment; it records what it was asked."""

    asked: set[str]


@contextmanager
def lying_peer(port: int) -> Iterator[LyingPeer]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.startswith("/node/v1/blobs/"):
                server.asked.add("/node/v1/blobs")
                self._answer({"data": b64e(PNG + b"tampered")})
            else:
                self._answer({})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/node/v1/reencrypt":
                server.asked.add("/node/v1/reencrypt")
                time.sleep(1.5)  # slow, but within the gathering bound
                forged = [{"share": share, "threshold": 1, "cfrag": b64e(os.urandom(131))} for share in range(3)]
                self._answer({"fragments": forged})
            else:
                self._answer({})

        def log_message(self, *args: object) -> None:
            pass

    server = LyingPeer(("127.0.0.1", port), Handler)
    server.asked = set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """Override the suite's key pool: these nodes make their own keys in their own processes."""


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalNode]]:
    folder = tmp_path_factory.mktemp("federation")
    with running(Path(folder), 3, free_base_port(4), slot_ms=SLOT_MS, epoch_slots=30, miss_limit=3) as cluster:
        yield cluster


def records_of(node: LocalNode, token: str, patient_id: str | None = None) -> dict[str, str]:
    """Titles by id: a patient's own records, or a patient's records a doctor may open."""
    path = f"/patients/{patient_id}/records" if patient_id else "/records"
    status, answer = api(node, "GET", path, token=token)
    return {r["id"]: r.get("title", "") for r in answer["records"]} if status == 200 else {}


def test_decline_and_break_glass_across_hospitals(hospitals: list[LocalNode]) -> None:
    """A patient of hospital 1 declines a request from hospital 2, then opts in to emergency
    access at home; a doctor of hospital 2 breaks the glass on his own
    node and reads at once (before the emergency's block is final); the patient sees it at home
    with the read in her access log; opting out stops the reads there. Runs before the test that
    stops hospital 1."""
    home, second, _ = hospitals
    bea, bea_id = add_patient(home, "bea", "Bea Lambert")
    writer, _ = add_doctor(home, "dr.petrov", "Dr. Ivan Petrov")
    medic, medic_id = add_doctor(second, "dr.nakamura", "Dr. Ken Nakamura")
    body = {"title": "Allergy: penicillin", "category": "general", "notes": "Anaphylaxis in 2019."}
    record_id = api_until(home, "POST", f"/patients/{bea_id}/records", body, writer, 201, "a record at home")["id"]

    # A request from hospital 2, declined at home: the doctor sees the answer on his own node.
    ask = {"patient_id": bea_id, "reason": "Follow-up after discharge", "days": 7}
    asked = api_until(second, "POST", "/access-requests", ask, medic, 201, "bea known at hospital 2")
    api_until(home, "POST", f"/access-requests/{asked['id']}/decline", {}, bea, 200, "the request at home")

    def declined_at_second() -> bool:
        requests = api(second, "GET", "/access-requests", token=medic)[1]["requests"]
        return [(r["id"], r["status"]) for r in requests] == [(asked["id"], "declined")]

    wait_for(declined_at_second, 30, "the decline reaching hospital 2")
    assert api(second, "GET", f"/records/{record_id}", token=medic)[0] == 403
    reason = {"reason": "Unconscious in our emergency room, allergies unknown"}
    api_until(second, "GET", f"/patients/{bea_id}", None, medic, 200, "bea known at hospital 2")
    status, answer = api(second, "POST", f"/patients/{bea_id}/emergency", reason, medic)
    assert status == 403 and "not opted in" in answer["error"]["message"]

    status, answer = api(home, "PUT", "/emergency-access", {"enabled": True}, bea)
    assert status == 200 and answer == {"enabled": True}
    declared = api_until(second, "POST", f"/patients/{bea_id}/emergency", reason, medic, 201, "bea's opt-in at 2")
    assert declared["active"] and declared["reason"] == reason["reason"]
    opened = api_until(second, "GET", f"/records/{record_id}", None, medic, 200, "break-glass read at hospital 2")
    assert opened["title"] == "Allergy: penicillin" and opened["access"]["mode"] == "emergency"

    # Bea sees the emergency at home, with the doctor's reason and his read in her access log.
    def seen_at_home() -> bool:
        emergencies = api(home, "GET", "/emergency-access", token=bea)[1]["emergencies"]
        return [(e["doctor"]["id"], e["reason"]) for e in emergencies] == [(medic_id, reason["reason"])]

    wait_for(seen_at_home, 30, "the emergency shown at home")
    wait_for(
        lambda: any(e["reader"]["id"] == medic_id for e in api(home, "GET", "/access-log", token=bea)[1]["entries"]),
        30, "the break-glass read in the access log at home",
    )  # fmt: skip

    # She opts out at home: hospital 2 refuses the reads within a few seconds.
    assert api(home, "PUT", "/emergency-access", {"enabled": False}, bea)[1] == {"enabled": False}
    wait_for(
        lambda: api(second, "GET", f"/records/{record_id}", token=medic)[0] == 403, 20, "opt-out reaching hospital 2"
    )


def test_one_patient_every_hospital(hospitals: list[LocalNode]) -> None:
    home, second, third = hospitals
    logins = seed_demo(hospitals)  # the `make consortium` demo: see portal/launcher.py
    alice, alice_id = sign_in(home, "alice")
    dr_second, _ = sign_in(second, "dr.lindqvist")
    dr_third, third_id = sign_in(third, "dr.haddad")
    assert alice_id in logins[-1]

    # Another hospital's doctor finds Alice by her id (not by name) and sees her home hospital.
    assert api(second, "GET", "/patients?q=alice", token=dr_second)[1]["patients"] == []
    found_alice = api_until(second, "GET", f"/patients/{alice_id}", None, dr_second, 200, "alice known at hospital 2")
    assert found_alice["home_hospital"] == "Hospital 1"
    wait_for(
        lambda: api(second, "GET", f"/patients/{alice_id}", token=dr_second)[1]["display_name"] == "Alice Moreau",
        15, "alice's name resolved from her home node",
    )  # fmt: skip

    # Records written at hospitals 1 and 2: Alice reads both at home.
    wait_for(lambda: len(records_of(home, alice)) == 2, 30, "both demo records at home")
    written = {title: record_id for record_id, title in records_of(home, alice).items()}
    status, record = api(home, "GET", f"/records/{written['Cardiology consultation']}", token=alice)
    assert status == 200 and record["notes"].startswith("Cardiology consultation")

    # The doctor granted in the demo reads, at hospital 2, the record written at hospital 1; and
    # writes one more with an attachment.
    opened = api_until(second, "GET", f"/records/{written['Asthma review']}", None, dr_second, 200, "grant in force")
    assert opened["title"] == "Asthma review" and opened["access"]["mode"] == "grant"
    scan = {"title": "Echo scan", "category": "imaging", "notes": "",
            "attachments": [{"filename": "scan.png", "data": b64(PNG)}]}  # fmt: skip
    written["Echo scan"] = api(second, "POST", f"/patients/{alice_id}/records", scan, dr_second)[1]["id"]

    # Hospital 3's pending request: Alice sees it at home with the doctor's name, and approves it.
    [request] = api(home, "GET", "/access-requests", token=alice)[1]["requests"]
    assert request["reason"] == "Second opinion before surgery" and request["days"] == 14
    wait_for(
        lambda: api(home, "GET", "/access-requests", token=alice)[1]["requests"][0]["doctor"]["display_name"]
        == "Dr. Leila Haddad", 15, "the doctor's name from his home node",
    )  # fmt: skip
    status, answer = api(home, "POST", f"/access-requests/{request['id']}/approve", {}, alice)
    assert status in (200, 201), answer

    # The doctor lists and opens the whole history on his own node, attachment included.
    wait_for(lambda: len(records_of(third, dr_third, alice_id)) == 3, 30, "the history visible at hospital 3")
    for title, record_id in written.items():
        opened = api_until(third, "GET", f"/records/{record_id}", None, dr_third, 200, f"{title} at hospital 3")
        assert opened["title"] == title and opened["access"]["mode"] == "grant"
    assert attachment_of(third, dr_third, written["Echo scan"]) == PNG

    # Alice's access log at home shows the reads made at hospital 3.
    def reads_logged() -> bool:
        entries = api(home, "GET", "/access-log", token=alice)[1]["entries"]
        return sum(1 for e in entries if e["reader"]["id"] == third_id) >= 4

    wait_for(reads_logged, 30, "hospital 3's reads in the access log at home")

    # Revoked at home: refused at hospital 3 within a few seconds.
    [grant] = [g for g in api(home, "GET", "/grants", token=alice)[1]["grants"] if g["doctor"]["id"] == third_id]
    assert api(home, "DELETE", f"/grants/{grant['id']}", token=alice)[0] in (200, 204)
    wait_for(
        lambda: api(third, "GET", f"/records/{written['Asthma review']}", token=dr_third)[0] == 403,
        20, "revocation reaching hospital 3",
    )  # fmt: skip

    # Granted again, then the home node dies and a liar takes its address (slow, forged capsule
    # fragments, a wrong attachment): hospital 3 still lists and opens her history, correctly.
    status, answer = api(home, "POST", "/grants", {"doctor_id": third_id, "days": 3}, alice)
    assert status == 201, answer
    api_until(third, "GET", f"/records/{written['Asthma review']}", None, dr_third, 200, "new grant at hospital 3")
    xray = {**scan, "title": "Chest X-ray", "attachments": [{"filename": "xray.png", "data": b64(OTHER_PNG)}]}
    written["Chest X-ray"] = api(second, "POST", f"/patients/{alice_id}/records", xray, dr_second)[1]["id"]
    wait_for(lambda: len(records_of(third, dr_third, alice_id)) == 4, 30, "the X-ray visible at hospital 3")
    home.stop()
    with lying_peer(home.port) as liar:
        assert set(records_of(third, dr_third, alice_id)) == set(written.values())
        status, opened = api(third, "GET", f"/records/{written['Asthma review']}", token=dr_third)
        assert status == 200 and opened["title"] == "Asthma review"
        assert attachment_of(third, dr_third, written["Chest X-ray"]) == OTHER_PNG
        assert liar.asked >= {"/node/v1/reencrypt", "/node/v1/blobs"}  # it was asked, and ignored

        # Hospital 2 down as well: hospital 3 holds one fragment of the m = 2 needed, and with
        # only forged ones besides, it opens nothing and says so.
        second.stop()
        try:
            status, refused = api(third, "GET", f"/records/{written['Asthma review']}", token=dr_third)
            assert status == 409 and refused["error"]["code"] == "grant_unusable"
            assert "only 1 of the 2 proxies needed answered" in refused["error"]["message"]
        finally:
            second.start()
            second.wait_ready()


def test_invalid_unendorsed_doctor_key_refused_by_peers(hospitals: list[LocalNode]) -> None:
    """A node operator cannot mint a doctor with a key no member endorsed."""
    _, second, third = hospitals
    rogue_home = NodeKey.generate("node-2")  # claims to be hospital 2, with another key
    keys = generate_user_keys()
    payload = key_payload(
        str(uuid.uuid4()), "doctor", keys.public.rsa_der, keys.public.umbral, rogue_home, keys.public.sign
    )
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


def test_invalid_input_across_nodes(hospitals: list[LocalNode]) -> None:
    """Unknown ids get a clear 404; garbage from a peer is refused with a 4xx; nothing is lost."""
    _, second, third = hospitals
    dr_second, _ = add_doctor(second, "dr.inputs", "Dr. Ines Putnam")  # not the demo's: tests may run apart
    nobody = str(uuid.uuid4())
    status, answer = api(
        second, "POST", f"/patients/{nobody}/records", {"title": "x", "category": "general"}, dr_second
    )
    assert status == 404 and answer["error"]["message"] == "No such patient."
    status, answer = api(second, "GET", f"/patients/{nobody}", token=dr_second)
    assert status == 404 and answer["error"]["message"] == "No such patient."
    before = api(third, "GET", "/chain/blocks?limit=1")[1]["height"]
    for body in ({"access": "not base64!"}, {"access": b64e(b"garbage")}, {"access": 7}, {}):
        data = json.dumps(body).encode()
        path = "/node/v1/reencrypt"
        headers = {"Content-Type": "application/json", **sign_request(key_of(second), "POST", path, data, _ms())}
        request = urllib.request.Request(third.url + path, data=data, method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code in (403, 422), body
        assert json.loads(refused.value.read())["error"]["message"]
    garbage = json.dumps({"transactions": ["@@@", b64e(b"{}"), 5]}).encode()
    path = "/node/v1/transactions"
    headers = {"Content-Type": "application/json", **sign_request(key_of(second), "POST", path, garbage, _ms())}
    request = urllib.request.Request(third.url + path, data=garbage, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.loads(answer.read()) == {"accepted": 0, "rejected": 3}
    assert api(third, "GET", "/chain/blocks?limit=1")[1]["height"] >= before  # the chain goes on
