"""Symptom profiles and matching over the API: both modes, withdrawal, blocking, connection
requests and their rate limit, and no symptom in clear anywhere in the database."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from core.clinical import load_vocabulary
from portal import runtime
from portal.extensions import db
from portal.models import SymptomProfile, utcnow
from portal.services import accounts, matching
from portal.services.matching import ProfileIndex
from tests.conftest import Person, make_person
from tests.portal.test_no_leaks import dump_database

HEADACHE, NAUSEA, FATIGUE, ASTHMA = "HP:0002315", "HP:0002018", "HP:0012378", "HP:0002099"
CLUSTER_HEADACHE = "HP:0012199"
PSEUDONYM_RE = re.compile(r"^[a-z]+-[a-z]+-\d{4}$")


@pytest.fixture
def carol(client: FlaskClient) -> Person:
    return make_person(client, "patient", "carol", "Carol Diaz")


def put_profile(client: FlaskClient, who: Person, terms: list[str], **fields: Any) -> Any:
    body = {"terms": terms, "diagnosis": None, "age_band": None, "sex": None, "discoverable": True, **fields}
    answer = client.put("/api/v1/profile", json=body, headers=who.headers)
    assert answer.status_code == 200, answer.json
    return answer.json["profile"]


def matches(client: FlaskClient, who: Person, mode: str = "exact", **params: Any) -> list[dict[str, Any]]:
    answer = client.get("/api/v1/matches", query_string={"mode": mode, **params}, headers=who.headers)
    assert answer.status_code == 200, answer.json
    return answer.json["matches"]


def pseudonym(who: Person) -> str:
    """The pseudonym others see for `who` (test helper: reads it through the service)."""
    return matching.pseudonym_of(accounts.get_user(who.id), runtime.matching_context().keys.pseudonym)


def pseudonym_seen_by(client: FlaskClient, who: Person) -> str:
    found = matches(client, who)
    assert len(found) == 1
    return found[0]["pseudonym"]


def error(answer: Any) -> tuple[int, str, str]:
    return answer.status_code, answer.json["error"]["code"], answer.json["error"]["message"]


# -- vocabulary and profile -----------------------------------------------------------------


def test_symptom_search_as_you_type(client: FlaskClient, patient: Person) -> None:
    answer = client.get("/api/v1/symptoms?q=headache&limit=5", headers=patient.headers)
    assert answer.status_code == 200
    assert answer.json["symptoms"][0] == {"id": HEADACHE, "name": "Headache"}
    assert len(answer.json["symptoms"]) == 5
    assert client.get("/api/v1/symptoms?q=", headers=patient.headers).json == {"symptoms": []}


def test_diagnosis_lookup_by_code(client: FlaskClient, patient: Person) -> None:
    answer = client.get("/api/v1/diagnoses?q=j45.909", headers=patient.headers)
    assert answer.json["diagnoses"] == [{"code": "J45.909", "description": "Unspecified asthma, uncomplicated"}]
    assert client.get("/api/v1/diagnoses?q=asthma", headers=patient.headers).json == {"diagnoses": []}


def test_profile_round_trip(client: FlaskClient, patient: Person) -> None:
    assert client.get("/api/v1/profile", headers=patient.headers).json == {"profile": None}
    saved = put_profile(client, patient, [NAUSEA, HEADACHE], diagnosis="G43.909", age_band="30-44", sex="female")
    expected = {
        "terms": [{"id": NAUSEA, "name": "Nausea"}, {"id": HEADACHE, "name": "Headache"}],  # by id
        "diagnosis": {"code": "G43.909", "description": load_vocabulary().diagnosis("G43.909").description},
        "age_band": "30-44",
        "sex": "female",
        "discoverable": True,
    }
    assert saved == expected
    assert client.get("/api/v1/profile", headers=patient.headers).json["profile"] == expected
    assert client.delete("/api/v1/profile", headers=patient.headers).status_code == 204
    assert client.get("/api/v1/profile", headers=patient.headers).json == {"profile": None}


# -- matching -------------------------------------------------------------------------------


def test_exact_mode_same_symptom_set_only(
    client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    put_profile(client, patient, [HEADACHE, NAUSEA])
    put_profile(client, other_patient, [NAUSEA, HEADACHE])
    put_profile(client, carol, [HEADACHE])
    found = matches(client, patient, "exact")
    assert len(found) == 1
    match = found[0]
    assert PSEUDONYM_RE.match(match["pseudonym"])
    assert match["score"] == 1.0
    assert match["shared"] == [{"id": HEADACHE, "name": "Headache"}, {"id": NAUSEA, "name": "Nausea"}]
    assert match["connection"] is None
    assert set(match) == {"pseudonym", "score", "shared", "connection"}  # nothing else about bob
    assert [m["score"] for m in matches(client, carol, "exact")] == []


def test_ranked_mode_orders_by_similarity_above_threshold(
    client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    put_profile(client, patient, [HEADACHE, NAUSEA], age_band="30-44", sex="female")
    put_profile(client, other_patient, [HEADACHE, NAUSEA], age_band="30-44", sex="female")
    put_profile(client, carol, [CLUSTER_HEADACHE, FATIGUE], age_band="60-74", sex="male")
    everyone = matches(client, patient, "ranked", threshold="0")
    assert len(everyone) == 2
    best, other = everyone
    assert best["score"] > other["score"] >= 0
    assert best["score"] == pytest.approx(1.0)
    assert best["shared"] == [{"id": HEADACHE, "name": "Headache"}, {"id": NAUSEA, "name": "Nausea"}]
    assert other["shared"] == []  # related symptoms (a kind of headache) score, but only same terms are shown
    cut = (best["score"] + other["score"]) / 2
    assert [m["pseudonym"] for m in matches(client, patient, "ranked", threshold=str(cut))] == [best["pseudonym"]]


def test_matching_is_mutual(client: FlaskClient, patient: Person, other_patient: Person) -> None:
    answer = client.get("/api/v1/matches?mode=exact", headers=patient.headers)
    assert error(answer) == (409, "conflict", "Save your symptom profile first.")
    put_profile(client, other_patient, [HEADACHE])
    put_profile(client, patient, [HEADACHE], discoverable=False)
    answer = client.get("/api/v1/matches?mode=exact", headers=patient.headers)
    assert error(answer) == (409, "conflict", "Matching is mutual: make your profile discoverable to see matches.")
    assert matches(client, other_patient) == []  # an undiscoverable profile is never found


def test_opt_out_and_withdrawal_take_effect_at_once(
    client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    assert len(matches(client, patient)) == 1
    put_profile(client, other_patient, [HEADACHE], discoverable=False)
    assert matches(client, patient) == []
    put_profile(client, other_patient, [HEADACHE], discoverable=True)
    assert len(matches(client, patient)) == 1
    assert client.delete("/api/v1/profile", headers=other_patient.headers).status_code == 204
    assert matches(client, patient) == []
    assert matches(client, patient, "ranked", threshold="0") == []


def test_another_workers_index_sees_changes_at_once(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    """Each process has its own index: a profile changed through another worker is found, and
    a withdrawal there counts at once here (results are checked against the table)."""
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    with app.test_request_context():
        actor = accounts.resolve(patient.token, utcnow())
        assert actor is not None
        ctx = runtime.matching_context()
        other_worker = ProfileIndex(ctx.tokenizer)
        ctx.index = other_worker
        assert len(matching.find_matches(actor, "exact", ctx=ctx)) == 1
        assert len(other_worker) == 2
        # A withdrawal that this worker's index never heard of, in the same second as the last change.
        db.session.execute(
            update(SymptomProfile).where(SymptomProfile.user_id != actor.user.id).values(discoverable=False)
        )
        db.session.commit()
        assert matching.find_matches(actor, "exact", ctx=ctx) == []
        assert len(other_worker) == 1
        db.session.execute(
            update(SymptomProfile)
            .where(SymptomProfile.user_id != actor.user.id)
            .values(discoverable=True, updated_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
        assert len(matching.find_matches(actor, "exact", ctx=ctx)) == 1


def test_pseudonyms_are_stable_and_name_no_one(client: FlaskClient, patient: Person, other_patient: Person) -> None:
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    seen = pseudonym_seen_by(client, patient)
    put_profile(client, other_patient, [HEADACHE], age_band="18-29")
    assert pseudonym_seen_by(client, patient) == seen
    assert "bob" not in seen and other_patient.id not in seen
    assert pseudonym_seen_by(client, other_patient) != seen


# -- connections, blocks, rate limit --------------------------------------------------------


def test_connect_accept_and_decline(client: FlaskClient, patient: Person, other_patient: Person, carol: Person) -> None:
    for who in (patient, other_patient, carol):
        put_profile(client, who, [HEADACHE])
    bob_name, carol_name = pseudonym(other_patient), pseudonym(carol)
    assert {m["pseudonym"] for m in matches(client, patient)} == {bob_name, carol_name}
    created = client.post(f"/api/v1/matches/{bob_name}/connect", headers=patient.headers)
    assert created.status_code == 201
    connection = created.json["connection"]
    assert connection["peer"] == bob_name and connection["state"] == "pending" and connection["direction"] == "out"
    listed = client.get("/api/v1/connections", headers=other_patient.headers).json["connections"]
    assert [(c["id"], c["state"], c["direction"], c["unread"]) for c in listed] == [
        (connection["id"], "pending", "in", 0)
    ]
    alice_name = listed[0]["peer"]
    assert PSEUDONYM_RE.match(alice_name) and alice_name != bob_name
    match = next(m for m in matches(client, patient) if m["pseudonym"] == bob_name)
    assert match["connection"] == {"id": connection["id"], "state": "pending"}

    accepted = client.post(f"/api/v1/connections/{connection['id']}/accept", headers=other_patient.headers)
    assert accepted.status_code == 200 and accepted.json["connection"]["state"] == "accepted"
    assert accepted.json["connection"]["peer"] == alice_name
    again = client.post(f"/api/v1/matches/{bob_name}/connect", headers=patient.headers)
    assert error(again) == (409, "conflict", "You are already connected.")

    to_carol = client.post(f"/api/v1/matches/{carol_name}/connect", headers=patient.headers).json["connection"]
    declined = client.post(f"/api/v1/connections/{to_carol['id']}/decline", headers=carol.headers)
    assert declined.json["connection"]["state"] == "declined"
    twice = client.post(f"/api/v1/connections/{to_carol['id']}/accept", headers=carol.headers)
    assert error(twice) == (409, "conflict", "This request was already declined.")
    retry = client.post(f"/api/v1/matches/{carol_name}/connect", headers=patient.headers)
    assert error(retry) == (409, "conflict", "This connection request was declined.")


def test_invalid_accept_of_someone_elses_request(
    client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    bob_name = pseudonym_seen_by(client, patient)
    connection = client.post(f"/api/v1/matches/{bob_name}/connect", headers=patient.headers).json["connection"]
    for who in (patient, carol):  # the requester cannot accept their own request; a stranger cannot either
        answer = client.post(f"/api/v1/connections/{connection['id']}/accept", headers=who.headers)
        assert error(answer) == (404, "not_found", "No such connection request for you.")
    answer = client.post("/api/v1/connections/abc/accept", headers=other_patient.headers)
    assert error(answer) == (404, "not_found", "No such connection request for you.")


def test_blocked_patients_never_match_connect_or_see_each_other(
    client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    bob_name = pseudonym_seen_by(client, patient)
    alice_name = pseudonym_seen_by(client, other_patient)
    pending = client.post(f"/api/v1/matches/{alice_name}/connect", headers=other_patient.headers).json["connection"]
    blocked = client.post("/api/v1/blocks", json={"pseudonym": bob_name}, headers=patient.headers)
    assert blocked.status_code == 201 and blocked.json["block"]["pseudonym"] == bob_name
    assert matches(client, patient) == [] and matches(client, other_patient) == []
    assert matches(client, other_patient, "ranked", threshold="0") == []
    assert client.get("/api/v1/connections", headers=patient.headers).json["connections"] == []
    answer = client.post(f"/api/v1/connections/{pending['id']}/accept", headers=patient.headers)
    assert error(answer) == (409, "conflict", "This request was already declined.")  # blocking declined it
    answer = client.post(f"/api/v1/matches/{bob_name}/connect", headers=patient.headers)
    assert error(answer) == (409, "conflict", "You have blocked this patient; unblock them first.")
    answer = client.post(f"/api/v1/matches/{alice_name}/connect", headers=other_patient.headers)
    assert error(answer) == (404, "not_found", "No patient has this pseudonym.")  # no hint of the block
    assert client.get("/api/v1/blocks", headers=patient.headers).json["blocks"][0]["pseudonym"] == bob_name
    answer = client.post("/api/v1/blocks", json={"pseudonym": bob_name}, headers=patient.headers)
    assert error(answer) == (409, "conflict", "You have already blocked this patient.")

    assert client.delete(f"/api/v1/blocks/{bob_name}", headers=patient.headers).status_code == 204
    assert [m["pseudonym"] for m in matches(client, patient)] == [bob_name]
    answer = client.delete(f"/api/v1/blocks/{bob_name}", headers=patient.headers)
    assert error(answer) == (404, "not_found", "You have not blocked this patient.")


def test_connection_requests_are_rate_limited(app: Flask, client: FlaskClient, patient: Person) -> None:
    app.config["CONNECT_RATE_PER_HOUR"] = 2
    put_profile(client, patient, [HEADACHE])
    for n in range(3):
        put_profile(client, make_person(client, "patient", f"peer{n}", f"Peer {n}"), [HEADACHE])
    names = [m["pseudonym"] for m in matches(client, patient)]
    assert len(names) == 3
    for name in names[:2]:
        assert client.post(f"/api/v1/matches/{name}/connect", headers=patient.headers).status_code == 201
    answer = client.post(f"/api/v1/matches/{names[2]}/connect", headers=patient.headers)
    assert error(answer) == (
        429,
        "rate_limited",
        "You can send 2 connection requests an hour; try again later.",
    )


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/profile"),
        ("put", "/api/v1/profile"),
        ("delete", "/api/v1/profile"),
        ("get", "/api/v1/matches"),
        ("get", "/api/v1/symptoms?q=head"),
        ("get", "/api/v1/connections"),
        ("post", "/api/v1/blocks"),
        ("put", "/api/v1/chat/key"),
    ],
)
def test_invalid_doctor_accounts_are_refused(client: FlaskClient, doctor: Person, method: str, path: str) -> None:
    answer = getattr(client, method)(path, json={}, headers=doctor.headers)
    assert error(answer) == (403, "forbidden", "Only patient accounts may do this.")


def test_invalid_without_token(client: FlaskClient) -> None:
    answer = client.get("/api/v1/matches")
    assert error(answer) == (401, "unauthorized", "Sign in first: send `Authorization: Bearer <token>`.")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"terms": []}, "`terms` must be a list of 1-50 HPO term ids."),
        ({"terms": "HP:0002315"}, "`terms` must be a list of 1-50 HPO term ids."),
        ({"terms": ["HP:9999999"]}, "unknown HPO term 'HP:9999999'; choose symptoms from the list."),
        ({"terms": ["HP:0000005"]}, "unknown HPO term 'HP:0000005'; choose symptoms from the list."),
        ({"terms": [HEADACHE], "diagnosis": "ZZZ"}, "unknown ICD-10-CM code 'ZZZ'."),
        ({"terms": [HEADACHE], "diagnosis": 45}, "`diagnosis` must be an ICD-10-CM code or null."),
        (
            {"terms": [HEADACHE], "age_band": "40"},
            "`age_band` must be null or one of 0-17, 18-29, 30-44, 45-59, 60-74, 75+.",
        ),
        ({"terms": [HEADACHE], "sex": "f"}, "`sex` must be null or one of female, male, other."),
        ({"terms": [HEADACHE], "discoverable": "yes"}, "`discoverable` must be true or false."),
    ],
)
def test_invalid_profile(client: FlaskClient, patient: Person, body: dict[str, Any], message: str) -> None:
    answer = client.put("/api/v1/profile", json=body, headers=patient.headers)
    assert error(answer) == (422, "validation_failed", message)
    assert client.get("/api/v1/profile", headers=patient.headers).json == {"profile": None}


def test_invalid_profile_body_not_json(client: FlaskClient, patient: Person) -> None:
    answer = client.put("/api/v1/profile", data="terms", headers=patient.headers)
    assert error(answer) == (400, "invalid_json", "Send a JSON object with `Content-Type: application/json`.")


def test_invalid_match_queries(client: FlaskClient, patient: Person) -> None:
    put_profile(client, patient, [HEADACHE])
    answer = client.get("/api/v1/matches?mode=fuzzy", headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "`mode` must be exact or ranked.")
    for bad in ("2", "-0.1", "half"):
        answer = client.get(f"/api/v1/matches?mode=ranked&threshold={bad}", headers=patient.headers)
        assert error(answer) == (422, "validation_failed", "`threshold` must be a number from 0 to 1.")
    answer = client.get("/api/v1/symptoms?q=head&limit=500", headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "`limit` must be a whole number from 1 to 50.")


def test_invalid_connect_and_block_targets(client: FlaskClient, patient: Person, other_patient: Person) -> None:
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    alice_name = pseudonym_seen_by(client, other_patient)
    answer = client.post(f"/api/v1/matches/{alice_name}/connect", headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "You cannot connect to yourself.")
    answer = client.post("/api/v1/matches/no-such-name-0000/connect", headers=patient.headers)
    assert error(answer) == (404, "not_found", "No patient has this pseudonym.")
    answer = client.post("/api/v1/blocks", json={"pseudonym": alice_name}, headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "You cannot block yourself.")
    answer = client.post("/api/v1/blocks", json={"pseudonym": 7}, headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "`pseudonym` must be a patient's pseudonym.")
    answer = client.delete("/api/v1/profile", headers=patient.headers)
    assert answer.status_code == 204
    answer = client.delete("/api/v1/profile", headers=patient.headers)
    assert error(answer) == (404, "not_found", "You have no symptom profile.")


# -- nothing in clear -----------------------------------------------------------------------


def test_no_symptom_in_clear_anywhere_in_the_database(
    client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    vocabulary = load_vocabulary()
    profiles = [
        (patient, [HEADACHE, NAUSEA, FATIGUE], "J45.909"),
        (other_patient, [HEADACHE, NAUSEA, FATIGUE], "G43.909"),
        (carol, [ASTHMA, CLUSTER_HEADACHE], None),
    ]
    for who, terms, diagnosis in profiles:
        put_profile(client, who, terms, diagnosis=diagnosis, age_band="45-59", sex="other")
    assert len(matches(client, patient)) == 1  # the profiles are live and matching works
    bob_name = pseudonym_seen_by(client, patient)
    client.post(f"/api/v1/matches/{bob_name}/connect", headers=patient.headers)
    dump = dump_database()
    assert dump  # every table and column, as bytes
    assert not re.search(rb"HP:\d{7}", dump)
    needles: list[str] = []
    for _, terms, diagnosis in profiles:
        needles += [t for t in terms] + [t.replace("HP:", "") for t in terms]
        needles += [vocabulary.symptom(t).name for t in terms]
        if diagnosis:
            needles += [diagnosis, diagnosis.replace(".", ""), vocabulary.diagnosis(diagnosis).description]
    for needle in needles:
        assert needle.encode() not in dump, needle
        assert needle.lower().encode() not in dump.lower(), needle
