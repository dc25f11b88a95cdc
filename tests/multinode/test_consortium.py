"""A real consortium: four node processes on loopback, each with its own database.

Slots are 500 ms so that a delegate missing three slots is dropped within seconds;
every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.consensus.messages import sign_request
from core.crypto import NodeKey, load_node_key
from core.encoding import b64e
from core.ledger import make_block, sign_transaction
from portal.launcher import LocalNode, running
from tests import worker_index

SLOT_MS = 500


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """Override the suite's key pool: these nodes make their own keys in their own processes."""


def free_base_port(count: int) -> int:
    """`count` consecutive free ports from this worker's own block of 500 (17000 + 500 x worker), so
    two xdist workers never race for one (single free ports come from the ephemeral range, 32768 up)."""
    first = 17000 + 500 * worker_index()
    for base in range(first, first + 500, 10):
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                sockets.append(sock)
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free ports")


def get(node: LocalNode, path: str) -> Any:
    with urllib.request.urlopen(node.url + path, timeout=5) as answer:
        return json.loads(answer.read())


def post(node: LocalNode, path: str, body: dict[str, Any], signer: NodeKey | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if signer is not None:
        headers.update(sign_request(signer, "POST", path, data, int(time.time() * 1000)))
    request = urllib.request.Request(node.url + path, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def height(node: LocalNode) -> int:
    return get(node, "/api/v1/chain/blocks?limit=1")["height"]


def block_hash(node: LocalNode, h: int) -> str:
    return get(node, f"/api/v1/chain/blocks/{h}")["hash"]


def transactions(node: LocalNode, kind: str) -> list[str]:
    found = []
    start = 0
    while True:
        page = get(node, f"/api/v1/chain/blocks?from={start}&limit=100")
        for header in page["blocks"]:
            if header["tx_count"]:
                found += [t["hash"] for t in get(node, f"/api/v1/chain/blocks/{header['height']}")["transactions"]
                          if t["kind"] == kind]  # fmt: skip
        if len(page["blocks"]) < 100:
            return found
        start += 100


def key_of(node: LocalNode) -> NodeKey:
    return load_node_key(node.folder / "node.key", None)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalNode]]:
    folder = tmp_path_factory.mktemp("consortium")
    with running(Path(folder), 4, free_base_port(5), slot_ms=SLOT_MS, epoch_slots=40, miss_limit=3) as cluster:
        yield cluster


def in_agreement(cluster: list[LocalNode]) -> bool:
    """Every node has the same block at the lowest tip height among them."""
    low = min(height(n) for n in cluster)
    return low > 0 and len({block_hash(n, low) for n in cluster}) == 1


def test_nodes_converge_and_transactions_land_once(nodes: list[LocalNode]) -> None:
    wait_for(lambda: min(height(n) for n in nodes) >= 8, 40, "blocks from every delegate")
    producers = {get(n, f"/api/v1/chain/blocks/{h}")["header"]["producer"] for n in nodes[:1] for h in range(1, 9)}
    assert producers == {"node-1", "node-2", "node-3", "node-4"}
    for i, node in enumerate(nodes):
        body = {
            "username": f"patient{i}",
            "password": "long-enough-pw",
            "display_name": f"P{i}",
            "date_of_birth": "1990-01-01",
        }
        status, _ = post(node, "/api/v1/auth/register", body)
        assert status == 201
    wait_for(lambda: all(len(transactions(n, "key")) == 4 for n in nodes), 40, "4 registrations on every node")
    for node in nodes:
        hashes = transactions(node, "key")
        assert len(set(hashes)) == 4, "each transaction committed exactly once"
        assert get(node, "/api/v1/chain/verify")["valid"] is True
    wait_for(lambda: in_agreement(nodes), 10, "one chain")
    final = get(nodes[0], "/api/v1/consensus")["final_height"]
    assert final > 0


