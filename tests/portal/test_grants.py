"""Patient-controlled access end to end: requests, grants, scope, expiry, revocation, the access
log, break-glass, and what the ledger and the database hold."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from core.encoding import decode_canonical
from portal import runtime
from portal.extensions import db
from portal.models import AccessEntry, Grant, LedgerTransaction, ProxyFragment, Record, utcnow
from portal.services import accounts, federation, ledger, proxy, records
from portal.services.errors import Forbidden
from tests.conftest import RECORD, Person, produce


def write(client: FlaskClient, author: Person, patient: Person, **changes: object) -> str:
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json={**RECORD, **changes}, headers=author.headers)
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def grant(client: FlaskClient, patient: Person, doctor: Person, **body: object) -> dict:
    answer = client.post("/api/v1/grants", json={"doctor_id": doctor.id, **body}, headers=patient.headers)
    assert answer.status_code == 201, answer.json
    return answer.json


def read(client: FlaskClient, reader: Person, record_id: str):  # type: ignore[no-untyped-def]
    return client.get(f"/api/v1/records/{record_id}", headers=reader.headers)


def entries(record_id: str) -> list[AccessEntry]:
    return list(db.session.scalars(select(AccessEntry).where(AccessEntry.record_id == record_id)))


@pytest.fixture
def record_id(client: FlaskClient, other_doctor: Person, patient: Person) -> str:
    """A record written by another doctor, so `doctor` can only read it through a grant."""
    return write(client, other_doctor, patient, title="Cardiology letter", category="cardiology")


def test_grant_then_read_then_revoke(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, record_id: str
) -> None:
    refused = read(client, doctor, record_id)
    assert refused.status_code == 403
    assert refused.json["error"]["message"] == "You may not read this record: ask the patient for access first."

    granted = grant(client, patient, doctor)
    assert granted["status"] == "active" and granted["scope"] == {"type": "all"}
    answer = read(client, doctor, record_id)
    assert answer.status_code == 200
    assert answer.json["title"] == "Cardiology letter"
    assert answer.json["access"] == {"mode": "grant", "grant": granted["id"]}

    revoked = client.delete(f"/api/v1/grants/{granted['id']}", headers=patient.headers)
    assert revoked.status_code == 200 and revoked.json["status"] == "revoked"
    assert db.session.scalar(select(func.count()).select_from(ProxyFragment)) == 0
    again = read(client, doctor, record_id)
    assert again.status_code == 403
    assert again.json["error"]["message"] == "The patient revoked your access to their records."
    assert client.delete(f"/api/v1/grants/{granted['id']}", headers=patient.headers).status_code == 409


def test_request_approve_decline(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, record_id: str
) -> None:
    body = {"patient_id": patient.id, "reason": "Pre-operative assessment", "days": 7,
            "scope": {"type": "categories", "categories": ["cardiology"]}}  # fmt: skip
    created = client.post("/api/v1/access-requests", json=body, headers=doctor.headers)
    assert created.status_code == 201, created.json
    pending = client.get("/api/v1/access-requests", headers=patient.headers).json["requests"]
    assert [(r["status"], r["reason"], r["doctor"]["display_name"]) for r in pending] == [
        ("pending", "Pre-operative assessment", "Dr. Ama Osei")
    ]
    approved = client.post(f"/api/v1/access-requests/{pending[0]['id']}/approve", headers=patient.headers)
    assert approved.status_code == 201
    assert approved.json["scope"] == {"type": "categories", "categories": ["cardiology"]}
    expires = approved.json["expires_at"]
    assert expires.startswith((utcnow() + timedelta(days=7)).date().isoformat())
    assert read(client, doctor, record_id).status_code == 200
    again = client.post(f"/api/v1/access-requests/{pending[0]['id']}/approve", headers=patient.headers)
    assert again.status_code == 409 and again.json["error"]["message"] == "This request was already approved."

    second = client.post(
        "/api/v1/access-requests", json={**body, "reason": "Curious"}, headers=other_doctor.headers
    ).json
    declined = client.post(f"/api/v1/access-requests/{second['id']}/decline", headers=patient.headers)
    assert declined.status_code == 200 and declined.json["status"] == "declined"
    mine = client.get("/api/v1/access-requests", headers=other_doctor.headers).json["requests"]
    assert [r["status"] for r in mine] == ["declined"]
    # another patient cannot decide someone else's request
    assert client.post(f"/api/v1/access-requests/{second['id']}/approve", headers=doctor.headers).status_code == 403


def test_approval_gives_less_than_asked_never_more(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, record_id: str
) -> None:
    asked = {"patient_id": patient.id, "reason": "Follow-up", "days": 30,
             "scope": {"type": "categories", "categories": ["general", "respiratory"]}}  # fmt: skip
    request_id = client.post("/api/v1/access-requests", json=asked, headers=doctor.headers).json["id"]
    approve = f"/api/v1/access-requests/{request_id}/approve"
    wider = [
        ({"days": 31}, "days", "`days` must not be more than the 30 asked for."),
        ({"scope": {"type": "all"}}, "scope", "must be within what was asked for: records in general, respiratory."),
        ({"scope": {"type": "categories", "categories": ["general", "oncology"]}}, "scope", "within"),
        ({"scope": {"type": "dates", "from": "2026-01-01", "to": "2026-02-01"}}, "scope", "within"),
    ]
    for body, field, message in wider:
        refused = client.post(approve, json=body, headers=patient.headers)
        assert refused.status_code == 422 and message in refused.json["error"]["message"], (body, refused.json)
        assert f"`{field}`" in refused.json["error"]["message"]
    pending = client.get("/api/v1/access-requests", headers=patient.headers).json["requests"]
    assert [r["status"] for r in pending] == ["pending"]  # nothing was decided by a refused approval
    assert client.get("/api/v1/grants", headers=patient.headers).json["grants"] == []

    narrowed = {"days": 3, "scope": {"type": "categories", "categories": ["general"]}}
    approved = client.post(approve, json=narrowed, headers=patient.headers)
    assert approved.status_code == 201, approved.json
    assert approved.json["scope"] == {"type": "categories", "categories": ["general"]}
    assert approved.json["expires_at"].startswith((utcnow() + timedelta(days=3)).date().isoformat())
    assert read(client, doctor, record_id).status_code == 403  # the record is respiratory: narrowed out
    decided = client.get("/api/v1/access-requests", headers=patient.headers).json["requests"]
    assert [(r["status"], r["grant_id"]) for r in decided] == [("approved", approved.json["id"])]

    # Asked by dates: a shorter span inside them is fine, one that starts earlier is not.
    dates = {**asked, "scope": {"type": "dates", "from": "2026-01-01", "to": "2026-06-30"}}
    request_id = client.post("/api/v1/access-requests", json=dates, headers=other_doctor.headers).json["id"]
    approve = f"/api/v1/access-requests/{request_id}/approve"
    early = {"scope": {"type": "dates", "from": "2025-12-31", "to": "2026-03-01"}}
    assert client.post(approve, json=early, headers=patient.headers).status_code == 422
    inside = {"scope": {"type": "dates", "from": "2026-02-01", "to": "2026-03-01"}}
    approved = client.post(approve, json=inside, headers=patient.headers)
    assert approved.status_code == 201 and approved.json["scope"] == {"type": "dates", **inside["scope"]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"reason": ""}, "A reason is required."),
        ({"days": 0}, "`days` must be a whole number from 1 to 365."),
        ({"days": "7"}, "`days` must be a whole number"),
        ({"scope": {"type": "categories", "categories": ["astrology"]}}, "`scope.categories` must be"),
        ({"scope": {"type": "dates", "from": "2026-02-01", "to": "2026-01-01"}}, "must not be after"),
        ({"scope": {"type": "everything"}}, "`scope` must be"),
        ({"patient_id": "nobody"}, "No such patient."),
    ],
)
def test_invalid_access_request(client: FlaskClient, doctor: Person, patient: Person, body: dict, message: str) -> None:
    answer = client.post(
        "/api/v1/access-requests", json={"patient_id": patient.id, "reason": "Review", **body}, headers=doctor.headers
    )
    assert answer.status_code in (404, 422)
    assert message in answer.json["error"]["message"]


def test_invalid_shapes_name_their_fields(client: FlaskClient, doctor: Person, patient: Person) -> None:
    """The schemas refuse a wrong shape before the services see it, with a message per field."""
    body = {"doctor_id": doctor.id, "scope": {"type": "categories"}, "dayz": 3}
    answer = client.post("/api/v1/grants", json=body, headers=patient.headers)
    assert answer.status_code == 422
    assert answer.json["error"]["fields"] == {
        "scope.categories": '`scope.categories` is required when `type` is "categories".',
        "dayz": "Unknown field.",
    }
    stray = {"doctor_id": doctor.id, "scope": {"type": "all", "from": "2026-01-01"}}
    answer = client.post("/api/v1/grants", json=stray, headers=patient.headers)
    assert answer.json["error"]["fields"] == {"scope.from": '`scope.from` does not belong in a scope of type "all".'}
    answer = client.post("/api/v1/grants", json={"doctor_id": doctor.id, "scope": "all"}, headers=patient.headers)
    assert answer.json["error"]["message"] == '`scope` must be {"type": "all" | "categories" | "dates", ...}.'
    answer = client.put("/api/v1/emergency-access", json={"enabled": 1}, headers=patient.headers)
    assert answer.json["error"]["fields"] == {"enabled": "`enabled` must be true or false."}
    answer = client.get("/api/v1/access-log?limit=0", headers=patient.headers)
    assert answer.status_code == 422
    assert answer.json["error"]["fields"] == {"limit": "`limit` must be a whole number from 1 to 200."}
    assert client.get("/api/v1/access-log?limit=5&offset=5", headers=patient.headers).json == {
        "entries": [], "total": 0, "next_offset": None,
    }  # fmt: skip
    assert client.get("/api/v1/doctors?name=x", headers=patient.headers).json["error"]["fields"] == {
        "name": "Unknown field."
    }
    assert client.get("/api/v1/grants", headers=patient.headers).json["grants"] == []  # nothing was granted


def test_scope_by_category_and_dates(
    app: Flask, client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    heart = write(client, other_doctor, patient, title="Heart", category="cardiology")
    lungs = write(client, other_doctor, patient, title="Lungs", category="respiratory")
    grant(client, patient, doctor, scope={"type": "categories", "categories": ["respiratory"]})
    assert read(client, doctor, lungs).status_code == 200
    refused = read(client, doctor, heart)
    assert refused.status_code == 403
    assert (
        refused.json["error"]["message"] == "This record is outside the scope of your access (records in respiratory)."
    )
    history = client.get(f"/api/v1/patients/{patient.id}/records", headers=doctor.headers).json["records"]
    assert [r["id"] for r in history] == [lungs]
    assert "title" not in history[0]  # the list is metadata; opening is the logged read

    old = db.session.get(Record, heart)
    old.created_at = utcnow() - timedelta(days=400)
    db.session.commit()
    window = {"type": "dates", "from": (utcnow() - timedelta(days=500)).date().isoformat(),
              "to": (utcnow() - timedelta(days=300)).date().isoformat()}  # fmt: skip
    grant(client, patient, doctor, scope=window)
    assert read(client, doctor, heart).status_code == 200
    assert read(client, doctor, lungs).status_code == 200  # still covered by the category grant


def test_expiry_with_time_passed_in(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, record_id: str
) -> None:
    grant(client, patient, doctor, days=3)
    actor = accounts.resolve(doctor.token, utcnow())
    assert actor is not None
    node = runtime.node()
    assert records.get_record(actor, record_id, node=node, now=utcnow() + timedelta(days=2))["title"]
    with pytest.raises(Forbidden, match="Your access to this patient's records expired on"):
        records.get_record(actor, record_id, node=node, now=utcnow() + timedelta(days=3, minutes=1))


def test_third_doctor_never_reads(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, other_patient: Person, admin: Person
) -> None:
    record_id = write(client, other_doctor, patient)
    grant(client, patient, doctor)
    third = client.post(
        "/api/v1/auth/register",
        json={"username": "eve", "password": "long-enough-pw", "display_name": "Eve", "date_of_birth": "1990-01-01"},
    )
    assert third.status_code == 201
    for outsider in (other_patient, admin):
        assert read(client, outsider, record_id).status_code == 403
    from tests.conftest import make_person

    dr_three = make_person(client, "doctor", "dr.three", "Dr. Three")
    assert read(client, dr_three, record_id).status_code == 403
    assert client.get(f"/api/v1/patients/{patient.id}/records", headers=dr_three.headers).status_code == 403
    # a doctor cannot make grants, nor can a patient grant another patient's records away
    assert client.post("/api/v1/grants", json={"doctor_id": dr_three.id}, headers=doctor.headers).status_code == 403
    mine = client.get("/api/v1/grants", headers=patient.headers).json["grants"]
    assert client.delete(f"/api/v1/grants/{mine[0]['id']}", headers=other_patient.headers).status_code == 404


def test_forged_fragment_in_the_proxy_store_is_rejected(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, record_id: str
) -> None:
    """A fragment swapped in the proxy's store (e.g. one made for another doctor) is refused."""
    mine = grant(client, patient, doctor)
    theirs = grant(client, patient, other_doctor)
    row = db.session.get(ProxyFragment, (mine["id"], 0))
    row.fragment = db.session.get(ProxyFragment, (theirs["id"], 0)).fragment
    db.session.commit()
    answer = read(client, doctor, record_id)
    assert answer.status_code == 409
    assert answer.json["error"] == {
        "code": "grant_unusable",
        "message": "Your access could not be used: key fragment does not verify for this patient and receiver.",
    }
    assert entries(record_id) == []  # nothing read, nothing logged


