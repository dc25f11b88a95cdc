"""One paging convention for every list that can grow: `limit`/`offset` in, the list plus `total`
and `next_offset` out; walking the pages returns every item exactly once, even when timestamps
tie, and never another patient's items. The portal's long lists page the same way, without script."""

from __future__ import annotations

import html
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from portal import runtime
from portal.extensions import db
from portal.models import AccessEntry, AccessRequest, Block, Connection, EmergencyAccess, Grant, Record, User, utcnow
from portal.services import accounts, paging
from portal.services.errors import Forbidden
from tests.conftest import RECORD, Person, make_person
from tests.portal.test_pages import log_in

DASH = "\u2013"  # the pages write "Showing 1-2 of 5" with an en dash
PAGES_OF_FIVE = [f"1{DASH}2 of 5", f"3{DASH}4 of 5", f"5{DASH}5 of 5"]
BAD_PAGES = ("limit=0", "limit=201", "limit=x", "offset=-1", "offset=1.5", "limit=")


@pytest.fixture(autouse=True)
def emergency_key_in_tmp(app: Flask, tmp_path: Path) -> None:
    app.config["EMERGENCY_KEY_PATH"] = str(tmp_path / "emergency.key")


def write(client: FlaskClient, author: Person, patient: Person, title: str, **fields: str) -> str:
    answer = client.post(
        f"/api/v1/patients/{patient.id}/records", json={**RECORD, "title": title, **fields}, headers=author.headers
    )
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def same_moment(model: type, **where: Any) -> None:
    """Give rows one timestamp, so only the tie-break keeps the pages apart."""
    column = {Record: "created_at", AccessEntry: "at"}.get(model, "created_at")
    moment = utcnow().replace(microsecond=0)
    query = update(model).values({column: moment})
    for name, value in where.items():
        query = query.where(getattr(model, name) == value)
    db.session.execute(query)
    db.session.commit()


def walk(client: FlaskClient, path: str, key: str, who: Person, limit: int = 3) -> tuple[list[Any], int]:
    """Every item of an API list, page by page, checking `total` and `next_offset` on each page."""
    seen: list[Any] = []
    offset: int | None = 0
    total = None
    sep = "&" if "?" in path else "?"
    while offset is not None:
        answer = client.get(f"{path}{sep}limit={limit}&offset={offset}", headers=who.headers)
        assert answer.status_code == 200, answer.json
        body = answer.json
        total = body["total"] if total is None else total
        assert body["total"] == total
        assert len(body[key]) == min(limit, total - offset)
        expected_next = offset + limit if offset + limit < total else None
        assert body["next_offset"] == expected_next
        seen += body[key]
        offset = body["next_offset"]
    return seen, total or 0


def assert_refuses_bad_pages(client: FlaskClient, path: str, who: Person) -> None:
    sep = "&" if "?" in path else "?"
    for query in BAD_PAGES[:-1]:
        answer = client.get(f"{path}{sep}{query}", headers=who.headers)
        assert answer.status_code == 422, (path, query)
        assert answer.json["error"]["code"] == "validation_failed"
    # A blank value is absent: the default page.
    assert client.get(f"{path}{sep}limit=", headers=who.headers).status_code == 200


# -- the helper ---------------------------------------------------------------------------------


def test_page_arithmetic() -> None:
    items = list(range(7))
    pages = [paging.paged_list(items, 3, offset) for offset in (0, 3, 6)]
    assert [p.items for p in pages] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [p.next_offset for p in pages] == [3, 6, None]
    assert [p.previous_offset for p in pages] == [None, 0, 3]
    assert [(p.first, p.last, p.total) for p in pages] == [(1, 3, 7), (4, 6, 7), (7, 7, 7)]
    beyond = paging.paged_list(items, 3, 50)
    assert beyond.items == [] and beyond.next_offset is None and beyond.first == 0 and beyond.total == 7
    assert paging.paged_list([], 3, 0).next_offset is None
    assert paging.bounds(None, "") == (paging.DEFAULT_LIMIT, 0)
    assert paging.bounds("200", "5") == (200, 5)


# -- the API lists ------------------------------------------------------------------------------


def test_records_page_every_item_once_when_times_tie(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person
) -> None:
    ids = {write(client, doctor, patient, f"R{n}") for n in range(7)}
    write(client, doctor, other_patient, "Not Alice's")
    same_moment(Record)
    seen, total = walk(client, "/api/v1/records", "records", patient)
    assert total == 7 and len(seen) == 7 and {r["id"] for r in seen} == ids
    assert all(r["patient"]["id"] == patient.id for r in seen)
    mine, total = walk(client, "/api/v1/records", "records", doctor, limit=2)
    assert total == 8 and len({r["id"] for r in mine}) == 8
    assert_refuses_bad_pages(client, "/api/v1/records", patient)


