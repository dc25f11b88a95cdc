"""The node-to-node routes (/node/v1) on the contract: open reads, signed writes, answers shaped
as the node document says, and the same answers peers relied on before."""

from __future__ import annotations

import json
import time
from typing import Any

from flask.testing import FlaskClient

from core.consensus.messages import sign_request
from core.encoding import b64e
from portal import runtime
from tests.conftest import Person

SIGNED = {
    ("post", "/node/v1/blocks"),
    ("post", "/node/v1/transactions"),
    ("post", "/node/v1/reencrypt"),
    ("get", "/node/v1/accounts/{account_id}"),
    ("get", "/node/v1/doctors"),
    ("post", "/node/v1/escrow/deposit"),
    ("post", "/node/v1/escrow/withdraw"),
    ("post", "/node/v1/escrow/cases"),
    ("post", "/node/v1/escrow/release"),
    ("post", "/node/v1/escrow/cases/{case_id}/approval"),
}


def signed(client: FlaskClient, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else b""
    headers = headers or sign_request(runtime.node_key(), method, path, data, int(time.time() * 1000))
    content = {"content_type": "application/json"} if body is not None else {}
    return client.open(path, method=method, data=data, headers=headers, **content)


def test_node_document_names_every_operation(client: FlaskClient) -> None:
    paths = client.get("/node/v1/openapi.json").json["paths"]
    operations = {(m, p): op for p, item in paths.items() for m, op in item.items()}
    assert set(operations) == SIGNED | {
        ("get", "/node/v1/status"),
        ("get", "/node/v1/peers"),
        ("get", "/node/v1/blocks"),
        ("get", "/node/v1/blobs/{sha256}"),
    }
    for key, operation in operations.items():
        assert operation["operationId"].startswith("node"), key
        assert "$ref" in json.dumps(operation["responses"]["200"]), key
        if key in SIGNED:
            assert operation["security"] == [{"NodeSignature": []}] and "401" in operation["responses"], key
        else:
            assert "security" not in operation, key
    assert "requestBody" in operations[("post", "/node/v1/blocks")]
    refusal = client.get("/node/v1/openapi.json").json["components"]["schemas"]["NodeBlockRefusalDetail"]
    assert {"height", "check"} <= set(refusal["properties"])


def test_open_reads_need_no_signature(client: FlaskClient) -> None:
    status = client.get("/node/v1/status").json
    assert set(status) == {"node", "height", "tip", "final"} and status["height"] == 0
    assert client.get("/node/v1/peers").json == {"peers": []}
    [genesis] = client.get("/node/v1/blocks?from=0&limit=5").json["blocks"]
    assert set(genesis) == {"header", "transactions"} and isinstance(genesis["header"], str)
    assert client.get("/node/v1/blocks?from=1").json == {"blocks": []}
    bad = client.get("/node/v1/blocks?limit=101")
    assert bad.status_code == 422
    assert bad.json["error"]["fields"] == {"limit": "`limit` must be a whole number from 1 to 100."}
    assert bad.json["error"]["message"] == "`limit` must be a whole number from 1 to 100."
    assert client.get("/node/v1/blocks?from=-1").status_code == 422
    missing = client.get("/node/v1/blobs/" + "ab" * 32)
    assert missing.status_code == 404 and missing.json["error"]["message"] == "No such attachment here."


def test_signed_routes_refuse_unsigned_and_replayed(client: FlaskClient) -> None:
    unsigned = client.post("/node/v1/transactions", json={"transactions": []})
    assert unsigned.status_code == 401 and "Node message refused" in unsigned.json["error"]["message"]
    assert client.get("/node/v1/doctors?q=dr").status_code == 401
    headers = sign_request(runtime.node_key(), "GET", "/node/v1/doctors?q=dr", b"", int(time.time() * 1000))
    assert signed(client, "GET", "/node/v1/doctors?q=dr", headers=headers).status_code == 200
    replay = signed(client, "GET", "/node/v1/doctors?q=dr", headers=headers)
    assert replay.status_code == 401 and "replayed" in replay.json["error"]["message"]
    # Unsigned is refused before the body is read as input: no field messages for strangers.
    assert client.post("/node/v1/reencrypt", json={}).json["error"]["code"] == "unauthorized"


def test_gossip_counts_what_it_cannot_take(client: FlaskClient) -> None:
    answer = signed(client, "POST", "/node/v1/transactions", {"transactions": ["@@@", b64e(b"{}"), 5]})
    assert answer.status_code == 200 and answer.json == {"accepted": 0, "rejected": 3}
    for body in ({}, {"transactions": "x"}, {"transactions": ["x"] * 1001}):
        refused = signed(client, "POST", "/node/v1/transactions", body)
        assert refused.status_code == 422, body
        assert refused.json["error"]["message"] == "`transactions` must be a list of at most 1000 encoded transactions."
    extra = signed(client, "POST", "/node/v1/transactions", {"transactions": [], "more": 1})
    assert extra.status_code == 422 and extra.json["error"]["fields"] == {"more": "Unknown field."}


def test_refused_block_says_which_check(client: FlaskClient) -> None:
    garbage = signed(client, "POST", "/node/v1/blocks", {"header": b64e(b"{}"), "transactions": []})
    assert garbage.status_code == 422
    error = garbage.json["error"]
    assert (error["code"], error["height"], error["check"]) == ("invalid_block", -1, "encoding")
    assert set(error) == {"code", "message", "height", "check"}
    undecodable = signed(client, "POST", "/node/v1/blocks", {"header": "@@"})
    assert undecodable.status_code == 422 and undecodable.json["error"]["code"] == "invalid_block"
    missing = signed(client, "POST", "/node/v1/blocks", {"transactions": []})
    assert missing.status_code == 422 and set(missing.json["error"]["fields"]) == {"header"}


def test_reencrypt_checks_its_body_then_the_holder_decides(client: FlaskClient) -> None:
    for body, field in (({"access": 7}, "access"), ({}, "access"), ({"access": "x", "emergency": 5}, "emergency")):
        refused = signed(client, "POST", "/node/v1/reencrypt", body)
        assert refused.status_code == 422 and set(refused.json["error"]["fields"]) == {field}, body
    assert refused.json["error"]["message"] == "`emergency` must be the reader's signed emergency (base64url)."
    bad = signed(client, "POST", "/node/v1/reencrypt", {"access": "not base64!"})
    assert bad.status_code == 422 and bad.json["error"]["message"] == "`access` and `emergency` must be base64url."
    holder = signed(client, "POST", "/node/v1/reencrypt", {"access": b64e(b"{}"), "emergency": None})
    assert holder.status_code == 403 and holder.json["error"]["code"] == "reencryption_refused"


def test_accounts_and_doctors_for_member_nodes(client: FlaskClient, doctor: Person) -> None:
    described = signed(client, "GET", f"/node/v1/accounts/{doctor.id}").json
    assert described["id"] == doctor.id and described["role"] == "doctor"
    assert set(described) == {"id", "role", "display_name", "hospital", "home", "home_hospital"}
    assert signed(client, "GET", "/node/v1/accounts/nobody").status_code == 404
    found = signed(client, "GET", "/node/v1/doctors?q=osei").json["doctors"]
    assert [d["id"] for d in found] == [doctor.id]
    short = signed(client, "GET", "/node/v1/doctors?q=o")
    assert short.status_code == 422 and short.json["error"]["message"] == "Search needs at least 2 characters."
    unknown = signed(client, "GET", "/node/v1/doctors?q=osei&page=2")
    assert unknown.status_code == 422 and unknown.json["error"]["fields"] == {"page": "Unknown field."}
