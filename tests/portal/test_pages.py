"""The portal's pages: sign-in, the doctor's flow, the admin's, the explorer, CSRF."""

from __future__ import annotations

import io
import re

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Record, User
from tests.conftest import PASSWORD, PNG, Person, produce


def csrf(client: FlaskClient, url: str) -> str:
    page = client.get(url).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, url
    return match.group(1)


def log_in(client: FlaskClient, username: str) -> None:
    answer = client.post(
        "/login", data={"username": username, "password": PASSWORD, "csrf_token": csrf(client, "/login")}
    )
    assert answer.status_code == 302, answer.get_data(as_text=True)


def test_doctor_finds_patient_writes_record_and_reads_it(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person
) -> None:
    log_in(client, doctor.username)
    found = client.get("/doctor/patients?q=alice").get_data(as_text=True)
    assert "Alice Moreau" in found and f"/doctor/patients/{patient.id}/records/new" in found

    url = f"/doctor/patients/{patient.id}/records/new"
    answer = client.post(
        url,
        data={
            "csrf_token": csrf(client, url),
            "title": "Knee injury",
            "category": "surgery",
            "diagnoses": "S83.209A",
            "symptoms": "HP:0030839",
            "notes": "Twisted knee <b>playing</b> football",
            "rx_drug": ["Ibuprofen", ""],
            "rx_dose": ["400 mg", ""],
            "rx_frequency": ["three times daily", ""],
            "rx_duration": ["5 days", ""],
            "attachments": (io.BytesIO(PNG), "knee.png", "image/png"),
        },
        content_type="multipart/form-data",
    )
    assert answer.status_code == 302, answer.get_data(as_text=True)
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "Knee injury" in page and "Ibuprofen" in page and "knee.png" in page
    assert "&lt;b&gt;playing&lt;/b&gt;" in page  # escaped, never rendered as markup
    listing = client.get("/doctor/records").get_data(as_text=True)
    assert "Knee injury" in listing and "pending" in listing.lower()
    produce(app)
    record_id = db.session.scalar(select(Record.id))
    assert client.get(f"/doctor/records/{record_id}/attachments/0").data == PNG


def test_record_form_errors_keep_input(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/records/new"
    answer = client.post(
        url, data={"csrf_token": csrf(client, url), "title": "Kept title", "category": "general", "diagnoses": "NOPE"}
    )
    assert answer.status_code == 422
    page = answer.get_data(as_text=True)
    assert "NOPE is not an ICD-10-CM diagnosis code this hospital knows." in page and "Kept title" in page
    assert db.session.scalar(select(func.count()).select_from(Record)) == 0


def test_invalid_form_without_csrf_token(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    answer = client.post(f"/doctor/patients/{patient.id}/records/new", data={"title": "x", "category": "general"})
    assert answer.status_code == 400
    assert "The form has expired" in answer.get_data(as_text=True)
    assert db.session.scalar(select(func.count()).select_from(Record)) == 0


def test_invalid_login_page(client: FlaskClient, doctor: Person) -> None:
    answer = client.post(
        "/login", data={"username": "dr.osei", "password": "nope", "csrf_token": csrf(client, "/login")}
    )
    assert answer.status_code == 401
    assert "Wrong username or password." in answer.get_data(as_text=True)


def test_logout_ends_the_cookie(client: FlaskClient, doctor: Person) -> None:
    log_in(client, doctor.username)
    assert client.get("/doctor/records").status_code == 200
    client.post("/logout", data={"csrf_token": csrf(client, "/doctor/records")})
    answer = client.get("/doctor/records")
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]


def test_stolen_cookie_dies_at_logout(app: Flask, doctor: Person) -> None:
    """A copied session cookie stops working once its session is logged out."""
    first = app.test_client()
    log_in(first, doctor.username)
    cookie = first.get_cookie("session")
    assert cookie is not None
    thief = app.test_client()
    thief.set_cookie("session", cookie.value)
    assert thief.get("/doctor/records").status_code == 200
    first.post("/logout", data={"csrf_token": csrf(first, "/doctor/records")})
    assert thief.get("/doctor/records").status_code == 302


def test_roles_are_kept_apart(client: FlaskClient, doctor: Person, admin: Person) -> None:
    log_in(client, doctor.username)
    assert client.get("/admin/users").status_code == 403
    client.post("/logout", data={"csrf_token": csrf(client, "/doctor/records")})
    log_in(client, admin.username)
    assert client.get("/doctor/records").status_code == 403


def test_patients_are_sent_to_the_app(client: FlaskClient, patient: Person) -> None:
    answer = client.post(
        "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf(client, "/login")}
    )
    assert answer.status_code == 200 and "Patients use the MedLedger app" in answer.get_data(as_text=True)


def test_admin_creates_doctor_and_seals_block(app: Flask, client: FlaskClient, admin: Person) -> None:
    log_in(client, admin.username)
    url = "/admin/doctors/new"
    answer = client.post(
        url,
        data={
            "csrf_token": csrf(client, url),
            "username": "dr.new",
            "display_name": "Dr. New",
            "hospital": "General",
            "licence_number": "L-9",
            "password": "long-enough-pw",
        },
    )
    assert answer.status_code == 302
    doctor = db.session.scalar(select(User).where(User.username == "dr.new"))
    assert doctor.role == "doctor" and doctor.hospital == "General"
    users = client.get("/admin/users").get_data(as_text=True)
    assert "dr.new" in users
    client.post("/admin/blocks", data={"csrf_token": csrf(client, "/admin/users")})
    assert client.get("/api/v1/chain/verify").json["blocks"] == 2


def test_explorer_is_public(app: Flask, client: FlaskClient, patient: Person) -> None:
    produce(app)
    page = client.get("/chain/?verify=1").get_data(as_text=True)
    assert "chain valid" in page.lower() or "valid" in page.lower()
    block = client.get("/chain/blocks/1").get_data(as_text=True)
    assert "key" in block and "alice" not in block


def test_security_headers(client: FlaskClient) -> None:
    answer = client.get("/login")
    assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Cache-Control"] == "no-store"


def test_pwa_is_served(client: FlaskClient) -> None:
    index = client.get("/app/")
    assert index.status_code == 200 and b'<link rel="manifest"' in index.data
    manifest = client.get("/app/manifest.webmanifest")
    assert manifest.mimetype == "application/manifest+json"
    sizes = {icon["sizes"] for icon in manifest.json["icons"]}
    assert {"192x192", "512x512"} <= sizes
    for icon in manifest.json["icons"]:
        assert client.get(icon["src"]).data.startswith(b"\x89PNG")
    assert client.get("/app/sw.js").mimetype == "text/javascript"
    assert client.get("/app/../portal/config.py").status_code == 404
