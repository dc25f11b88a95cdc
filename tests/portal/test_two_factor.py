"""Two-factor sign-in (TOTP, pyotp): set-up with a QR code, codes that work once, recovery codes,
required for doctors and admins where configured, and an admin's logged reset."""

from __future__ import annotations

import logging
import re

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text

from portal.extensions import db
from portal.models import User
from tests.conftest import PASSWORD, Person
from tests.portal.test_pages import csrf


def token(client: FlaskClient, person: Person, otp: str | None = None):  # type: ignore[no-untyped-def]
    body = {"username": person.username, "password": PASSWORD, **({"otp": otp} if otp is not None else {})}
    return client.post("/api/v1/auth/token", json=body)


def set_up(client: FlaskClient, person: Person) -> tuple[str, list[str]]:
    begun = client.post("/api/v1/me/two-factor", headers=person.headers)
    assert begun.status_code == 201 and begun.json["uri"].startswith("otpauth://totp/MedLedger:")
    assert begun.json["qr_svg"].startswith("<svg") and begun.json["secret"] in begun.json["uri"]
    secret = begun.json["secret"]
    wrong = client.post("/api/v1/me/two-factor/confirm", json={"code": "000000"}, headers=person.headers)
    assert wrong.status_code == 422 and "That code is not right" in wrong.json["error"]["message"]
    done = client.post("/api/v1/me/two-factor/confirm", json={"code": pyotp.TOTP(secret).now()}, headers=person.headers)
    assert done.status_code == 200 and len(done.json["recovery_codes"]) == 10
    return secret, done.json["recovery_codes"]


def test_patient_turns_it_on_and_signs_in_with_codes_that_work_once(client: FlaskClient, patient: Person) -> None:
    assert client.get("/api/v1/me/two-factor", headers=patient.headers).json == {
        "enabled": False, "recovery_codes_left": 0,
    }  # fmt: skip
    secret, recovery = set_up(client, patient)
    assert client.get("/api/v1/me/two-factor", headers=patient.headers).json == {
        "enabled": True, "recovery_codes_left": 10,
    }  # fmt: skip

    asked = token(client, patient)
    assert asked.status_code == 401 and asked.json["error"]["code"] == "two_factor_required"
    wrong = token(client, patient, "123456")
    assert wrong.status_code == 401 and wrong.json["error"]["message"] == "Wrong authentication code."
    # The set-up used this step's code: it cannot sign in again (one use per code).
    assert token(client, patient, pyotp.TOTP(secret).now()).status_code == 401
    code = recovery[0]
    assert token(client, patient, code).status_code == 200
    assert token(client, patient, code).status_code == 401  # spent
    assert token(client, patient, recovery[1].upper().replace("-", " ")).status_code == 200  # typed loosely
    assert client.get("/api/v1/me/two-factor", headers=patient.headers).json["recovery_codes_left"] == 8

    # The failures were counted for the owner.
    welcome = token(client, patient, recovery[2])
    assert welcome.json["failed_attempts"]["count"] == 0  # counts reset by the successes between


def test_no_secret_in_the_database(client: FlaskClient, patient: Person) -> None:
    secret, recovery = set_up(client, patient)
    row = db.session.scalars(select(User).filter_by(public_id=patient.id)).one()
    dump = b"".join(
        bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
        for v in db.session.execute(text("SELECT * FROM users")).fetchall()[0]
    )
    assert row.totp_sealed and secret.encode() not in dump and secret.encode() not in row.totp_sealed
    assert all(code.encode() not in dump for code in recovery)


def test_turning_it_off_needs_a_code(client: FlaskClient, patient: Person) -> None:
    _, recovery = set_up(client, patient)
    refused = client.delete("/api/v1/me/two-factor", json={"code": "999999"}, headers=patient.headers)
    assert refused.status_code == 422
    assert (
        client.delete("/api/v1/me/two-factor", json={"code": recovery[0]}, headers=patient.headers).status_code == 204
    )
    assert token(client, patient).status_code == 200


