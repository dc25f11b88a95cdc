"""Hostile input on every API route: deep nesting, lone surrogates, huge and non-finite numbers,
64-bit overflows in paths and queries. Every answer is a clear 4xx (or a success), never a 5xx."""

from __future__ import annotations

import base64
import json
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import AccessEntry, Attachment, Record
from portal.services import records
from tests.conftest import PNG, RECORD, Person

DEEP = "[" * 20_000 + "]" * 20_000  # within the 64 KiB body limit, far beyond the depth limit
HUGE = str(2**70)


def routes(app: Flask, prefix: str) -> list[tuple[str, str]]:
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(prefix):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, rule.rule))
    return sorted(found)


def fill(rule: str, value: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", value, rule)


def bodies() -> list[tuple[str, str]]:
    surrogate = '"\\ud800"'
    fields = {**RECORD, "username": "x", "password": "x", "display_name": "x", "reason": "x", "doctor_id": "x",
              "patient_id": "x", "enabled": True, "nodes": ["x"], "days": 3, "symptoms": ["x"]}  # fmt: skip
    out = [("deep", DEEP), ("deep-object", '{"a":' * 50_000 + "1" + "}" * 50_000), ("nan", '{"days": NaN}')]
    base = json.dumps(fields)
    for name in fields:
        out.append((f"surrogate-{name}", base.replace(f'"{name}": ', f'"{name}": {surrogate}, "_{name}": ', 1)))
        out.append((f"huge-{name}", base.replace(f'"{name}": ', f'"{name}": {HUGE}, "_{name}": ', 1)))
    out.append(("surrogate-key", '{"\\udfff": 1}'))
    return out


@pytest.mark.parametrize("role", ["patient", "doctor", "admin"])
def test_invalid_hostile_bodies_never_5xx(
    app: Flask, client: FlaskClient, role: str, request: pytest.FixtureRequest
) -> None:
    person: Person = request.getfixturevalue(role)
    failures = []
    for method, rule in routes(app, "/api/v1"):
        if method not in ("POST", "PUT", "PATCH", "DELETE"):
            continue
        for path_value in ("00000000-0000-0000-0000-000000000000", HUGE):
            url = fill(rule, path_value)
            for name, body in bodies():
                answer = client.open(
                    url, method=method, data=body, content_type="application/json", headers=person.headers
                )
                if answer.status_code >= 500:
                    failures.append((method, url[:80], name, answer.status_code))
    assert failures == []


@pytest.mark.parametrize("role", ["patient", "doctor", "admin"])
def test_invalid_hostile_queries_never_5xx(
    app: Flask, client: FlaskClient, role: str, request: pytest.FixtureRequest
) -> None:
    person: Person = request.getfixturevalue(role)
    failures = []
    for method, rule in routes(app, "/api/v1"):
        if method != "GET":
            continue
        for value in (HUGE, "-" + HUGE, "1e400", "%ED%A0%80", "%00", "NaN", "x" * 5000):
            url = (
                fill(rule, value)
                + f"?q={value}&offset={value}&limit={value}&from={value}&mode={value}&threshold={value}"
            )
            answer = client.get(url, headers=person.headers)
            if answer.status_code >= 500:
                failures.append((url[:100], answer.status_code))
    assert failures == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (DEEP, 400, "The body nests deeper than 32 levels."),
        ('{"a":' * 40 + "1" + "}" * 40, 400, "The body nests deeper than 32 levels."),
        ('{"username": "\\ud800", "password": "x", "display_name": "x"}', 422, "`username` holds an invalid character"),
        ('{"username": "ab", "\\udfff": 1}', 422, "The body holds an invalid character (a lone surrogate)."),
        ('{"username": 1e999}', 422, "`username` must be a finite number."),
        ('{"username": NaN}', 400, "NaN is not a JSON number."),
        (f'{{"username": {HUGE}}}', 422, "`username` is a number beyond 64 bits."),
        (b'{"username": "\xff"}', 400, "The body is not valid UTF-8."),
    ],
)
def test_invalid_json_documents_get_a_clear_answer(
    client: FlaskClient, body: str | bytes, status: int, message: str
) -> None:
    answer = client.post("/api/v1/auth/register", data=body, content_type="application/json")
    assert answer.status_code == status and message in answer.json["error"]["message"], answer.json


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"/api/v1/records?offset={HUGE}", "`offset` must be a whole number from 0 to 2147483647."),
        ("/api/v1/records?limit=-1", "`limit` must be a whole number from 1 to 200."),
        (f"/api/v1/chain/blocks?from={HUGE}", "`from` must be a whole number from 0 to 2147483647."),
        ("/api/v1/chain/blocks?from=%C2%B2", "`from` must be a whole number from 0 to 2147483647."),
    ],
)
def test_invalid_numbers_in_queries(client: FlaskClient, patient: Person, url: str, message: str) -> None:
    answer = client.get(url, headers=patient.headers)
    assert answer.status_code == 422 and answer.json["error"]["message"] == message


