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
from sqlalchemy.exc import IntegrityError

from core.clinical import load_vocabulary
from portal import demo, runtime
from portal.extensions import db
from portal.models import Connection, RateEvent, SymptomProfile, utcnow
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
    assert answer.json["symptoms"][0] == {"id": HEADACHE, "name": "Headache", "matched": None}
    assert len(answer.json["symptoms"]) == 5
    assert client.get("/api/v1/symptoms?q=", headers=patient.headers).json == {"symptoms": []}


def test_diagnosis_lookup_by_code(client: FlaskClient, patient: Person) -> None:
    answer = client.get("/api/v1/diagnoses?q=j45.909", headers=patient.headers)
    assert answer.json["diagnoses"] == [{"code": "J45.909", "description": "Unspecified asthma, uncomplicated"}]
    assert client.get("/api/v1/diagnoses?q=qwertyuiop", headers=patient.headers).json == {"diagnoses": []}


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
    assert match["similar"] is False
    assert match["shared"] == [{"id": HEADACHE, "name": "Headache"}, {"id": NAUSEA, "name": "Nausea"}]
    assert match["connection"] is None
    assert set(match) == {"pseudonym", "similar", "shared", "connection"}  # nothing else about bob, no score
    assert matches(client, carol, "exact") == []


def test_ranked_mode_orders_by_similarity_above_threshold(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    app.config["MATCH_THRESHOLD"] = 0.0
    put_profile(client, patient, [HEADACHE, NAUSEA], age_band="30-44", sex="female")
    put_profile(client, other_patient, [HEADACHE, NAUSEA], age_band="30-44", sex="female")
    put_profile(client, carol, [CLUSTER_HEADACHE, FATIGUE], age_band="60-74", sex="male")
    everyone = matches(client, patient, "ranked", threshold="0")
    assert [m["pseudonym"] for m in everyone] == [pseudonym(other_patient), pseudonym(carol)]  # best first
    best, other = everyone
    assert all(set(m) == {"pseudonym", "similar", "shared", "connection"} and m["similar"] for m in everyone)
    assert best["shared"] == [{"id": HEADACHE, "name": "Headache"}, {"id": NAUSEA, "name": "Nausea"}]
    assert other["shared"] == []  # related symptoms (a kind of headache) score, but only same terms are shown
    assert [m["pseudonym"] for m in matches(client, patient, "ranked", threshold="0.99")] == [best["pseudonym"]]


def test_invalid_threshold_below_the_node_floor_is_raised_to_it(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    """A low threshold would list weak matches, whose presence tells about their attributes."""
    app.config["MATCH_THRESHOLD"] = 0.99
    put_profile(client, patient, [HEADACHE, NAUSEA], age_band="30-44", sex="female")
    put_profile(client, other_patient, [HEADACHE, NAUSEA], age_band="30-44", sex="female")
    put_profile(client, carol, [CLUSTER_HEADACHE, FATIGUE], age_band="60-74", sex="male")
    found = matches(client, patient, "ranked", threshold="0")
    assert [m["pseudonym"] for m in found] == [pseudonym(other_patient)]


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
        assert len(matching.find_matches(actor, "exact", ctx=ctx, now=utcnow())) == 1
        assert len(other_worker) == 2
        # A withdrawal that this worker's index never heard of, in the same second as the last change.
        db.session.execute(
            update(SymptomProfile).where(SymptomProfile.user_id != actor.user.id).values(discoverable=False)
        )
        db.session.commit()
        assert matching.find_matches(actor, "exact", ctx=ctx, now=utcnow()) == []
        assert len(other_worker) == 1
        db.session.execute(
            update(SymptomProfile)
            .where(SymptomProfile.user_id != actor.user.id)
            .values(discoverable=True, updated_at=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()
        assert len(matching.find_matches(actor, "exact", ctx=ctx, now=utcnow())) == 1


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
    assert error(answer) == (404, "not_found", "No such match.")
    answer = client.post(f"/api/v1/matches/{alice_name}/connect", headers=other_patient.headers)
    assert error(answer) == (404, "not_found", "No such match.")  # no hint of the block
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
    # A well-formed body: the schema checks a body's shape before the view asks who is calling.
    body = {"/api/v1/profile": {"terms": [HEADACHE]}, "/api/v1/blocks": {"pseudonym": "x"}}.get(path, {"key": "x"})
    answer = getattr(client, method)(path, json=body, headers=doctor.headers)
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
    assert answer.json["error"]["fields"] == {"mode": "`mode` must be exact or ranked."}
    for bad in ("2", "-0.1", "half"):
        answer = client.get(f"/api/v1/matches?mode=ranked&threshold={bad}", headers=patient.headers)
        assert error(answer) == (422, "validation_failed", "`threshold` must be a number from 0 to 1.")
    answer = client.get("/api/v1/symptoms?q=head&limit=500", headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "`limit` must be a whole number from 1 to 50.")


def test_invalid_shapes_name_each_field(client: FlaskClient, patient: Person) -> None:
    """The schemas refuse unknown fields and query parameters, and say which field is wrong."""
    body = {"terms": [HEADACHE, 7], "sex": "f", "score": 1}
    answer = client.put("/api/v1/profile", json=body, headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "Some fields are not valid: `score`, `sex`, `terms.1`.")
    assert answer.json["error"]["fields"] == {
        "score": "Unknown field.",
        "sex": "`sex` must be null or one of female, male, other.",
        "terms.1": "`terms` must be a list of 1-50 HPO term ids.",
    }
    answer = client.get("/api/v1/matches?mode=exact&sort=score", headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "`sort`: Unknown field.")
    answer = client.post("/api/v1/blocks", json={}, headers=patient.headers)
    assert answer.json["error"]["fields"] == {"pseudonym": "`pseudonym` must be a patient's pseudonym."}
    assert client.get("/api/v1/profile", headers=patient.headers).json == {"profile": None}
    assert client.get("/api/v1/symptoms?q=headache&limit=", headers=patient.headers).status_code == 200  # default


def test_invalid_connect_and_block_targets(client: FlaskClient, patient: Person, other_patient: Person) -> None:
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    alice_name = pseudonym_seen_by(client, other_patient)
    answer = client.post(f"/api/v1/matches/{alice_name}/connect", headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "You cannot connect to yourself.")
    answer = client.post("/api/v1/matches/no-such-name-0000/connect", headers=patient.headers)
    assert error(answer) == (404, "not_found", "No such match.")
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


# -- round 2: no probing, one connection per pair, races ----------------------------------


def test_invalid_connect_to_someone_not_a_current_match(
    client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    """Unknown, not similar, withdrawn: one answer, so a pseudonym tells nothing more."""
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    put_profile(client, carol, [ASTHMA])
    no_match = (404, "not_found", "No such match.")
    for name in ("no-such-name-0000", pseudonym(carol)):
        assert error(client.post(f"/api/v1/matches/{name}/connect", headers=patient.headers)) == no_match
    put_profile(client, other_patient, [HEADACHE], discoverable=False)
    answer = client.post(f"/api/v1/matches/{pseudonym(other_patient)}/connect", headers=patient.headers)
    assert error(answer) == no_match


def test_invalid_connect_rate_limit_comes_first(
    app: Flask, client: FlaskClient, patient: Person, other_patient: Person
) -> None:
    """Every attempt counts, so guessing pseudonyms is as slow as asking."""
    app.config["CONNECT_RATE_PER_HOUR"] = 1
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    answer = client.post("/api/v1/matches/no-such-name-0000/connect", headers=patient.headers)
    assert error(answer)[0] == 404
    answer = client.post(f"/api/v1/matches/{pseudonym(other_patient)}/connect", headers=patient.headers)
    assert error(answer) == (429, "rate_limited", "You can send 1 connection requests an hour; try again later.")


UNKNOWN_TERM = {"terms": ["HP:9999999"]}  # well-formed, so the service refuses it (and counts it)


@pytest.mark.parametrize(
    ("setting", "method", "path", "body", "message"),
    [
        ("PROFILE_RATE_PER_HOUR", "put", "/api/v1/profile", UNKNOWN_TERM, "You can save your profile 2 times an hour."),
        ("MATCH_RATE_PER_HOUR", "get", "/api/v1/matches", None, "You can look for matches 2 times an hour."),
        ("BLOCK_RATE_PER_HOUR", "post", "/api/v1/blocks", {"pseudonym": "x"}, "You can block 2 patients an hour."),
        ("CHAT_KEY_RATE_PER_HOUR", "put", "/api/v1/chat/key", {"key": "x"}, "You can register 2 chat keys an hour."),
    ],
)  # fmt: skip
def test_invalid_too_many_requests(
    app: Flask,
    client: FlaskClient,
    patient: Person,
    setting: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    message: str,
) -> None:
    if setting != "PROFILE_RATE_PER_HOUR":
        put_profile(client, patient, [HEADACHE])
    app.config[setting] = 2
    for _ in range(2):  # failed attempts count as well
        assert getattr(client, method)(path, json=body, headers=patient.headers).status_code != 429
    answer = getattr(client, method)(path, json=body, headers=patient.headers)
    assert error(answer) == (429, "rate_limited", message)


def test_rate_limit_window_is_an_hour(app: Flask, client: FlaskClient, patient: Person) -> None:
    app.config["MATCH_RATE_PER_HOUR"] = 1
    put_profile(client, patient, [HEADACHE])
    assert matches(client, patient) == []
    assert client.get("/api/v1/matches", headers=patient.headers).status_code == 429
    db.session.execute(update(RateEvent).values(at=utcnow() - timedelta(hours=1, seconds=1)))
    db.session.commit()
    assert matches(client, patient) == []


def test_invalid_block_of_a_stranger(
    client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    """Only someone met through matching or a request can be blocked: others look unknown."""
    put_profile(client, patient, [HEADACHE])
    put_profile(client, carol, [ASTHMA])
    for name in (pseudonym(carol), "no-such-name-0000"):
        answer = client.post("/api/v1/blocks", json={"pseudonym": name}, headers=patient.headers)
        assert error(answer) == (404, "not_found", "No patient has this pseudonym.")
    answer = client.delete(f"/api/v1/blocks/{pseudonym(carol)}", headers=patient.headers)
    assert error(answer) == (404, "not_found", "You have not blocked this patient.")
    answer = client.delete("/api/v1/blocks/no-such-name-0000", headers=patient.headers)
    assert error(answer) == (404, "not_found", "You have not blocked this patient.")
    put_profile(client, other_patient, [HEADACHE])
    answer = client.post("/api/v1/blocks", json={"pseudonym": pseudonym(other_patient)}, headers=patient.headers)
    assert answer.status_code == 201


def test_invalid_second_connection_for_a_pair(
    client: FlaskClient, patient: Person, other_patient: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ask at the same moment: the database keeps one connection, the second gets 409."""
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    first = client.post(f"/api/v1/matches/{pseudonym(other_patient)}/connect", headers=patient.headers)
    assert first.status_code == 201
    real = matching._existing_conflict
    calls: list[int] = []

    def missed_it(user: Any, target: Any) -> Any:  # the check ran before the other insert committed
        calls.append(1)
        return None if len(calls) == 1 else real(user, target)

    monkeypatch.setattr(matching, "_existing_conflict", missed_it)
    answer = client.post(f"/api/v1/matches/{pseudonym(patient)}/connect", headers=other_patient.headers)
    assert error(answer) == (409, "conflict", "A connection request between you is already pending.")
    assert db.session.query(Connection).count() == 1
    with pytest.raises(IntegrityError):
        db.session.add(Connection(requester_id=1, addressee_id=2, low_user_id=1, high_user_id=2, state="pending"))
        db.session.add(Connection(requester_id=2, addressee_id=1, low_user_id=1, high_user_id=2, state="pending"))
        db.session.commit()
    db.session.rollback()


def test_profile_and_block_races_answer_cleanly(
    client: FlaskClient, patient: Person, other_patient: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_profile(client, patient, [HEADACHE])
    put_profile(client, other_patient, [HEADACHE])
    real_row = matching._row
    rows: list[int] = []

    def row_not_yet_seen(user: Any) -> Any:  # another request created the row just after this one looked
        rows.append(1)
        return None if len(rows) == 1 else real_row(user)

    monkeypatch.setattr(matching, "_row", row_not_yet_seen)
    saved = put_profile(client, patient, [HEADACHE], age_band="18-29")
    assert saved["age_band"] == "18-29" and len(rows) == 2  # the second attempt updated the row
    assert db.session.query(SymptomProfile).count() == 2
    monkeypatch.setattr(matching, "_row", real_row)

    name = pseudonym(other_patient)
    assert client.post("/api/v1/blocks", json={"pseudonym": name}, headers=patient.headers).status_code == 201
    # A second block sent at the same moment: both passed the checks before either was stored.
    monkeypatch.setattr(matching, "_has_blocked", lambda user, target: False)
    monkeypatch.setattr(matching, "_known_to", lambda user, target, ctx: True)
    answer = client.post("/api/v1/blocks", json={"pseudonym": name}, headers=patient.headers)
    assert error(answer) == (409, "conflict", "You have already blocked this patient.")


@pytest.mark.parametrize(
    "bad", ["99999999999999999999", "9223372036854775808", "9223372036854775807", "2147483648", "²", "0", "-1"]
)
def test_invalid_connection_ids(client: FlaskClient, patient: Person, bad: str) -> None:
    answer = client.post(f"/api/v1/connections/{bad}/accept", headers=patient.headers)
    assert error(answer) == (404, "not_found", "No such connection request for you.")


def test_invalid_limit_not_ascii_digits(client: FlaskClient, patient: Person) -> None:
    answer = client.get("/api/v1/symptoms?q=head&limit=²", headers=patient.headers)
    assert error(answer) == (422, "validation_failed", "`limit` must be a whole number from 1 to 50.")


def test_the_demo_profiles_match_as_the_readme_says(
    client: FlaskClient, patient: Person, other_patient: Person, carol: Person
) -> None:
    """README: Alice and Carol share their symptoms exactly; Bob is similar to both."""
    profiles = dict(demo.PROFILES)
    alice, bob = patient, other_patient  # the fixtures' usernames are alice and bob
    for who, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        fields = {k: v for k, v in profiles[name].items() if k != "terms"}
        put_profile(client, who, profiles[name]["terms"], **fields)
    assert [m["pseudonym"] for m in matches(client, alice)] == [pseudonym(carol)]
    assert {m["pseudonym"] for m in matches(client, alice, "ranked")} == {pseudonym(carol), pseudonym(bob)}
    assert {m["pseudonym"] for m in matches(client, carol, "ranked")} == {pseudonym(alice), pseudonym(bob)}
    assert matches(client, bob) == []
