"""Consensus as the portal shows it: the public status, stake-weighted votes (API and admin
form), and the admin's consensus page with peers' health."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal import runtime
from portal.extensions import db
from portal.models import LedgerTransaction
from portal.services import ledger
from tests.conftest import Person, produce
from tests.portal.test_pages import csrf, log_in


def _votes_queued() -> int:
    return db.session.scalar(select(func.count()).where(LedgerTransaction.kind == "vote")) or 0


# -- API -------------------------------------------------------------------------------------


def test_consensus_status_of_a_single_node(client: FlaskClient) -> None:
    status = client.get("/api/v1/consensus").json
    assert status["params"]["delegates"] == 1
    assert status["delegates"] == ["node-1"]
    assert status["final_height"] >= 0 and status["height"] == 0
    assert status["schedule"] and all(s["node"] == "node-1" for s in status["schedule"])
    assert status["schedule"][0]["slot"] >= status["slot"]
    [candidate] = status["candidates"]
    assert candidate["node"] == "node-1" and candidate["reliability"] == 1000 and candidate["votes"] == 0
    assert status["removals"] == []


def test_votes_count_once_in_a_block(
    app: Flask, client: FlaskClient, patient: Person, doctor: Person, admin: Person
) -> None:
    for person in (patient, doctor, admin):
        answer = client.post("/api/v1/votes", json={"nodes": ["node-1"]}, headers=person.headers)
        assert answer.status_code == 201, answer.json
        assert answer.json["nodes"] == ["node-1"] and len(answer.json["tx_hash"]) == 64
        # Queued, not yet in a block: the chain has no vote for this account.
        assert client.get("/api/v1/votes", headers=person.headers).json == {"nodes": None}
    assert _votes_queued() == 3
    assert client.get("/api/v1/consensus").json["candidates"][0]["votes"] == 0

    produce(app)
    candidate = client.get("/api/v1/consensus").json["candidates"][0]
    assert candidate["votes"] > 0
    # One hospital, one vote: node-1's doctor and admin pool into 1000; the patient adds nothing.
    assert candidate["votes"] == 1000
    assert candidate["score"] == 1000 + candidate["votes"]
    for person in (patient, doctor, admin):
        assert client.get("/api/v1/votes", headers=person.headers).json == {"nodes": ["node-1"]}
    assert db.session.scalar(select(func.count()).where(LedgerTransaction.status == "rejected")) == 0


NOT_A_LIST = "`nodes` must be a list of node ids."


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"nodes": ["node-9"]}, "'node-9' is not a candidate node; candidates are: node-1."),
        ({"nodes": []}, "Choose at least one node to vote for."),
        ({"nodes": "node-1"}, NOT_A_LIST),
        ({"nodes": [1]}, NOT_A_LIST),
        ({}, NOT_A_LIST),
        ({"nodes": ["node-1", "node-2"]}, "Choose at most 1 node (the number of delegates)."),
        ({"nodes": ["node-1", "node-1"]}, "Each node may be chosen only once."),
    ],
)
def test_invalid_votes_are_refused(client: FlaskClient, patient: Person, body: dict[str, Any], message: str) -> None:
    answer = client.post("/api/v1/votes", json=body, headers=patient.headers)
    assert answer.status_code == 422
    error = {"code": "validation_failed", "message": message}
    if message == NOT_A_LIST:  # refused by the schema, which names the field
        error["fields"] = {"nodes": NOT_A_LIST}
    assert answer.json == {"error": error}
    assert _votes_queued() == 0


def test_invalid_vote_with_an_unknown_field(client: FlaskClient, patient: Person) -> None:
    answer = client.post("/api/v1/votes", json={"nodes": ["node-1"], "weight": 9}, headers=patient.headers)
    assert answer.status_code == 422
    assert answer.json["error"]["fields"] == {"weight": "Unknown field."}
    assert _votes_queued() == 0


def test_unknown_node_ids_are_not_echoed_at_length(client: FlaskClient, patient: Person) -> None:
    answer = client.post("/api/v1/votes", json={"nodes": ["x" * 5000]}, headers=patient.headers)
    assert answer.status_code == 422 and len(answer.json["error"]["message"]) < 200


def test_votes_need_a_sign_in(client: FlaskClient, patient: Person) -> None:
    assert client.post("/api/v1/votes", json={"nodes": ["node-1"]}).status_code == 401
    assert client.get("/api/v1/votes").status_code == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert client.post("/api/v1/votes", json={"nodes": ["node-1"]}, headers=bad).status_code == 401
    assert client.get("/api/v1/votes", headers=bad).status_code == 401
    assert _votes_queued() == 0


def test_votes_need_a_json_body(client: FlaskClient, patient: Person) -> None:
    answer = client.post("/api/v1/votes", data="nodes=node-1", headers=patient.headers)
    assert answer.status_code == 400 and answer.json["error"]["code"] == "invalid_json"


# -- the admin's page ----------------------------------------------------------------------------


def test_admin_page_for_a_consortium_of_one(app: Flask, client: FlaskClient, admin: Person) -> None:
    log_in(client, admin.username)
    page = client.get("/admin/consensus")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "consortium of one" in html
    assert "node-1" in html and "Delegates of epoch" in html and "Upcoming slots" in html
    assert 'name="nodes" value="node-1"' in html and "Choose up to 1 node" in html
    assert "UTC" in html and "100%" in html
    assert "No delegate has been removed." in html
    assert 'href="/admin/consensus"' in html  # in the nav
    # No inline script or style (the CSP allows neither); the one script is the sign-out warning's file.
    assert all('src="/static/' in tag for tag in re.findall(r"<script[^>]*>", html))
    assert "style=" not in html


def test_admin_votes_with_the_form(app: Flask, client: FlaskClient, admin: Person) -> None:
    log_in(client, admin.username)
    url = "/admin/consensus/vote"
    assert client.post(url, data={"nodes": "node-1"}).status_code == 400  # no CSRF token
    assert _votes_queued() == 0

    refused = client.post(url, data={"csrf_token": csrf(client, "/admin/consensus")})
    assert refused.status_code == 422
    assert "Choose at least one node to vote for." in refused.get_data(as_text=True)
    refused = client.post(url, data={"csrf_token": csrf(client, "/admin/consensus"), "nodes": "node-7"})
    assert refused.status_code == 422 and "is not a candidate node" in refused.get_data(as_text=True)
    assert _votes_queued() == 0

    answer = client.post(url, data={"csrf_token": csrf(client, "/admin/consensus"), "nodes": "node-1"})
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/admin/consensus")
    page = client.get("/admin/consensus").get_data(as_text=True)
    assert "Vote recorded; it counts from the next epoch once in a block." in page
    assert "You have no vote on the chain yet." in page
    assert _votes_queued() == 1

    produce(app)
    page = client.get("/admin/consensus").get_data(as_text=True)
    assert "On the chain you vote for node-1." in page
    assert 'value="node-1" checked' in page
    assert ">1000<" in page  # node-1's hospital vote, all on node-1


def test_consensus_page_is_for_admins_only(client: FlaskClient, doctor: Person, patient: Person) -> None:
    assert client.get("/admin/consensus").status_code == 302  # to the login page
    log_in(client, doctor.username)
    assert client.get("/admin/consensus").status_code == 403
    answer = client.post(
        "/admin/consensus/vote", data={"csrf_token": csrf(client, "/doctor/records"), "nodes": "node-1"}
    )
    assert answer.status_code == 403
    assert _votes_queued() == 0


@dataclass
class FakePeers:
    """Stands in for `network.Peers`: canned /node/v1/status answers, None for a dead peer."""

    answers: dict[str, Any]
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=4))

    @property
    def urls(self) -> dict[str, str]:
        return {peer: f"http://{peer}.invalid" for peer in self.answers}

    def get(self, peer: str, path: str) -> dict[str, Any] | None:
        assert path == "/node/v1/status"
        answer = self.answers[peer]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_admin_page_shows_peers_health(
    app: Flask, client: FlaskClient, admin: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    produce(app)  # our height: 1 (the admin's key registration)
    tip = ledger.tip()
    assert tip is not None and tip.height == 1
    fake = FakePeers(
        {
            "node-2": {"node": "node-2", "height": 0, "tip": "ab" * 32, "final": 0},
            "node-3": {"node": "node-3", "height": 1, "tip": tip.hash, "final": 1},
            "node-4": {"node": "node-4", "height": 4, "tip": "cd" * 32, "final": 3},
            "node-5": None,
            "node-6": OSError("connection reset"),
            "node-7": {"height": "<b>tall</b>"},
        }
    )
    monkeypatch.setattr(runtime, "peers", lambda: fake)
    log_in(client, admin.username)
    html = client.get("/admin/consensus").get_data(as_text=True)
    fake.pool.shutdown()
    assert "consortium of one" not in html
    assert "behind by 1" in html and "in step" in html and "ahead by 3" in html
    assert "abababababab…" in html and tip.hash[:12] in html
    assert html.count(">reachable<") == 3 and html.count(">unreachable<") == 3
    assert "<b>tall</b>" not in html


def test_admin_page_lists_removals(
    app: Flask, client: FlaskClient, admin: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ledger.consensus_status

    def with_removals(now: Any) -> dict[str, Any]:
        status = real(now)
        status["removals"] = [
            {"slot": 12, "node": "node-2", "reason": "missed 3 slots in a row"},
            {"slot": 40, "node": "node-3", "reason": "signed two blocks for one slot"},
        ]
        status["candidates"][0]["banned_until_epoch"] = status["epoch"] + 2
        return status

    monkeypatch.setattr(ledger, "consensus_status", with_removals)
    log_in(client, admin.username)
    html = client.get("/admin/consensus").get_data(as_text=True)
    assert "missed 3 slots in a row" in html and "signed two blocks for one slot" in html
    assert ">equivocation<" in html and ">missed slots<" in html and "sitting out" in html