def test_records_are_newest_first(client: FlaskClient, doctor: Person, patient: Person) -> None:
    for n in range(4):
        write(client, doctor, patient, f"R{n}")
    titles = [r["title"] for r in client.get("/api/v1/records?limit=4", headers=patient.headers).json["records"]]
    assert titles == ["R3", "R2", "R1", "R0"]


def test_a_granted_doctors_view_of_a_patients_records(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, other_patient: Person
) -> None:
    categories = ("cardiology", "respiratory")
    ids = {write(client, other_doctor, patient, f"R{n}", category=categories[n % 2]) for n in range(6)}
    own = write(client, doctor, patient, "Own")
    ids.add(own)
    write(client, other_doctor, other_patient, "Bob's")
    path = f"/api/v1/patients/{patient.id}/records"
    assert [r["id"] for r in walk(client, path, "records", doctor)[0]] == [own]  # before any grant: their own
    assert client.get(f"/api/v1/patients/{other_patient.id}/records", headers=doctor.headers).status_code == 403
    answer = client.post("/api/v1/grants", json={"doctor_id": doctor.id}, headers=patient.headers)
    assert answer.status_code == 201
    same_moment(Record)
    seen, total = walk(client, path, "records", doctor)
    assert total == 7 and {r["id"] for r in seen} == ids and len(seen) == 7
    # A narrower grant: only what it covers is counted and listed.
    client.delete(f"/api/v1/grants/{answer.json['id']}", headers=patient.headers)
    scoped = {"type": "categories", "categories": ["cardiology"]}
    client.post("/api/v1/grants", json={"doctor_id": doctor.id, "scope": scoped}, headers=patient.headers)
    seen, total = walk(client, path, "records", doctor)
    tag = runtime.node().category_tag("cardiology")
    cardiology = {i for i in ids if db.session.get(Record, i).category_tag == tag}
    assert len(cardiology) == 3 and total == 4 and {r["id"] for r in seen} == cardiology | {own}
    assert_refuses_bad_pages(client, path, doctor)


def test_access_log_pages_and_counts(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person
) -> None:
    record_id = write(client, doctor, patient, "Read often")
    other = write(client, doctor, other_patient, "Bob's")
    for _ in range(7):
        assert client.get(f"/api/v1/records/{record_id}", headers=doctor.headers).status_code == 200
    client.get(f"/api/v1/records/{other}", headers=doctor.headers)
    same_moment(AccessEntry)
    seen, total = walk(client, "/api/v1/access-log", "entries", patient)
    assert total == 7 and len({e["id"] for e in seen}) == 7
    assert all(e["record"]["id"] == record_id for e in seen)
    assert_refuses_bad_pages(client, "/api/v1/access-log", patient)


def test_access_requests_page_for_both_sides(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person
) -> None:
    def ask(who: Person) -> str:
        answer = client.post(
            "/api/v1/access-requests", json={"patient_id": who.id, "reason": "Follow-up"}, headers=doctor.headers
        )
        assert answer.status_code == 201, answer.json
        return answer.json["id"]

    ids = set()
    for _ in range(7):  # one pending request per pair: each is declined before the next
        ids.add(ask(patient))
        assert client.post(f"/api/v1/access-requests/{ask_id(ids)}/decline", headers=patient.headers).status_code == 200
    bobs = ask(other_patient)
    same_moment(AccessRequest)
    seen, total = walk(client, "/api/v1/access-requests", "requests", patient)
    assert total == 7 and {r["id"] for r in seen} == ids and len(seen) == 7
    assert all(r["reason"] == "Follow-up" for r in seen)
    seen, total = walk(client, "/api/v1/access-requests", "requests", doctor, limit=2)
    assert total == 8 and {r["id"] for r in seen} == ids | {bobs}
    assert_refuses_bad_pages(client, "/api/v1/access-requests", patient)


def ask_id(ids: set[str]) -> str:
    """The one request of `ids` still pending."""
    [pending] = [i for i in ids if db.session.get(AccessRequest, i).status == "pending"]
    return pending