def test_invalid_block_heights_in_paths(client: FlaskClient) -> None:
    assert client.get(f"/api/v1/chain/blocks/{HUGE}").status_code == 404
    assert client.get(f"/chain/blocks/{HUGE}").status_code == 404
    assert client.get(f"/chain/?from={HUGE}").status_code == 200  # the page falls back to the newest blocks


@pytest.mark.parametrize("name", ["scan\r\nSet-Cookie: x=1.png", "scan\x00.png", "scan\u202e.png"])
def test_invalid_attachment_names_are_refused(client: FlaskClient, doctor: Person, patient: Person, name: str) -> None:
    files = {"filename": name, "data": base64.b64encode(PNG).decode()}
    answer = client.post(
        f"/api/v1/patients/{patient.id}/records", json={**RECORD, "attachments": [files]}, headers=doctor.headers
    )
    message = answer.json["error"]["message"]
    assert answer.status_code == 422 and ("has control characters in its name" in message or "NUL" in message)
    assert db.session.scalar(select(func.count()).select_from(Record)) == 0


def test_safe_filename_for_names_stored_before_the_check() -> None:
    assert records.safe_filename("scan\r\n\u202e.png") == "scan___.png"
    assert records.safe_filename("Röntgen Thorax.pdf") == "Röntgen Thorax.pdf"


def test_a_failed_download_logs_no_read(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    files = {"filename": "scan.png", "data": base64.b64encode(PNG).decode()}
    written = client.post(
        f"/api/v1/patients/{patient.id}/records", json={**RECORD, "attachments": [files]}, headers=doctor.headers
    )
    record_id = written.json["id"]
    client.post("/api/v1/grants", json={"doctor_id": other_doctor.id}, headers=patient.headers)
    ok = client.get(f"/api/v1/records/{record_id}/attachments/0", headers=other_doctor.headers)
    assert ok.status_code == 200 and ok.data == PNG
    logged = db.session.scalar(select(func.count()).select_from(AccessEntry))
    db.session.get(Attachment, (record_id, 0)).ciphertext = None  # lost, and no peer to ask
    db.session.commit()
    failed = client.get(f"/api/v1/records/{record_id}/attachments/0", headers=other_doctor.headers)
    assert failed.status_code == 409 and failed.json["error"]["code"] == "record_unreadable"
    assert db.session.scalar(select(func.count()).select_from(AccessEntry)) == logged


def test_search_wildcards_match_themselves(client: FlaskClient, doctor: Person, patient: Person) -> None:
    """`%` and `_` are not SQL wildcards in a search: `%%` does not list every patient."""
    assert [p["id"] for p in client.get("/api/v1/patients?q=al", headers=doctor.headers).json["patients"]] == [
        patient.id
    ]
    for query in ("%%", "__", "a%", "al_ce", "\\%"):
        answer = client.get("/api/v1/patients", query_string={"q": query}, headers=doctor.headers)
        assert answer.status_code == 200 and answer.json["patients"] == [], query


def test_invalid_repeated_query_parameters(client: FlaskClient, patient: Person) -> None:
    for url in ("/api/v1/chain/blocks?limit=&limit=5", "/api/v1/records?offset=1&offset=2&limit=3"):
        answer = client.get(url, headers=patient.headers)
        assert answer.status_code == 422 and "came more than once" in answer.json["error"]["message"], url


def test_invalid_nul_characters(client: FlaskClient, doctor: Person, patient: Person) -> None:
    """Refused at the door (PostgreSQL would refuse them in any string, as a 500)."""
    for url in ("/api/v1/patients/%00", "/api/v1/patients?q=al%00", "/doctor/patients?q=%00x"):
        answer = client.get(url, headers=doctor.headers)
        assert answer.status_code == 422, url
    answer = client.post("/api/v1/auth/register", json={"username": "nul\u0000", "password": "x", "display_name": "x"})
    assert answer.status_code == 422 and answer.json["error"]["message"] == "`username` holds a NUL character."