def test_out_of_turn_forged_and_tampered_blocks_are_refused(nodes: list[LocalNode]) -> None:
    target, intruder = nodes[0], key_of(nodes[1])
    outcomes = []
    for attempt in range(20):
        tip_height = height(target)
        tip = get(target, f"/api/v1/chain/blocks/{tip_height}")
        status = get(target, "/api/v1/consensus")
        now = int(time.time() * 1000)
        theirs = [s for s in status["schedule"] if s["node"] != "node-2"]
        timestamp = max(now, theirs[0]["starts"]) if theirs else now
        block = make_block(tip_height + 1, tip["hash"], [], "node-2", intruder, timestamp)
        code, answer = post(
            target, "/node/v1/blocks", {"header": b64e(block.header.encoded), "transactions": []}, intruder
        )
        outcomes.append((code, answer))
        if code == 422:
            assert answer["error"]["check"] in ("producer schedule", "timestamp")
            break
        time.sleep(0.05 * attempt)
    assert outcomes[-1][0] == 422, outcomes

    # A block claiming node-3 but signed with node-2's key.
    tip_height = height(target)
    tip = get(target, f"/api/v1/chain/blocks/{tip_height}")
    forged = make_block(tip_height + 1, tip["hash"], [], "node-3", intruder, int(time.time() * 1000))
    code, answer = post(
        target, "/node/v1/blocks", {"header": b64e(forged.header.encoded), "transactions": []}, intruder
    )
    assert code in (200, 422)
    if code == 422:
        assert answer["error"]["check"] in ("producer signature", "producer schedule")
    else:
        assert answer["outcome"] in ("fork", "ahead")

    # A block whose body was tampered with after signing.
    tip_height = height(target)
    tip = get(target, f"/api/v1/chain/blocks/{tip_height}")
    honest = sign_transaction("vote", {"nodes": ["node-1"]}, intruder, int(time.time() * 1000))
    signed = make_block(tip_height + 1, tip["hash"], [honest], "node-2", intruder, int(time.time() * 1000))
    tampered = honest.encoded.replace(b"node-1", b"node-4")
    code, answer = post(
        target, "/node/v1/blocks", {"header": b64e(signed.header.encoded), "transactions": [b64e(tampered)]}, intruder
    )
    if code == 422:
        assert answer["error"]["check"] == "body hash"
    else:
        assert answer["outcome"] in ("fork", "ahead")  # the tip moved meanwhile: not appended either

    # Unsigned or unknown senders are refused outright.
    code, answer = post(target, "/node/v1/blocks", {"header": b64e(forged.header.encoded), "transactions": []})
    assert code == 401 and "Node message refused" in answer["error"]["message"]
    stranger = NodeKey.generate("node-9")
    code, _ = post(target, "/node/v1/transactions", {"transactions": []}, stranger)
    assert code == 401
    assert get(target, "/api/v1/chain/verify")["valid"] is True
    before = height(target)
    wait_for(lambda: height(target) > before + 2, 10, "the chain to go on")


def test_stopped_delegate_is_replaced_and_catches_up(nodes: list[LocalNode]) -> None:
    stopped = nodes[3]
    stopped.stop()
    wait_for(
        lambda: any(r["node"] == "node-4" for r in get(nodes[0], "/api/v1/consensus")["removals"]),
        20,
        "node-4 to be dropped for missed slots",
    )
    status = get(nodes[0], "/api/v1/consensus")
    assert "node-4" not in status["delegates"]
    assert any(r["node"] == "node-4" and "missed" in r["reason"] for r in status["removals"])
    reliability = {c["node"]: c["reliability"] for c in status["candidates"]}
    assert reliability["node-4"] < reliability["node-1"]
    before = height(nodes[0])
    wait_for(lambda: height(nodes[0]) >= before + 4, 15, "the chain to go on without node-4")

    stopped.start()
    stopped.wait_ready()
    wait_for(lambda: height(stopped) >= height(nodes[0]) - 1, 30, "node-4 to catch up")
    wait_for(lambda: in_agreement(nodes), 10, "one chain after catching up")
    assert get(stopped, "/api/v1/chain/verify")["valid"] is True


def test_equivocation_evidence_removes_a_delegate(nodes: list[LocalNode]) -> None:
    culprit = key_of(nodes[2])
    reporter = key_of(nodes[0])
    slot_time = int(time.time() * 1000)
    one = make_block(1, "ab" * 32, [], "node-3", culprit, slot_time, nonce="01" * 16)
    two = make_block(1, "cd" * 32, [], "node-3", culprit, slot_time, nonce="02" * 16)
    evidence = sign_transaction(
        "evidence", {"a": b64e(one.header.encoded), "b": b64e(two.header.encoded)}, reporter, slot_time
    )
    code, answer = post(nodes[0], "/node/v1/transactions", {"transactions": [b64e(evidence.encoded)]}, reporter)
    assert (code, answer) == (200, {"accepted": 1, "rejected": 0})
    for node in nodes:
        wait_for(
            lambda node=node: any(
                "two blocks" in r["reason"] and r["node"] == "node-3"
                for r in get(node, "/api/v1/consensus")["removals"]
            ),
            20,
            f"{node.node_id} to drop node-3 on evidence",
        )