def test_grants_page_for_patient_and_doctor(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person
) -> None:
    ids = set()
    for n in range(7):
        answer = client.post("/api/v1/grants", json={"doctor_id": doctor.id, "days": n + 1}, headers=patient.headers)
        assert answer.status_code == 201
        ids.add(answer.json["id"])
    client.post("/api/v1/grants", json={"doctor_id": doctor.id}, headers=other_patient.headers)
    client.put("/api/v1/emergency-access", json={"enabled": True}, headers=patient.headers)  # not a doctor's grant
    same_moment(Grant)
    seen, total = walk(client, "/api/v1/grants", "grants", patient)
    assert total == 7 and {g["id"] for g in seen} == ids and len(seen) == 7
    seen, total = walk(client, "/api/v1/grants", "grants", doctor, limit=4)
    assert total == 8 and len({g["id"] for g in seen}) == 8
    assert_refuses_bad_pages(client, "/api/v1/grants", patient)


def test_emergencies_page(client: FlaskClient, doctor: Person, patient: Person, other_patient: Person) -> None:
    for who in (patient, other_patient):
        assert client.put("/api/v1/emergency-access", json={"enabled": True}, headers=who.headers).status_code == 200
    answer = client.post(
        f"/api/v1/patients/{patient.id}/emergency", json={"reason": "Unconscious"}, headers=doctor.headers
    )
    assert answer.status_code == 201
    first = db.session.get(EmergencyAccess, answer.json["id"])
    ids = {first.id}
    past = utcnow() - timedelta(days=30)
    for _ in range(6):  # earlier, ended emergencies, as the years leave them
        copy = EmergencyAccess(
            id=str(uuid.uuid4()), patient_id=first.patient_id, doctor_id=first.doctor_id, grant_id=first.grant_id,
            sealed_reason=first.sealed_reason, created_at=past, expires_at=past + timedelta(hours=1),
            tx_hash=first.tx_hash,
        )  # fmt: skip
        db.session.add(copy)
        ids.add(copy.id)
    db.session.commit()
    client.post(f"/api/v1/patients/{other_patient.id}/emergency", json={"reason": "Fall"}, headers=doctor.headers)
    seen, total = walk(client, "/api/v1/emergency-access", "emergencies", patient)
    assert total == 7 and {e["id"] for e in seen} == ids and len(seen) == 7
    assert seen[0]["id"] == first.id and seen[0]["active"]
    assert client.get("/api/v1/emergency-access?limit=1", headers=patient.headers).json["enabled"] is True
    assert_refuses_bad_pages(client, "/api/v1/emergency-access", patient)


def _patients(client: FlaskClient, n: int) -> list[User]:
    people = [make_person(client, "patient", f"peer{k}", f"Peer {k}") for k in range(n)]
    return [accounts.get_user(p.id, role="patient") for p in people]


def test_connections_and_blocks_page(app: Flask, client: FlaskClient, patient: Person) -> None:
    me = accounts.get_user(patient.id, role="patient")
    peers = _patients(client, 5)
    now = utcnow()
    for peer in peers:
        db.session.add(
            Connection(
                requester_id=peer.id, addressee_id=me.id, low_user_id=min(me.id, peer.id),
                high_user_id=max(me.id, peer.id), state="pending", created_at=now,
            )
        )  # fmt: skip
    db.session.commit()
    seen, total = walk(client, "/api/v1/connections", "connections", patient, limit=2)
    assert total == 5 and len({c["id"] for c in seen}) == 5
    # A blocked patient's connection is left out, and not counted.
    for peer in peers[:3]:
        db.session.add(Block(blocker_id=me.id, blocked_id=peer.id, created_at=now))
    db.session.commit()
    seen, total = walk(client, "/api/v1/connections", "connections", patient, limit=2)
    assert total == 2 and len({c["id"] for c in seen}) == 2
    blocks, total = walk(client, "/api/v1/blocks", "blocks", patient, limit=2)
    assert total == 3 and len({b["pseudonym"] for b in blocks}) == 3
    assert walk(client, "/api/v1/blocks", "blocks", make_person(client, "patient", "zed", "Zed"))[1] == 0
    for path in ("/api/v1/connections", "/api/v1/blocks"):
        assert_refuses_bad_pages(client, path, patient)