def test_each_read_logged_once_with_its_grant(
    app: Flask, client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, record_id: str
) -> None:
    granted = grant(client, patient, doctor)
    read(client, patient, record_id)  # the patient's own reads are not logged
    read(client, doctor, record_id)
    read(client, doctor, record_id)
    read(client, other_doctor, record_id)  # the author
    log = client.get("/api/v1/access-log", headers=patient.headers).json["entries"]
    assert [(e["reader"]["display_name"], e["mode"], e["grant_id"]) for e in log] == [
        ("Dr. Erik Lindqvist", "author", None),
        ("Dr. Ama Osei", "grant", granted["id"]),
        ("Dr. Ama Osei", "grant", granted["id"]),
    ]
    assert len({e["tx_hash"] for e in log}) == 3
    produce(app)
    for entry in log:
        tx = db.session.get(LedgerTransaction, entry["tx_hash"])
        assert tx.status == "committed"
        assert decode_canonical(tx.encoded)["payload"] == {
            "entry": entry["id"], "record": record_id, "part": -1, "mode": entry["mode"], "grant": entry["grant_id"],
        }  # fmt: skip
    assert client.get("/api/v1/chain/verify").json["valid"] is True
    assert client.get("/api/v1/access-log", headers=doctor.headers).status_code == 403