def test_minority_cannot_finalise_and_final_blocks_never_change(nodes: list[LocalNode]) -> None:
    wait_for(lambda: in_agreement(nodes), 20, "one chain")
    majority = nodes[2:]
    for node in majority:
        node.stop()
    time.sleep(SLOT_MS / 1000 * 2)
    minority = nodes[:2]
    final = get(minority[0], "/api/v1/consensus")["final_height"]
    final_hash = block_hash(minority[0], final)
    start = height(minority[0])
    wait_for(lambda: height(minority[0]) >= start + 6, 30, "the minority to keep producing")
    assert get(minority[0], "/api/v1/consensus")["final_height"] == final, "a minority finalised a block"

    for node in majority:
        node.start()
    for node in majority:
        node.wait_ready()
    wait_for(lambda: min(height(n) for n in nodes) >= height(minority[0]) - 1, 40, "the majority to catch up")
    wait_for(lambda: in_agreement(nodes), 20, "one chain after healing")
    wait_for(lambda: get(nodes[0], "/api/v1/consensus")["final_height"] > final, 40, "finality to resume")
    for node in nodes:
        assert block_hash(node, final) == final_hash


def test_a_new_hospital_joins_by_the_members_vote(nodes: list[LocalNode]) -> None:
    genesis = nodes[0].genesis
    newcomer = LocalNode("node-5", nodes[0].port + 4, genesis.parent / "node-5", genesis)
    newcomer.folder.mkdir()
    NodeKey.generate("node-5").save(newcomer.folder / "node.key", None)
    newcomer.flask("db", "upgrade")
    newcomer.flask("medledger", "node", "init")
    newcomer.start()
    try:
        newcomer.wait_ready()
        wait_for(lambda: height(newcomer) >= height(nodes[0]) - 2, 40, "the newcomer to sync as an observer")
        assert "node-5" not in [c["node"] for c in get(nodes[0], "/api/v1/consensus")["candidates"]]
        key = b64e(key_of(newcomer).public_raw)
        for member in nodes[:2]:
            member.flask("medledger", "node", "admit", "--node-id", "node-5", "--key", key, "--url", newcomer.url)
        time.sleep(SLOT_MS / 1000 * 8)
        assert "node-5" not in [c["node"] for c in get(nodes[0], "/api/v1/consensus")["candidates"]], "2 of 4 admitted"
        nodes[2].flask("medledger", "node", "admit", "--node-id", "node-5", "--key", key, "--url", newcomer.url)
        for node in [*nodes, newcomer]:
            wait_for(
                lambda node=node: "node-5" in [c["node"] for c in get(node, "/api/v1/consensus")["candidates"]],
                30,
                f"{node.node_id} to count node-5 as a candidate",
            )
        assert get(newcomer, "/api/v1/chain/verify")["valid"] is True
    finally:
        newcomer.stop()


def test_a_delegate_signing_an_invalid_block_is_dropped(nodes: list[LocalNode]) -> None:
    """node-2 signs a block whose body holds a malformed transaction: node-1 refuses it and turns
    it into evidence, and every node drops node-2 once the evidence is in a block."""
    from core.encoding import canonical
    from core.ledger.block import SIGNING_DOMAIN, _build, _unsigned
    from core.ledger.merkle import merkle_root

    wait_for(lambda: in_agreement(nodes), 30, "one chain")
    culprit = key_of(nodes[1])
    garbage = b'{"not":"a transaction"}'
    for _ in range(10):  # the tip can move between reading it and posting: build on the new one
        tip_height = height(nodes[0])
        tip = get(nodes[0], f"/api/v1/chain/blocks/{tip_height}")
        unsigned = _unsigned(tip_height + 1, int(time.time() * 1000), tip["hash"],
                             merkle_root([hashlib.sha256(garbage).hexdigest()]), "ee" * 16, "node-2")  # fmt: skip
        header = _build(unsigned, culprit.sign(SIGNING_DOMAIN + canonical(unsigned)))
        code, answer = post(
            nodes[0], "/node/v1/blocks", {"header": b64e(header.encoded), "transactions": [b64e(garbage)]}, culprit
        )
        if not (code == 200 and answer.get("outcome") in ("fork", "ahead")):
            break
    assert code == 422 and answer["error"]["check"] == "encoding"
    for node in nodes:
        wait_for(
            lambda node=node: any(
                r["node"] == "node-2" and r["reason"] == "signed an invalid block"
                for r in get(node, "/api/v1/consensus")["removals"]
            ),
            30,
            f"{node.node_id} to drop node-2 for its invalid block",
        )