def test_documents_describe_the_paging(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").json
    lists = {
        "/api/v1/records": "records", "/api/v1/access-log": "entries", "/api/v1/access-requests": "requests",
        "/api/v1/grants": "grants", "/api/v1/patients/{patient_id}/records": "records",
        "/api/v1/emergency-access": "emergencies", "/api/v1/connections": "connections", "/api/v1/blocks": "blocks",
    }  # fmt: skip
    for path, key in lists.items():
        operation = document["paths"][path]["get"]
        assert {p["name"] for p in operation["parameters"] if p["in"] == "query"} >= {"limit", "offset"}, path
        assert "422" in operation["responses"], path
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        name = schema["$ref"].rsplit("/", 1)[-1]
        properties = document["components"]["schemas"][name]["properties"]
        assert {key, "total", "next_offset"} <= set(properties), path
        assert {"total", "next_offset", key} <= set(document["components"]["schemas"][name]["required"]), path


# -- the portal's pages -------------------------------------------------------------------------


def walk_pages(client: FlaskClient, url: str, pattern: str) -> tuple[list[str], list[str]]:
    """Follow "Next page" links from `url`; the items matched on each page and its "Showing" line."""
    found: list[str] = []
    counts: list[str] = []
    next_url: str | None = url
    while next_url is not None:
        answer = client.get(next_url)
        assert answer.status_code == 200, next_url
        page = answer.get_data(as_text=True)
        found += re.findall(pattern, page)
        counts += re.findall(r"Showing (\d+\u2013\d+ of \d+)", page)
        link = re.search(r'<a class="next" rel="next" href="([^"]+)"', page)
        next_url = html.unescape(link.group(1)) if link else None
    return found, counts


def test_doctor_records_page_has_next_links(client: FlaskClient, doctor: Person, patient: Person) -> None:
    for n in range(5):
        write(client, doctor, patient, f"Visit {n}")
    same_moment(Record)
    log_in(client, doctor.username)
    titles, counts = walk_pages(client, "/doctor/records?limit=2", r">(Visit \d)</a>")
    assert sorted(titles) == [f"Visit {n}" for n in range(5)]
    assert counts == PAGES_OF_FIVE
    first = client.get("/doctor/records").get_data(as_text=True)
    assert f"Showing 1{DASH}5 of 5" in first and 'rel="next"' not in first
    past = client.get("/doctor/records?offset=10").get_data(as_text=True)
    assert "Nothing on this page" in past and "have not written any records" not in past
    assert client.get("/doctor/records?limit=0").status_code == 422
    assert client.get("/doctor/records?offset=-3").status_code == 422


def test_history_page_has_next_links(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    ids = {write(client, other_doctor, patient, f"Letter {n}") for n in range(5)}
    client.post("/api/v1/grants", json={"doctor_id": doctor.id}, headers=patient.headers)
    same_moment(Record)
    log_in(client, doctor.username)
    opened, counts = walk_pages(
        client, f"/doctor/patients/{patient.id}/history?limit=2", r'href="/doctor/records/([0-9a-f-]{36})"'
    )
    assert set(opened) == ids and len(opened) == 5
    assert counts == PAGES_OF_FIVE
    assert client.get(f"/doctor/patients/{patient.id}/history?limit=500").status_code == 422


def test_admin_users_page_has_next_links(
    client: FlaskClient, admin: Person, doctor: Person, patient: Person, other_patient: Person, other_doctor: Person
) -> None:
    log_in(client, admin.username)
    names, counts = walk_pages(client, "/admin/users?limit=2", r"<tr>\s*<td>([^<\s][^<]*)")
    everyone = {"admin", "alice", "bob", "dr.osei", "dr.lind"}
    assert set(n.strip() for n in names) == everyone and len(names) == 5
    assert counts == PAGES_OF_FIVE
    last = client.get("/admin/users?limit=2&offset=4").get_data(as_text=True)
    previous = re.search(r'<a rel="prev" href="([^"]+)"', last)
    assert previous and html.unescape(previous.group(1)) in (
        "/admin/users?offset=2&limit=2",
        "/admin/users?limit=2&offset=2",
    )
    assert client.get("/admin/users?limit=201").status_code == 422


def test_only_admins_page_through_the_accounts(client: FlaskClient, admin: Person, doctor: Person) -> None:
    rows = {p.username: db.session.scalar(db.select(User).where(User.username == p.username)) for p in (admin, doctor)}
    assert accounts.page_users(rows[admin.username], 10, 0).total == 2
    with pytest.raises(Forbidden):
        accounts.page_users(rows[doctor.username], 10, 0)
    log_in(client, doctor.username)
    assert client.get("/admin/users").status_code == 403


def test_every_list_checks_the_caller(client: FlaskClient, admin: Person) -> None:
    for path in ("/api/v1/records", "/api/v1/grants", "/api/v1/access-requests"):
        assert client.get(path, headers=admin.headers).status_code == 403, path
    assert client.get("/api/v1/access-log?limit=2").status_code == 401