def test_break_glass(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, admin: Person, record_id: str
) -> None:
    body = {"reason": "Unconscious in A&E, suspected anaphylaxis"}
    refused = client.post(f"/api/v1/patients/{patient.id}/emergency", json=body, headers=doctor.headers)
    assert refused.status_code == 403
    assert (
        refused.json["error"]["message"]
        == "Alice Moreau has not opted in to emergency access, so break-glass is refused."
    )
    assert read(client, doctor, record_id).status_code == 403

    assert client.put("/api/v1/emergency-access", json={"enabled": True}, headers=patient.headers).json == {
        "enabled": True
    }
    declared = client.post(f"/api/v1/patients/{patient.id}/emergency", json=body, headers=doctor.headers)
    assert declared.status_code == 201
    assert declared.json["reason"] == body["reason"]
    answer = read(client, doctor, record_id)
    assert answer.status_code == 200 and answer.json["access"]["mode"] == "emergency"

    status = client.get("/api/v1/emergency-access", headers=patient.headers).json
    assert status["enabled"] is True
    [shown] = status["emergencies"]
    assert shown["active"] is True and shown["doctor"]["display_name"] == "Dr. Ama Osei"
    assert shown["reason"] == body["reason"]
    assert [e["mode"] for e in client.get("/api/v1/access-log", headers=patient.headers).json["entries"]] == [
        "emergency"
    ]

    from portal.services import grants

    [pending] = grants.emergencies_to_review(runtime.node().node_id)
    assert grants.emergency_reason(pending, node=runtime.node()) == body["reason"]  # the hospital's copy

    actor = accounts.resolve(doctor.token, utcnow())
    assert actor is not None
    later = utcnow() + timedelta(hours=4, minutes=1)
    with pytest.raises(Forbidden):
        records.get_record(actor, record_id, node=runtime.node(), now=later)

    client.put("/api/v1/emergency-access", json={"enabled": False}, headers=patient.headers)
    refused_now = read(client, doctor, record_id)
    assert refused_now.status_code == 403
    assert refused_now.json["error"]["message"] == (
        "The patient has opted out of emergency access, which ended your emergency access."
    )
    assert db.session.scalar(select(func.count()).select_from(ProxyFragment)) == 0


