"""The portal's pages for patient-controlled access: requests, my patients, history, break-glass, review."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import AccessEntry, AccessRequest, EmergencyAccess, LedgerTransaction, User
from tests.conftest import RECORD, Person
from tests.portal.test_pages import csrf, log_in


@pytest.fixture(autouse=True)
def emergency_key_in_tmp(app: Flask, tmp_path: Path) -> None:
    """Keep the hospital's emergency key out of the instance folder."""
    app.config["EMERGENCY_KEY_PATH"] = str(tmp_path / "emergency.key")


def write_record(client: FlaskClient, author: Person, patient: Person, **fields: object) -> str:
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json={**RECORD, **fields}, headers=author.headers)
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def grant(client: FlaskClient, patient: Person, doctor: Person, **extra: object) -> None:
    answer = client.post("/api/v1/grants", json={"doctor_id": doctor.id, **extra}, headers=patient.headers)
    assert answer.status_code == 201, answer.json


def opt_in(client: FlaskClient, patient: Person) -> None:
    answer = client.put("/api/v1/emergency-access", json={"enabled": True}, headers=patient.headers)
    assert answer.status_code == 200 and answer.json["enabled"], answer.json


def log_out(client: FlaskClient) -> None:
    client.post("/logout", data={"csrf_token": csrf(client, "/chain/")})


def count(model: type) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_find_results_link_to_request_and_history(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    page = client.get("/doctor/patients?q=alice").get_data(as_text=True)
    assert f"/doctor/patients/{patient.id}/access/request" in page and "Request access" in page
    assert f"/doctor/patients/{patient.id}/history" in page
    assert "/doctor/access" in page  # "My patients" in the nav


def test_request_access_and_see_it_in_my_patients(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/access/request"
    form = client.get(url).get_data(as_text=True)
    assert 'value="30"' in form and 'value="cardiology"' in form
    answer = client.post(
        url,
        data={
            "csrf_token": csrf(client, url),
            "reason": "Follow-up of <b>asthma</b>",
            "days": "14",
            "scope": "categories",
            "categories": ["respiratory", "cardiology"],
        },
    )
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/doctor/access")
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "Request sent to Alice Moreau." in page
    assert "Follow-up of &lt;b&gt;asthma&lt;/b&gt;" in page  # the reason, opened and escaped
    assert "records in cardiology, respiratory" in page and "14 days" in page and "pending" in page
    request = db.session.scalar(select(AccessRequest))
    assert request.status == "pending"
    # On the ledger as a `request` transaction whose note hides the reason, scope and duration.
    stored = db.session.get(LedgerTransaction, request.tx_hash)
    assert stored is not None and stored.kind == "request"
    assert b"asthma" not in stored.encoded and b"cardiology" not in stored.encoded


def test_request_access_dates_scope(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/access/request"
    answer = client.post(
        url,
        data={
            "csrf_token": csrf(client, url),
            "reason": "Old notes",
            "days": "",
            "scope": "dates",
            "from": "2024-01-01",
            "to": "2024-06-30",
        },
    )
    assert answer.status_code == 302
    assert "records from 2024-01-01 to 2024-06-30" in client.get("/doctor/access").get_data(as_text=True)
    request = db.session.scalar(select(AccessRequest))
    assert "30 days" in client.get("/doctor/access").get_data(as_text=True)  # blank: the default
    assert request is not None and request.status == "pending"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"reason": "", "days": "30", "scope": "all"}, "A reason is required."),
        ({"reason": "Kept reason", "days": "soon", "scope": "all"}, "whole number"),
        ({"reason": "Kept reason", "days": "0", "scope": "all"}, "Enter a number of days from 1 to 365."),
        (
            {"reason": "Kept reason", "days": "30", "scope": "categories"},
            "Choose at least one kind of record to share.",
        ),
        (
            {"reason": "Kept reason", "days": "30", "scope": "dates", "from": "2024-05-01", "to": ""},
            "Enter the first and the last date, as year-month-day.",
        ),
    ],
)
def test_request_access_errors_keep_input(
    client: FlaskClient, doctor: Person, patient: Person, data: dict[str, str], message: str
) -> None:
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/access/request"
    answer = client.post(url, data={"csrf_token": csrf(client, url), **data})
    assert answer.status_code == 422
    page = answer.get_data(as_text=True)
    assert message in page
    assert "`" not in page  # a sentence for a person: no field names as the API spells them
    if data["reason"]:
        assert "Kept reason" in page
    assert f'value="{data["scope"]}" checked' in page
    assert count(AccessRequest) == 0


def test_request_access_unknown_patient(client: FlaskClient, doctor: Person) -> None:
    log_in(client, doctor.username)
    assert client.get("/doctor/patients/no-such-patient/access/request").status_code == 404


