"""Lists cost a fixed number of SQL statements, however many records are on the page.

Each list is requested with 5 and then with 50 records (by several authors, so that a per-record
load of the author would show), with an empty session before each request, as in a real one.
The statements are counted on the engine (`before_cursor_execute`), and the count must not grow.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from portal.extensions import db
from tests.conftest import RECORD, Person, make_person

AUTHORS = 10


@pytest.fixture(autouse=True)
def emergency_key_in_tmp(app: Flask, tmp_path: Path) -> None:
    app.config["EMERGENCY_KEY_PATH"] = str(tmp_path / "emergency.key")


@contextmanager
def counting() -> Iterator[list[str]]:
    """The SQL statements sent while in the block, starting from an empty session."""
    db.session.remove()
    statements: list[str] = []

    def note(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", note)


def get(client: FlaskClient, path: str, who: Person, key: str, expected: int) -> list[str]:
    """The statements of the cheaper of two identical requests: a new pooled connection's
    set-up (PostgreSQL asks the server's version and settings) is not the list's cost."""
    runs = []
    for _ in range(2):
        with counting() as statements:
            answer = client.get(path, headers=who.headers)
        assert answer.status_code == 200, answer.json
        assert len(answer.json[key]) == expected and answer.json["total"] == expected
        runs.append(statements)
    return min(runs, key=len)


class Ward:
    """A patient, a granted doctor, and records written by several other doctors."""

    def __init__(self, client: FlaskClient, patient: Person, doctor: Person) -> None:
        self.client, self.patient, self.doctor = client, patient, doctor
        self.authors = [make_person(client, "doctor", f"dr.author{n}", f"Dr. Author {n}") for n in range(AUTHORS)]
        self.records: list[str] = []
        answer = client.post("/api/v1/grants", json={"doctor_id": doctor.id}, headers=patient.headers)
        assert answer.status_code == 201, answer.json

    def write_up_to(self, count: int) -> None:
        while len(self.records) < count:
            author = self.authors[len(self.records) % AUTHORS]
            answer = self.client.post(
                f"/api/v1/patients/{self.patient.id}/records",
                json={**RECORD, "title": f"R{len(self.records)}"},
                headers=author.headers,
            )
            assert answer.status_code == 201, answer.json
            self.records.append(answer.json["id"])

    def read_up_to(self, count: int) -> None:
        """Granted reads of as many records, each logged in the patient's access log."""
        for record_id in self.records[:count]:
            answer = self.client.get(f"/api/v1/records/{record_id}", headers=self.doctor.headers)
            assert answer.status_code == 200, answer.json


@pytest.fixture
def ward(client: FlaskClient, patient: Person, doctor: Person) -> Ward:
    return Ward(client, patient, doctor)


def test_record_lists_cost_the_same_for_5_and_50_records(client: FlaskClient, ward: Ward) -> None:
    counts: dict[int, dict[str, int]] = {}
    for n in (5, 50):
        ward.write_up_to(n)
        counts[n] = {
            "patient's own list": len(get(client, "/api/v1/records?limit=200", ward.patient, "records", n)),
            "granted doctor's list": len(
                get(client, f"/api/v1/patients/{ward.patient.id}/records?limit=200", ward.doctor, "records", n)
            ),
        }
    assert counts[50] == counts[5], counts


def test_an_authors_list_costs_the_same_for_5_and_50_records(
    client: FlaskClient, patient: Person, doctor: Person
) -> None:
    counts = {}
    written = 0
    for n in (5, 50):
        while written < n:
            answer = client.post(f"/api/v1/patients/{patient.id}/records", json=RECORD, headers=doctor.headers)
            assert answer.status_code == 201, answer.json
            written += 1
        counts[n] = len(get(client, "/api/v1/records?limit=200", doctor, "records", n))
    assert counts[50] == counts[5], counts


def test_access_log_costs_the_same_for_5_and_50_entries(client: FlaskClient, ward: Ward) -> None:
    ward.write_up_to(50)
    counts = {}
    for n in (5, 50):
        ward.read_up_to(n)
        expected = n if n == 5 else 55  # the first five records were read twice by then
        counts[n] = len(get(client, "/api/v1/access-log?limit=200", ward.patient, "entries", expected))
    assert counts[50] == counts[5], counts


def test_a_granted_read_is_not_read_again_after_it_is_logged(client: FlaskClient, ward: Ward) -> None:
    """The answer is built before the read is logged: the commit expires every loaded row, and
    building it after would read the record, its people, its transaction and the grant again."""
    ward.write_up_to(2)
    ward.read_up_to(1)  # warm: the grant's fragments, the node's caches
    with counting() as statements:
        answer = client.get(f"/api/v1/records/{ward.records[1]}", headers=ward.doctor.headers)
    assert answer.status_code == 200, answer.json
    assert answer.json["access"]["mode"] == "grant" and answer.json["title"] == "R1"
    logged = max(n for n, s in enumerate(statements) if s.lstrip().upper().startswith("INSERT INTO ACCESS_ENTRIES"))
    reads = [s for s in statements[logged + 1 :] if re.search(r"\bFROM\b", s, re.I)]  # not the lock's release
    assert reads == [], reads


def table_reads(statements: list[str]) -> list[str]:
    """The statements that read a table (not a pooled connection's set-up, not the lock's release)."""
    return [s for s in statements if s.lstrip().upper().startswith("SELECT") and re.search(r"\bFROM\b", s, re.I)]


@pytest.mark.parametrize("reader", ["patient", "doctor"])
def test_a_read_loads_the_session_and_the_record_once_each(client: FlaskClient, ward: Ward, reader: str) -> None:
    """The token's session comes with its user in one statement, read once for the idle check and
    the actor both; the record comes with its transaction, author and patient in one more."""
    ward.write_up_to(2)
    ward.read_up_to(1)  # warm: the grant's fragments, the node's caches
    who = getattr(ward, reader)
    runs = []
    for _ in range(2):
        with counting() as statements:
            answer = client.get(f"/api/v1/records/{ward.records[1]}", headers=who.headers)
        assert answer.status_code == 200, answer.json
        runs.append(table_reads(statements))
    reads = min(runs, key=len)
    assert len([s for s in reads if re.search(r"\bFROM auth_sessions\b", s, re.I)]) == 1, reads
    assert len([s for s in reads if re.search(r"\bFROM records\b", s, re.I)]) == 1, reads
    assert not [s for s in reads if re.match(r"\s*SELECT users\.", s, re.I)], reads  # no person loaded alone
    if reader == "patient":
        assert len(reads) == 2, reads  # the session and the record: nothing else to open one's own record


def test_sealing_a_block_costs_the_same_for_5_and_50_records(app: Flask, ward: Ward) -> None:
    """Storing a block and projecting it reads the rows its transactions name in batches, not
    one by one: a block of 50 records and access entries costs about the statements of a block of 5."""
    from tests.conftest import produce

    counts = {}
    for n in (1, 5, 50):  # the first block also holds the grant, and warms the node's caches
        ward.write_up_to(len(ward.records) + n)
        ward.read_up_to(len(ward.records))  # access entries too, in the same block
        with counting() as statements:
            assert produce(app) is not None
        counts[n] = len(statements)
    # Not equal to the statement: a block may also refresh the node's cached validator. Reading
    # per transaction, the 45 more would add at least 45 (they added 285 before the batching).
    assert counts[50] < counts[5] + 10, counts