def test_invalid_emergency_optin(client: FlaskClient, patient: Person, doctor: Person) -> None:
    answer = client.put("/api/v1/emergency-access", json={"enabled": "yes"}, headers=patient.headers)
    assert answer.status_code == 422 and answer.json["error"]["message"] == "`enabled` must be true or false."
    assert client.put("/api/v1/emergency-access", json={"enabled": True}, headers=doctor.headers).status_code == 403
    no_reason = client.post(f"/api/v1/patients/{patient.id}/emergency", json={"reason": " "}, headers=doctor.headers)
    assert no_reason.status_code == 422


def test_ledger_holds_decisions_without_names_or_reasons(
    app: Flask, client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, record_id: str
) -> None:
    client.post(
        "/api/v1/access-requests",
        json={"patient_id": patient.id, "reason": "Secret reason text"},
        headers=doctor.headers,
    )
    request_id = client.get("/api/v1/access-requests", headers=patient.headers).json["requests"][0]["id"]
    client.post(f"/api/v1/access-requests/{request_id}/decline", headers=patient.headers)
    granted = grant(client, patient, other_doctor)
    client.delete(f"/api/v1/grants/{granted['id']}", headers=patient.headers)
    client.put("/api/v1/emergency-access", json={"enabled": True}, headers=patient.headers)
    client.post(
        f"/api/v1/patients/{patient.id}/emergency", json={"reason": "Emergency reason text"}, headers=doctor.headers
    )
    read(client, doctor, record_id)
    height = produce(app)
    kinds = {
        t.kind for t in db.session.scalars(select(LedgerTransaction).where(LedgerTransaction.block_height == height))
    }
    assert {"decline", "grant", "revoke", "emergency", "access"} <= kinds
    assert client.get("/api/v1/chain/verify").json["valid"] is True
    published = client.get(f"/api/v1/chain/blocks/{height}").data
    for needle in ("Secret reason text", "Emergency reason text", "Alice", "alice", "Osei", "Lindqvist", "cardiology"):
        assert needle.encode() not in published, needle