def test_required_for_doctors_set_up_in_the_portal(app: Flask, client: FlaskClient, doctor: Person) -> None:
    app.config["TWO_FACTOR_REQUIRED_ROLES"] = "doctor,admin"
    refused = token(client, doctor)
    assert refused.status_code == 403 and refused.json["error"]["code"] == "two_factor_setup_required"

    form = {"username": doctor.username, "password": PASSWORD, "csrf_token": csrf(client, "/login")}
    assert client.post("/login", data=form).status_code == 302
    sent = client.get("/doctor/patients")
    assert sent.status_code == 302 and sent.headers["Location"].endswith("/account/two-factor")
    page = client.get("/account/two-factor").get_data(as_text=True)
    assert "<svg" in page and "Your account needs two-factor sign-in" in page
    secret = re.search(r'<code class="secret">([A-Z2-7]+)</code>', page)
    assert secret is not None
    wrong = client.post(
        "/account/two-factor",
        data={"action": "confirm", "code": "000000", "csrf_token": csrf(client, "/account/two-factor")},
    )
    assert wrong.status_code == 422 and secret.group(1) in wrong.get_data(as_text=True)  # the same key, again
    done = client.post(
        "/account/two-factor",
        data={
            "action": "confirm",
            "code": pyotp.TOTP(secret.group(1)).now(),
            "csrf_token": csrf(client, "/account/two-factor"),
        },
    )
    codes = re.findall(r"<li><code>([0-9a-f-]+)</code></li>", done.get_data(as_text=True))
    assert done.status_code == 200 and len(codes) == 10
    assert client.get("/doctor/patients").status_code == 200
    # It cannot be turned off while required.
    off = client.delete("/api/v1/me/two-factor", json={"code": codes[0]}, headers=doctor.headers)
    assert off.status_code == 403

    client.post("/logout", data={"csrf_token": csrf(client, "/doctor/patients")})
    first = client.post("/login", data={**form, "csrf_token": csrf(client, "/login")})
    assert first.status_code == 401 and 'name="otp"' in first.get_data(as_text=True)
    signed_in = client.post("/login", data={**form, "otp": codes[1], "csrf_token": csrf(client, "/login")})
    assert signed_in.status_code == 302
    assert token(client, doctor, codes[2]).status_code == 200  # and an API token, now


def test_admin_resets_a_doctors_second_factor_and_it_is_logged(
    app: Flask, client: FlaskClient, doctor: Person, admin: Person, patient: Person, caplog: pytest.LogCaptureFixture
) -> None:
    set_up(client, doctor)
    form = {"username": admin.username, "password": PASSWORD, "csrf_token": csrf(client, "/login")}
    assert client.post("/login", data=form).status_code == 302
    page = client.get("/admin/users").get_data(as_text=True)
    reset_url = f"/admin/users/{doctor.id}/two-factor/reset"
    assert reset_url in page
    for nobody in (patient.id, "not-an-id"):
        refused = client.post(
            f"/admin/users/{nobody}/two-factor/reset", data={"csrf_token": csrf(client, "/admin/users")}
        )
        assert refused.status_code == 404 and "No doctor of this hospital has that id." in refused.get_data(
            as_text=True
        )
    # The handler on the logger itself: whatever other tests did to propagation or to the root logger.
    audit = logging.getLogger("portal.services.two_factor")
    disabled, audit.disabled = audit.disabled, False
    audit.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=audit.name):
            done = client.post(reset_url, data={"csrf_token": csrf(client, "/admin/users")})
    finally:
        audit.removeHandler(caplog.handler)
        audit.disabled = disabled
    assert done.status_code == 302
    assert any(
        f"two-factor sign-in reset for doctor {doctor.username}" in r.getMessage() and admin.username in r.getMessage()
        for r in caplog.records
    )
    assert token(client, doctor).status_code == 200  # no code asked: they set it up again

    # An admin of another hospital may not.
    db.session.scalars(select(User).filter_by(public_id=admin.id)).one().home_node = "node-9"
    db.session.commit()
    set_up(client, doctor)
    refused = client.post(reset_url, data={"csrf_token": csrf(client, "/admin/users")})
    assert refused.status_code == 404