def test_history_needs_access(client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person) -> None:
    write_record(client, other_doctor, patient)
    log_in(client, doctor.username)
    answer = client.get(f"/doctor/patients/{patient.id}/history")
    assert answer.status_code == 403
    page = answer.get_data(as_text=True)
    assert "ask the patient for access first" in page
    assert f"/doctor/patients/{patient.id}/access/request" in page
    assert f"/doctor/patients/{patient.id}/emergency" in page
    assert "Open</a>" not in page


def test_grant_shows_in_my_patients_and_history_opens_record(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    record_id = write_record(client, other_doctor, patient)
    grant(client, patient, doctor, days=10)
    log_in(client, doctor.username)

    mine = client.get("/doctor/access").get_data(as_text=True)
    assert "Alice Moreau" in mine and "all records" in mine
    assert f"/doctor/patients/{patient.id}/history" in mine

    history = client.get(f"/doctor/patients/{patient.id}/history")
    assert history.status_code == 200
    page = history.get_data(as_text=True)
    assert "access log" in page and "Dr. Erik Lindqvist" in page and "Test Hospital" in page
    assert f"/doctor/records/{record_id}" in page and "pending" in page
    assert count(AccessEntry) == 0  # listing opens nothing

    opened = client.get(f"/doctor/records/{record_id}")
    assert opened.status_code == 200
    record = opened.get_data(as_text=True)
    assert "Asthma review" in record and "Read under a grant" in record
    assert f"/doctor/patients/{patient.id}/history" in record
    entry = db.session.scalar(select(AccessEntry))
    assert entry.mode == "grant" and entry.record_id == record_id


def test_history_lists_only_records_in_scope(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    inside = write_record(client, other_doctor, patient)
    outside = write_record(client, other_doctor, patient, category="cardiology", title="Echo")
    grant(client, patient, doctor, scope={"type": "categories", "categories": ["respiratory"]})
    log_in(client, doctor.username)
    page = client.get(f"/doctor/patients/{patient.id}/history").get_data(as_text=True)
    assert f"/doctor/records/{inside}" in page and f"/doctor/records/{outside}" not in page
    assert "records in respiratory" in client.get("/doctor/access").get_data(as_text=True)


def test_own_records_show_author_badge(client: FlaskClient, doctor: Person, patient: Person) -> None:
    record_id = write_record(client, doctor, patient)
    log_in(client, doctor.username)
    page = client.get(f"/doctor/patients/{patient.id}/history").get_data(as_text=True)
    assert f"/doctor/records/{record_id}" in page  # authored: visible without a grant
    record = client.get(f"/doctor/records/{record_id}").get_data(as_text=True)
    assert "You wrote this" in record and "Read under a grant" not in record


def test_emergency_refused_without_opt_in(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    write_record(client, other_doctor, patient)
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/emergency"
    form = client.get(url).get_data(as_text=True)
    assert "Break-glass access is for emergencies only." in form and "It lasts 4 hours" in form
    answer = client.post(url, data={"csrf_token": csrf(client, url), "reason": "Unconscious & bleeding"})
    assert answer.status_code == 403
    page = answer.get_data(as_text=True)
    assert "Alice Moreau has not opted in to emergency access" in page
    assert "Unconscious &amp; bleeding" in page  # the reason is kept, escaped
    assert count(EmergencyAccess) == 0


def test_emergency_needs_a_reason(client: FlaskClient, doctor: Person, patient: Person) -> None:
    opt_in(client, patient)
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/emergency"
    answer = client.post(url, data={"csrf_token": csrf(client, url), "reason": "  "})
    assert answer.status_code == 422 and "A reason is required." in answer.get_data(as_text=True)
    assert count(EmergencyAccess) == 0


def test_emergency_with_opt_in_then_admin_reviews(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, admin: Person
) -> None:
    record_id = write_record(client, other_doctor, patient)
    opt_in(client, patient)
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/emergency"
    answer = client.post(url, data={"csrf_token": csrf(client, url), "reason": "Collapsed in the ward"})
    assert answer.status_code == 302 and answer.headers["Location"].endswith(f"/doctor/patients/{patient.id}/history")
    history = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "Emergency access to Alice Moreau" in history and f"/doctor/records/{record_id}" in history
    record = client.get(f"/doctor/records/{record_id}").get_data(as_text=True)
    assert "Asthma review" in record and "Emergency access" in record
    assert db.session.scalar(select(AccessEntry.mode)) == "emergency"
    assert "emergency" in client.get("/doctor/access").get_data(as_text=True)
    log_out(client)

    log_in(client, admin.username)
    page = client.get("/admin/emergencies").get_data(as_text=True)
    assert "Dr. Ama Osei" in page and "Alice Moreau" in page and "Collapsed in the ward" in page
    assert 'class="unreviewed"' in page and "Mark reviewed" in page
    emergency_id = db.session.scalar(select(EmergencyAccess.id))
    review = f"/admin/emergencies/{emergency_id}/review"
    assert client.post(review).status_code == 400  # no CSRF token
    answer = client.post(review, data={"csrf_token": csrf(client, "/admin/emergencies")})
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/admin/emergencies")
    page = client.get("/admin/emergencies").get_data(as_text=True)
    assert "Marked the emergency access by Dr. Ama Osei as reviewed." in page
    assert "Mark reviewed" not in page and 'class="unreviewed"' not in page and "Hospital Admin" in page
    db.session.expire_all()
    assert db.session.scalar(select(EmergencyAccess.reviewed_at)) is not None


def test_review_unknown_emergency(client: FlaskClient, admin: Person) -> None:
    log_in(client, admin.username)
    answer = client.post("/admin/emergencies/nope/review", data={"csrf_token": csrf(client, "/admin/emergencies")})
    assert answer.status_code == 404 and "No such emergency access." in answer.get_data(as_text=True)


def test_unreviewed_emergencies_come_first(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person, admin: Person
) -> None:
    opt_in(client, patient)
    for who, reason in ((doctor, "First emergency"), (other_doctor, "Second emergency")):
        answer = client.post(f"/api/v1/patients/{patient.id}/emergency", json={"reason": reason}, headers=who.headers)
        assert answer.status_code == 201, answer.json
    first = db.session.scalar(select(EmergencyAccess.id).where(EmergencyAccess.doctor.has(username="dr.lind")))
    log_in(client, admin.username)
    client.post(f"/admin/emergencies/{first}/review", data={"csrf_token": csrf(client, "/admin/emergencies")})
    page = client.get("/admin/emergencies").get_data(as_text=True)
    assert page.index("First emergency") < page.index("Second emergency")
    assert len(re.findall(r'class="unreviewed"', page)) == 1


def test_invalid_review_of_another_hospitals_emergency(
    client: FlaskClient, doctor: Person, patient: Person, admin: Person
) -> None:
    """Each hospital reviews its own doctors: an emergency declared by a doctor of another member
    hospital (projected here from the ledger) is not on this hospital's page and cannot be
    marked reviewed here."""
    opt_in(client, patient)
    body = {"reason": "Found unconscious"}
    assert client.post(f"/api/v1/patients/{patient.id}/emergency", json=body, headers=doctor.headers).status_code == 201
    db.session.scalars(select(User).filter_by(public_id=doctor.id)).one().home_node = "node-9"  # of hospital 9
    db.session.commit()
    log_in(client, admin.username)
    page = client.get("/admin/emergencies").get_data(as_text=True)
    assert "Found unconscious" not in page and "Mark reviewed" not in page
    emergency_id = db.session.scalar(select(EmergencyAccess.id))
    answer = client.post(
        f"/admin/emergencies/{emergency_id}/review", data={"csrf_token": csrf(client, "/admin/emergencies")}
    )
    assert answer.status_code == 404 and "No such emergency access." in answer.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.scalar(select(EmergencyAccess.reviewed_at)) is None


def test_pages_need_csrf(client: FlaskClient, doctor: Person, patient: Person) -> None:
    opt_in(client, patient)
    log_in(client, doctor.username)
    for url in (f"/doctor/patients/{patient.id}/access/request", f"/doctor/patients/{patient.id}/emergency"):
        answer = client.post(url, data={"reason": "No token", "days": "30", "scope": "all"})
        assert answer.status_code == 400 and "The form has expired" in answer.get_data(as_text=True)
    assert count(AccessRequest) == 0 and count(EmergencyAccess) == 0


DOCTOR_PAGES = (
    "/doctor/access",
    "/doctor/patients/{id}/access/request",
    "/doctor/patients/{id}/history",
    "/doctor/patients/{id}/emergency",
)


def test_doctor_pages_refuse_admins(client: FlaskClient, admin: Person, patient: Person) -> None:
    log_in(client, admin.username)
    for url in DOCTOR_PAGES:
        assert client.get(url.format(id=patient.id)).status_code == 403, url
    assert "/admin/emergencies" in client.get("/admin/users").get_data(as_text=True)  # nav


def test_doctor_pages_refuse_patients(client: FlaskClient, patient: Person) -> None:
    """Patients never get a page session (they are sent to the app), and their API token opens no page."""
    answer = client.post(
        "/login",
        data={"username": patient.username, "password": patient.password, "csrf_token": csrf(client, "/login")},
    )
    assert answer.status_code == 200 and "Patients use the MedLedger app" in answer.get_data(as_text=True)
    for url in DOCTOR_PAGES:
        for headers in ({}, patient.headers):
            answer = client.get(url.format(id=patient.id), headers=headers)
            assert answer.status_code == 302 and "/login" in answer.headers["Location"], url
    answer = client.post(f"/doctor/patients/{patient.id}/emergency", data={"reason": "x"}, headers=patient.headers)
    assert answer.status_code == 400  # CSRF is checked before sign-in
    assert count(EmergencyAccess) == 0


def test_admin_pages_are_for_admins(client: FlaskClient, doctor: Person) -> None:
    log_in(client, doctor.username)
    assert client.get("/admin/emergencies").status_code == 403