def test_proxy_store_and_database_open_nothing(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, record_id: str
) -> None:
    """With a grant and an emergency opt-in in place, no table holds a data key, a plaintext or a
    private key: fragments need the grantee's secret key, which is itself sealed."""
    from tests.portal.test_no_leaks import dump_database, secrets_of

    grant(client, patient, doctor)
    client.put("/api/v1/emergency-access", json={"enabled": True}, headers=patient.headers)
    read(client, doctor, record_id)
    dump = dump_database()
    assert db.session.scalar(select(func.count()).select_from(ProxyFragment)) == 2
    actor = accounts.resolve(patient.token, utcnow())
    assert actor is not None
    record = db.session.get(Record, record_id)
    payload = decode_canonical(record.transaction.encoded)["payload"]
    from core.crypto import Envelope, open_as_patient
    from core.encoding import b64d

    envelope = Envelope(b64d(payload["body"]), b64d(payload["capsule"]), b64d(payload["pkey"]), b64d(payload["akey"]))
    data_key = open_as_patient(envelope, actor.keys())._key
    for needle in [data_key, b"Cardiology letter", RECORD["notes"].encode(), *secrets_of(patient), *secrets_of(doctor)]:
        assert needle not in dump
    emergency_secret = runtime.node().emergency_key().secret.to_be_bytes()
    assert emergency_secret not in dump
    assert db.session.scalar(select(func.count()).select_from(Grant)) == 2


