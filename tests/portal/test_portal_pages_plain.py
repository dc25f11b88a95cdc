"""The portal made easy: history with titles and categories, "My patients" in sections, plain
sentences for errors, a navigation that marks the page, a readable block page, the patient's
way to the app, and attachments shown in the page under the same access rule as downloads."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.errors import plain_message
from portal.extensions import db
from portal.models import AccessEntry
from tests.conftest import PASSWORD, PDF, PNG, Person, produce
from tests.portal.test_access_pages import grant, opt_in, write_record
from tests.portal.test_pages import csrf, log_in


@pytest.fixture(autouse=True)
def emergency_key_in_tmp(app: Flask, tmp_path: Path) -> None:
    app.config["EMERGENCY_KEY_PATH"] = str(tmp_path / "emergency.key")


def reads() -> list[tuple[str, int]]:
    return [(e.mode, e.part) for e in db.session.scalars(select(AccessEntry).order_by(AccessEntry.at))]


def rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>.*?</tr>", body, re.S)


# -- 1. history: title, category, author, hospital; filter ----------------------------------------


def test_history_lists_category_author_hospital_and_own_titles(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    mine = write_record(client, doctor, patient, title="Knee check", category="surgery")
    theirs = write_record(client, other_doctor, patient, title="Secret asthma plan", category="respiratory")
    grant(client, patient, doctor, days=10)
    log_in(client, doctor.username)

    page = client.get(f"/doctor/patients/{patient.id}/history").get_data(as_text=True)
    listed = rows(page)
    assert len(listed) == 2
    own = next(r for r in listed if mine in r)
    other = next(r for r in listed if theirs in r)
    assert "Knee check" in own and "surgery" in own and "Dr. Ama Osei" in own and "Test Hospital" in own
    assert "respiratory" in other and "Dr. Erik Lindqvist" in other and "Test Hospital" in other
    # Another doctor's title is sealed in the record: shown only by opening it, which is logged.
    assert "Secret asthma plan" not in page and "title sealed" in other
    assert "shown once you open the record" in page
    assert reads() == []  # listing opens nothing

    only = client.get(f"/doctor/patients/{patient.id}/history?category=respiratory").get_data(as_text=True)
    assert len(rows(only)) == 1 and theirs in only and mine not in only
    assert '<option value="respiratory" selected>' in only
    none = client.get(f"/doctor/patients/{patient.id}/history?category=oncology").get_data(as_text=True)
    assert "None of the records you may open is in the category oncology." in none


def test_invalid_history_category(client: FlaskClient, doctor: Person, patient: Person) -> None:
    write_record(client, doctor, patient)
    log_in(client, doctor.username)
    answer = client.get(f"/doctor/patients/{patient.id}/history?category=astrology")
    assert answer.status_code == 422
    assert "Choose one of the categories in the list." in answer.get_data(as_text=True)


def test_history_without_access_shows_no_title_or_category(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    write_record(client, other_doctor, patient, title="Secret asthma plan", category="psychiatry")
    log_in(client, doctor.username)
    answer = client.get(f"/doctor/patients/{patient.id}/history")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 403 and "ask the patient for access first" in page
    assert "Secret asthma plan" not in page and '<span class="badge category">' not in page
    filtered = client.get(f"/doctor/patients/{patient.id}/history?category=psychiatry")
    assert filtered.status_code == 403 and '<span class="badge category">' not in filtered.get_data(as_text=True)


def test_break_glass_history_lists_categories(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    record_id = write_record(client, other_doctor, patient, category="cardiology")
    opt_in(client, patient)
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/emergency"
    answer = client.post(url, data={"csrf_token": csrf(client, url), "reason": "Collapsed"}, follow_redirects=True)
    page = answer.get_data(as_text=True)
    (row,) = rows(page)
    assert record_id in row and "cardiology" in row and "Dr. Erik Lindqvist" in row and "Test Hospital" in row


# -- 2. My patients in three sections --------------------------------------------------------------


def test_my_patients_lists_the_patients_i_wrote_for(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person
) -> None:
    write_record(client, doctor, patient)
    write_record(client, doctor, patient)
    write_record(client, doctor, other_patient)
    log_in(client, doctor.username)
    page = client.get("/doctor/access").get_data(as_text=True)
    assert "No patient has given you access yet" not in page
    for heading in ("Under a grant", "Under an emergency", "Records I wrote"):
        assert f">{heading}</h2>" in page
    written = page.split('id="records-i-wrote"', 1)[1].split("</table>", 1)[0]
    assert "Alice Moreau" in written and "Bob Tanaka" in written
    alice = next(r for r in rows(written) if "Alice Moreau" in r)
    assert "<td>2</td>" in alice and f"/doctor/patients/{patient.id}/history" in alice


def test_my_patients_sections_for_grant_and_emergency(
    client: FlaskClient, doctor: Person, patient: Person, other_patient: Person
) -> None:
    grant(client, patient, doctor, days=10)
    opt_in(client, other_patient)
    answer = client.post(
        f"/api/v1/patients/{other_patient.id}/emergency", json={"reason": "Found unconscious"}, headers=doctor.headers
    )
    assert answer.status_code == 201, answer.json
    log_in(client, doctor.username)
    page = client.get("/doctor/access").get_data(as_text=True)
    granted = page.split('id="under-grant"', 1)[1].split('id="under-emergency"', 1)[0]
    emergency = page.split('id="under-emergency"', 1)[1].split('id="records-i-wrote"', 1)[0]
    assert "Alice Moreau" in granted and "Bob Tanaka" not in granted
    assert "Bob Tanaka" in emergency and "Alice Moreau" not in emergency
    assert "You have not written a record yet." in page


# -- 3. plain sentences ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "plain"),
    [
        (
            "`scope.categories` must be a non-empty list from: general, other.",
            "Choose at least one kind of record to share.",
        ),
        ("`days` must be a whole number from 1 to 365.", "Enter a number of days from 1 to 365."),
        ("`title` is required.", "Fill in the title."),
        ("`display_name` is longer than 120 characters.", "The full name can be at most 120 characters long."),
        ("unknown ICD-10-CM code 'X99'", "X99 is not an ICD-10-CM diagnosis code this hospital knows."),
        ("Send `before` or `after`, not both.", "Send the before or the after, not both."),
        ("A reason is required.", "A reason is required."),
    ],
)
def test_plain_message(api: str, plain: str) -> None:
    assert plain_message(api) == plain


def test_error_page_speaks_plainly_and_api_keeps_its_code(client: FlaskClient, doctor: Person, patient: Person) -> None:
    answer = client.post(
        "/api/v1/grants",
        json={"doctor_id": doctor.id, "scope": {"type": "categories", "categories": []}},
        headers=patient.headers,
    )
    assert answer.status_code == 422 and "`scope.categories`" in answer.json["error"]["message"]
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/access/request"
    page = client.post(url, data={"csrf_token": csrf(client, url), "reason": "Review", "scope": "categories"})
    assert page.status_code == 422
    text = page.get_data(as_text=True)
    assert '<p class="flash error" role="status">Choose at least one kind of record to share.</p>' in text
    assert "`" not in text


# -- 4. navigation, emergencies count, block page --------------------------------------------------


def test_navigation_marks_the_current_page(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    page = client.get("/doctor/access").get_data(as_text=True)
    nav = page.split('<nav aria-label="Main">', 1)[1].split("</nav>", 1)[0]
    assert re.findall(r'<a href="([^"]+)" aria-current="page">', nav) == ["/doctor/access"]
    history = client.get(f"/doctor/patients/{patient.id}/history").get_data(as_text=True)
    nav = history.split('<nav aria-label="Main">', 1)[1].split("</nav>", 1)[0]
    assert re.findall(r'<a href="([^"]+)" aria-current="page">', nav) == ["/doctor/access"]  # a patient of mine
    chain = client.get("/chain/").get_data(as_text=True)
    assert re.findall(r'<a href="([^"]+)" aria-current="page">', chain) == ["/chain/"]


def test_admin_nav_counts_emergencies_waiting(
    client: FlaskClient, doctor: Person, patient: Person, admin: Person
) -> None:
    log_in(client, admin.username)
    assert 'id="emergencies-waiting"' not in client.get("/admin/users").get_data(as_text=True)
    opt_in(client, patient)
    answer = client.post(
        f"/api/v1/patients/{patient.id}/emergency", json={"reason": "Found unconscious"}, headers=doctor.headers
    )
    assert answer.status_code == 201
    page = client.get("/chain/").get_data(as_text=True)  # on every page, not only the admin's
    assert '<span class="count" id="emergencies-waiting">1</span>' in page and "waiting for review" in page
    emergency = client.get("/admin/emergencies").get_data(as_text=True)
    emergency_id = re.search(r"/admin/emergencies/([0-9a-f-]{36})/review", emergency)[1]
    client.post(f"/admin/emergencies/{emergency_id}/review", data={"csrf_token": csrf(client, "/admin/emergencies")})
    assert 'id="emergencies-waiting"' not in client.get("/admin/users").get_data(as_text=True)


def test_block_page_prints_no_python_values(app: Flask, client: FlaskClient, doctor: Person, patient: Person) -> None:
    files = [{"filename": "scan.png", "content_type": "image/png", "data": base64.b64encode(PNG).decode()}]
    answer = client.post(
        f"/api/v1/patients/{patient.id}/records",
        json={"title": "Scan", "category": "imaging", "attachments": files},
        headers=doctor.headers,
    )
    assert answer.status_code == 201, answer.json
    grant(client, patient, doctor, days=5)
    height = produce(app)
    assert height is not None
    page = client.get(f"/chain/blocks/{height}").get_data(as_text=True)
    assert "record" in page and '<ul class="values">' in page  # the attachments' hashes as a list
    for url in (f"/chain/blocks/{height}", "/chain/blocks/0", "/chain/"):
        main = client.get(url).get_data(as_text=True).split("<main>", 1)[1]
        assert "None" not in main and "['" not in main and "{'" not in main and "True" not in main, url


# -- 5. a patient on the portal's login ------------------------------------------------------------


def test_patient_on_portal_login_is_shown_the_way_to_the_app(client: FlaskClient, patient: Person) -> None:
    answer = client.post(
        "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf(client, "/login")}
    )
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert "<h1>Patients use the MedLedger app</h1>" in page
    assert '<a class="button" href="/app/#/login">' in page and '<strong class="username">alice</strong>' in page
    assert "token" not in page.lower()  # nothing handed over
    assert client.get("/doctor/access").status_code in (302, 401)  # and no portal session


def test_invalid_patient_password_on_portal_login(client: FlaskClient, patient: Person) -> None:
    answer = client.post(
        "/login", data={"username": "alice", "password": "wrong", "csrf_token": csrf(client, "/login")}
    )
    assert answer.status_code == 401 and "Patients use the MedLedger app" not in answer.get_data(as_text=True)


# -- 6. attachments shown in the page --------------------------------------------------------------


def write_with_files(client: FlaskClient, doctor: Person, patient: Person) -> str:
    files = [
        {"filename": "scan.png", "content_type": "image/png", "data": base64.b64encode(PNG).decode()},
        {"filename": "report.pdf", "content_type": "application/pdf", "data": base64.b64encode(PDF).decode()},
    ]
    return write_record(client, doctor, patient, attachments=files)


def test_portal_previews_images_and_pdfs_inline(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    record_id = write_with_files(client, other_doctor, patient)
    grant(client, patient, doctor, days=5)
    log_in(client, doctor.username)
    page = client.get(f"/doctor/records/{record_id}").get_data(as_text=True)
    assert f'<img src="/doctor/records/{record_id}/attachments/0?inline=1"' in page
    assert f'<iframe class="preview pdf" src="/doctor/records/{record_id}/attachments/1?inline=1"' in page
    before = len(reads())

    image = client.get(f"/doctor/records/{record_id}/attachments/0?inline=1")
    assert image.status_code == 200 and image.data == PNG and image.mimetype == "image/png"
    assert image.headers["Content-Disposition"].startswith("inline")
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert reads()[before:] == [("grant", 0)]  # exactly one read, as a download logs

    pdf = client.get(f"/doctor/records/{record_id}/attachments/1?inline=1")
    assert pdf.status_code == 200 and pdf.data == PDF and pdf.mimetype == "application/pdf"
    assert pdf.headers["Content-Disposition"].startswith("inline")
    assert "sandbox" in pdf.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in pdf.headers["Content-Security-Policy"]
    assert pdf.headers["X-Content-Type-Options"] == "nosniff"
    assert reads()[before:] == [("grant", 0), ("grant", 1)]

    download = client.get(f"/doctor/records/{record_id}/attachments/1")
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert len(reads()) == before + 3


def test_invalid_inline_preview_without_access(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    record_id = write_with_files(client, other_doctor, patient)
    log_in(client, doctor.username)
    answer = client.get(f"/doctor/records/{record_id}/attachments/0?inline=1")
    assert answer.status_code == 403 and PNG not in answer.data
    api = client.get(f"/api/v1/records/{record_id}/attachments/1?inline=1", headers=doctor.headers)
    assert api.status_code == 403 and api.json["error"]["code"] == "forbidden"
    assert db.session.scalar(select(func.count()).select_from(AccessEntry)) == 0


def test_api_attachment_inline(client: FlaskClient, doctor: Person, patient: Person) -> None:
    record_id = write_with_files(client, doctor, patient)
    url = f"/api/v1/records/{record_id}/attachments/1"
    pdf = client.get(f"{url}?inline=1", headers=patient.headers)
    assert pdf.status_code == 200 and pdf.data == PDF
    assert (
        pdf.headers["Content-Disposition"].startswith("inline") and "sandbox" in pdf.headers["Content-Security-Policy"]
    )
    assert client.get(url, headers=patient.headers).headers["Content-Disposition"].startswith("attachment")
    read = client.get(f"{url}?inline=1", headers=doctor.headers)
    assert read.status_code == 200 and reads() == [("author", 1)]  # the author's read is logged once, as before


def test_inline_pdf_may_be_framed_by_this_site_and_nothing_else_may(
    client: FlaskClient, doctor: Person, other_doctor: Person, patient: Person
) -> None:
    record_id = write_with_files(client, other_doctor, patient)
    grant(client, patient, doctor, days=5)
    log_in(client, doctor.username)
    page = client.get(f"/doctor/records/{record_id}")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert "frame-src" not in page.headers["Content-Security-Policy"]  # default-src 'self': the portal frames no blob:

    # The one answer the record page frames: only this site may frame it, and it runs nothing.
    for pdf in (
        client.get(f"/doctor/records/{record_id}/attachments/1?inline=1"),
        client.get(f"/api/v1/records/{record_id}/attachments/1?inline=1", headers=patient.headers),
    ):
        assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
        assert pdf.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
        policy = pdf.headers.getlist("Content-Security-Policy")
        assert len(policy) == 1 and "frame-ancestors 'self'" in policy[0] and "'none'" in policy[0]
        assert "frame-ancestors 'none'" not in policy[0] and "sandbox" in policy[0]
        assert pdf.headers["X-Content-Type-Options"] == "nosniff" and pdf.headers["Cache-Control"] == "no-store"
    # A download is never framed.
    download = client.get(f"/doctor/records/{record_id}/attachments/1")
    assert download.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in download.headers["Content-Security-Policy"]


def test_app_may_frame_object_urls_and_nothing_else(client: FlaskClient) -> None:
    """The app shows a PDF it fetched from an object URL in a frame (pwa/views.js)."""
    policy = client.get("/app/").headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))  # name -> sources
    assert directives["frame-src"] == "blob:" and directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert client.get("/app/").headers["X-Frame-Options"] == "DENY"


def test_invalid_api_attachment_inline_value(client: FlaskClient, doctor: Person, patient: Person) -> None:
    record_id = write_with_files(client, doctor, patient)
    answer = client.get(f"/api/v1/records/{record_id}/attachments/0?inline=yes", headers=patient.headers)
    assert answer.status_code == 422 and answer.json["error"]["code"] == "validation_failed"
