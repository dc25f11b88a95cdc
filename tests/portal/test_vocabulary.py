"""Coded data where it is entered: the API's vocabulary search, the portal's own lookup for the
record form, and every unknown code of a record reported at once."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import Record, User
from portal.services.records import UnknownCodes
from tests.conftest import PASSWORD, RECORD, Person
from tests.portal.test_pages import csrf, log_in

DYSPNEA = {"id": "HP:0002094", "name": "Dyspnea", "matched": "short of breath"}


def no_record_stored() -> bool:
    return db.session.scalar(select(func.count()).select_from(Record)) == 0


# -- the API ----------------------------------------------------------------------------------


def test_api_symptoms_know_everyday_words(client: FlaskClient, patient: Person) -> None:
    answer = client.get("/api/v1/symptoms?q=short of breath", headers=patient.headers)
    assert answer.status_code == 200
    assert answer.json["symptoms"][0] == DYSPNEA


def test_api_symptom_names_say_no_phrase(client: FlaskClient, patient: Person) -> None:
    answer = client.get("/api/v1/symptoms?q=fever&limit=3", headers=patient.headers)
    assert answer.json["symptoms"][0] == {"id": "HP:0001945", "name": "Fever", "matched": None}
    assert len(answer.json["symptoms"]) == 3


def test_api_diagnoses_by_words(client: FlaskClient, patient: Person) -> None:
    answer = client.get("/api/v1/diagnoses?q=asthma", headers=patient.headers)
    assert answer.status_code == 200
    found = answer.json["diagnoses"]
    assert found[0] == {"code": "J45", "description": "Asthma"}
    assert len(found) == 20 and all("asthma" in d["description"].lower() for d in found)


@pytest.mark.parametrize("text", ["J45.909", "j45909"])
def test_api_diagnoses_by_code(client: FlaskClient, patient: Person, text: str) -> None:
    answer = client.get(f"/api/v1/diagnoses?q={text}&limit=5", headers=patient.headers)
    assert answer.json["diagnoses"] == [{"code": "J45.909", "description": "Unspecified asthma, uncomplicated"}]


def test_api_diagnoses_by_code_prefix(client: FlaskClient, patient: Person) -> None:
    codes = [
        d["code"] for d in client.get("/api/v1/diagnoses?q=J45.9&limit=50", headers=patient.headers).json["diagnoses"]
    ]
    assert codes[0] == "J45.9" and "J45.909" in codes and all(c.startswith("J45.9") for c in codes)


@pytest.mark.parametrize("route", ["symptoms", "diagnoses"])
@pytest.mark.parametrize("limit", ["0", "51", "x"])
def test_invalid_search_limit(client: FlaskClient, patient: Person, route: str, limit: str) -> None:
    answer = client.get(f"/api/v1/{route}?q=a&limit={limit}", headers=patient.headers)
    assert answer.status_code == 422
    assert answer.json["error"]["message"] == "`limit` must be a whole number from 1 to 50."


def test_api_record_lists_every_unknown_code(client: FlaskClient, doctor: Person, patient: Person) -> None:
    body = {**RECORD, "diagnoses": ["J45.909", "ZZZ.99", "Q99.99"], "symptoms": ["HP:9999999", "HP:0002094"]}
    answer = client.post(f"/api/v1/patients/{patient.id}/records", json=body, headers=doctor.headers)
    assert answer.status_code == 422
    message = answer.json["error"]["message"]
    for name, code in (("diagnoses.1", "ZZZ.99"), ("diagnoses.2", "Q99.99"), ("symptoms.0", "HP:9999999")):
        assert f"'{code}' (`{name}`)" in message
    assert "J45.909" not in message and "HP:0002094" not in message
    fields = answer.json["error"]["fields"]  # programs get each bad code by its place in the list
    assert set(fields) == {"diagnoses.1", "diagnoses.2", "symptoms.0"} and "ZZZ.99" in fields["diagnoses.1"]
    assert no_record_stored()


def test_record_service_names_each_bad_code_by_its_place(client: FlaskClient, doctor: Person, patient: Person) -> None:
    error = UnknownCodes({"diagnoses.1": "unknown ICD-10-CM code 'ZZZ'", "symptoms.0": "unknown HPO term 'HP:1'"})
    assert error.status == 422 and error.fields["diagnoses.1"] == "unknown ICD-10-CM code 'ZZZ'"
    assert str(error) == "unknown ICD-10-CM code 'ZZZ' (`diagnoses.1`); unknown HPO term 'HP:1' (`symptoms.0`)."
    # One bad code keeps the message it always had.
    assert str(UnknownCodes({"diagnoses.0": "unknown ICD-10-CM code 'ZZZ'"})) == "unknown ICD-10-CM code 'ZZZ'"


# -- the portal's lookup ------------------------------------------------------------------------


def test_portal_lookup_for_doctors(client: FlaskClient, doctor: Person) -> None:
    log_in(client, doctor.username)
    symptoms = client.get("/doctor/codes/symptoms?q=short of breath")
    assert symptoms.status_code == 200 and symptoms.json["symptoms"][0] == DYSPNEA
    diagnoses = client.get("/doctor/codes/diagnoses?q=asthma")
    assert diagnoses.status_code == 200 and diagnoses.json["diagnoses"][0] == {"code": "J45", "description": "Asthma"}
    assert client.get("/doctor/codes/diagnoses?q=").json == {"diagnoses": []}
    assert client.get("/doctor/codes/symptoms").json == {"symptoms": []}


def test_portal_lookup_refuses_anonymous(client: FlaskClient) -> None:
    answer = client.get("/doctor/codes/diagnoses?q=asthma")
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]
    assert b"Asthma" not in answer.data


@pytest.mark.parametrize("route", ["diagnoses", "symptoms"])
def test_portal_lookup_refuses_a_signed_in_patient(client: FlaskClient, patient: Person, route: str) -> None:
    # A patient's password on the portal's sign-in opens no portal session: the lookup asks to sign in.
    client.post(
        "/login", data={"username": patient.username, "password": PASSWORD, "csrf_token": csrf(client, "/login")}
    )
    answer = client.get(f"/doctor/codes/{route}?q=asthma")
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]


@pytest.mark.parametrize("route", ["diagnoses", "symptoms"])
def test_portal_lookup_refuses_admins(client: FlaskClient, admin: Person, route: str) -> None:
    log_in(client, admin.username)
    answer = client.get(f"/doctor/codes/{route}?q=asthma")
    assert answer.status_code == 403 and b"Asthma" not in answer.data


def test_portal_lookup_refuses_an_account_no_longer_a_doctor(client: FlaskClient, doctor: Person) -> None:
    log_in(client, doctor.username)
    assert client.get("/doctor/codes/diagnoses?q=asthma").status_code == 200
    db.session.scalar(select(User).where(User.public_id == doctor.id)).role = "patient"
    db.session.commit()
    answer = client.get("/doctor/codes/diagnoses?q=asthma")
    assert answer.status_code == 403 and b"Asthma" not in answer.data


def test_portal_lookup_ignores_the_bearer_token(client: FlaskClient, doctor: Person) -> None:
    answer = client.get("/doctor/codes/symptoms?q=tired", headers=doctor.headers)
    assert answer.status_code == 302


@pytest.mark.parametrize(
    ("query", "message"),
    [("q=" + "a" * 101, "Search for at most 100 characters."), ("q=a&q=b", "Give the search once.")],
)
def test_invalid_portal_lookup(client: FlaskClient, doctor: Person, query: str, message: str) -> None:
    log_in(client, doctor.username)
    answer = client.get(f"/doctor/codes/diagnoses?{query}")
    assert answer.status_code == 422
    assert answer.json["error"]["message"] == message


# -- the record form ------------------------------------------------------------------------------


def test_record_form_reports_every_unknown_code_and_keeps_the_input(
    client: FlaskClient, doctor: Person, patient: Person
) -> None:
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/records/new"
    form = {
        "csrf_token": csrf(client, url),
        "title": "Kept title",
        "category": "respiratory",
        "diagnoses": "J45.909, ZZZ1, QQQ2",
        "symptoms": "HP:0002094, HP:9999999",
    }
    answer = client.post(url, data=form)
    assert answer.status_code == 422
    page = answer.get_data(as_text=True)
    assert "ZZZ1 is not an ICD-10-CM diagnosis code this hospital knows." in page
    assert "QQQ2 is not an ICD-10-CM diagnosis code this hospital knows." in page
    assert "HP:9999999 is not an HPO symptom this hospital knows." in page
    assert 'value="J45.909, ZZZ1, QQQ2"' in page and "Kept title" in page
    # The known codes come back described, for the chips.
    assert "Unspecified asthma, uncomplicated" in page and "Dyspnea" in page
    assert 'aria-invalid="true"' in page
    assert no_record_stored()


def test_record_form_links_the_picker(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    page = client.get(f"/doctor/patients/{patient.id}/records/new").get_data(as_text=True)
    assert 'src="/static/code-picker.js"' in page and 'href="/static/code-picker.css"' in page
    assert 'data-url="/doctor/codes/diagnoses"' in page and 'data-url="/doctor/codes/symptoms"' in page
    assert client.get("/static/code-picker.js").status_code == 200


def test_record_form_keeps_more_than_three_prescriptions(client: FlaskClient, doctor: Person, patient: Person) -> None:
    log_in(client, doctor.username)
    url = f"/doctor/patients/{patient.id}/records/new"
    drugs = ["Salbutamol", "Budesonide", "Prednisolone", "Montelukast"]
    form = {"csrf_token": csrf(client, url), "title": "", "category": "respiratory", "rx_drug": drugs}
    page = client.post(url, data=form).get_data(as_text=True)
    assert all(f'value="{drug}"' in page for drug in drugs)