def test_emergency_ended_by_opt_out_stays_ended_and_yields_to_a_grant(
    client: FlaskClient, doctor: Person, patient: Person, record_id: str
) -> None:
    client.put("/api/v1/emergency-access", json={"enabled": True}, headers=patient.headers)
    body = {"reason": "Collapsed at home"}
    assert client.post(f"/api/v1/patients/{patient.id}/emergency", json=body, headers=doctor.headers).status_code == 201
    again = client.post(f"/api/v1/patients/{patient.id}/emergency", json=body, headers=doctor.headers)
    assert again.status_code == 409 and "already active until" in again.json["error"]["message"]

    client.put("/api/v1/emergency-access", json={"enabled": False}, headers=patient.headers)
    history = client.get(f"/api/v1/patients/{patient.id}/records", headers=doctor.headers)
    assert history.status_code == 403
    ended = "The patient has opted out of emergency access, which ended your emergency access."
    assert history.json["error"]["message"] == ended
    # Opting in again does not revive it: the doctor must declare (and justify) a new one.
    client.put("/api/v1/emergency-access", json={"enabled": True}, headers=patient.headers)
    assert read(client, doctor, record_id).status_code == 403
    [shown] = client.get("/api/v1/emergency-access", headers=patient.headers).json["emergencies"]
    assert shown["active"] is False
    declared = client.post(f"/api/v1/patients/{patient.id}/emergency", json=body, headers=doctor.headers)
    assert declared.status_code == 201 and declared.json["active"] is True
    answer = read(client, doctor, record_id)
    assert answer.status_code == 200 and answer.json["access"]["mode"] == "emergency"

    granted = grant(client, patient, doctor)
    assert read(client, doctor, record_id).json["access"] == {"mode": "grant", "grant": granted["id"]}


def test_invalid_duplicate_pending_request(client: FlaskClient, doctor: Person, patient: Person) -> None:
    body = {"patient_id": patient.id, "reason": "Review"}
    assert client.post("/api/v1/access-requests", json=body, headers=doctor.headers).status_code == 201
    again = client.post("/api/v1/access-requests", json=body, headers=doctor.headers)
    assert again.status_code == 409
    assert again.json["error"]["message"] == "You already have a pending request to Alice Moreau."


def test_read_whose_entry_arrives_in_a_block_meanwhile_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, client: FlaskClient, doctor: Person, patient: Person, record_id: str
) -> None:
    """The proxies of other hospitals queue a read's access entry before they answer, so the
    block holding it can be stored and projected while the read is still under way."""
    grant(client, patient, doctor)
    gather = proxy.gather

    def block_arrives_meanwhile(grant_row, access, *args, **kwargs):  # type: ignore[no-untyped-def]
        fragments = gather(grant_row, access, *args, **kwargs)
        ledger.queue(access, utcnow())
        federation.project([access])
        db.session.commit()
        return fragments

    monkeypatch.setattr(proxy, "gather", block_arrives_meanwhile)
    answer = read(client, doctor, record_id)
    assert answer.status_code == 200, answer.json
    [entry] = entries(record_id)
    assert entry.reader.public_id == doctor.id and entry.mode == "grant"
