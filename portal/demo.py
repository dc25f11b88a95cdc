"""Demo data for `make run` (development only): accounts, records, and blocks holding them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select

from portal import runtime
from portal.extensions import db
from portal.models import User, utcnow
from portal.services import accounts, grants, ledger, matching, records
from portal.services.records import CATEGORIES

PASSWORD = "demo-password-1"  # noqa: S105 (demo accounts, development only)
USERS = [
    ("admin", "admin", "Hospital Admin", None, None),
    ("doctor", "dr.osei", "Dr. Ama Osei", "St. Mary's Hospital", "GMC-104233"),
    ("doctor", "dr.lindqvist", "Dr. Erik Lindqvist", "Riverside General", "GMC-208871"),
    ("patient", "alice", "Alice Moreau", None, None),
    ("patient", "bob", "Bob Tanaka", None, None),
    ("patient", "carol", "Carol Diaz", None, None),
    # Another self-registered Alice Moreau: her date of birth tells her apart, and she is not verified.
    ("patient", "alice.moreau", "Alice Moreau", None, None),
]
BORN = {"alice": "1984-03-21", "bob": "1979-11-02", "carol": "1962-07-14", "alice.moreau": "1991-09-30"}
# Patients the front desk of this hospital has seen in person, with their hospital numbers.
VERIFIED = {"alice": "SM-104233", "bob": "SM-208871", "carol": "SM-311920"}
RECORDS = [
    ("dr.osei", "alice", {
        "title": "Asthma review", "category": "respiratory", "diagnoses": ["J45.909"],
        "symptoms": ["HP:0002094", "HP:0012735"],
        "notes": "Wheeze on exertion, improved since last visit.\nPeak flow 420 L/min.",
        "prescriptions": [
            {"drug": "Salbutamol inhaler", "dose": "100 mcg", "frequency": "as needed", "duration": "90 days"}
        ],
    }),
    ("dr.osei", "bob", {
        "title": "Hypertension follow-up", "category": "cardiology", "diagnoses": ["I10"],
        "symptoms": ["HP:0002315"], "notes": "BP 148/92. Continue current medication.",
        "prescriptions": [{"drug": "Amlodipine", "dose": "5 mg", "frequency": "once daily", "duration": "6 months"}],
    }),
    ("dr.lindqvist", "alice", {
        "title": "Migraine consultation", "category": "neurology", "diagnoses": ["G43.909"],
        "symptoms": ["HP:0002076", "HP:0002315"], "notes": "Episodic migraine without aura, 2-3 a month.",
        "prescriptions": [],
    }),
    ("dr.lindqvist", "carol", {
        "title": "Type 2 diabetes check", "category": "general", "diagnoses": ["E11.9"],
        "symptoms": ["HP:0001959"], "notes": "HbA1c 7.1%. Diet advice given.",
        "prescriptions": [{"drug": "Metformin", "dose": "500 mg", "frequency": "twice daily", "duration": "3 months"}],
    }),
]  # fmt: skip
MIGRAINE, HEADACHE, COUGH = "HP:0002076", "HP:0002315", "HP:0012735"
PROFILES = [
    ("alice", {"terms": [MIGRAINE, HEADACHE], "age_band": "30-44", "sex": "female", "discoverable": True}),
    ("carol", {"terms": [MIGRAINE, HEADACHE], "age_band": "45-59", "sex": "female", "discoverable": True}),
    ("bob", {"terms": [MIGRAINE, HEADACHE, COUGH], "age_band": "30-44", "sex": "male", "discoverable": True}),
]


def seed() -> str:
    """Create the demo accounts and records unless present; returns the logins to print."""
    logins = "\n".join(f"  {role:8} {username:14} {PASSWORD}" for role, username, *_ in USERS)
    message = f"Demo logins (password for all: {PASSWORD}):\n{logins}"
    key = runtime.node_key()
    runtime.ensure_chain(utcnow())
    if db.session.scalar(select(User.id).where(User.username == "admin")) is not None:
        return "demo data already present\n" + message
    kdf = runtime.kdf()
    for role, username, name, hospital, licence in USERS:
        accounts.create_user(
            role=role, username=username, password=PASSWORD, display_name=name,
            hospital=hospital, licence_number=licence, kdf=kdf, home=runtime.node_key(), now=utcnow(),
            date_of_birth=BORN.get(username),
        )  # fmt: skip
    desk = db.session.scalar(select(User).where(User.username == "admin"))
    for username, mrn in VERIFIED.items():
        accounts.verify_in_person(desk, _public_id(username), mrn, utcnow())
    ledger.seal_pending(key)
    node = runtime.node()
    for author, patient, fields in RECORDS:
        with _signed_in(author) as actor:
            records.create_record(
                actor, _public_id(patient), fields, [], vocabulary=runtime.vocabulary(), limits=runtime.limits(),
                node=node, now=utcnow(),
            )  # fmt: skip
        ledger.seal_pending(key)
    # Access: Bob has granted Dr. Lindqvist his history; Dr. Osei waits for Alice's answer;
    # Carol has opted in to emergency access.
    with _signed_in("bob") as bob:
        grants.create_grant(bob, _public_id("dr.lindqvist"), 30, None, node=node, categories=CATEGORIES, now=utcnow())
    with _signed_in("dr.osei") as osei:
        grants.request_access(
            osei, _public_id("alice"), "Follow-up of your asthma and migraine care", 14,
            {"type": "categories", "categories": ["neurology", "respiratory"]},
            node=node, categories=CATEGORIES, now=utcnow(),
        )  # fmt: skip
    with _signed_in("carol") as carol:
        grants.set_emergency_optin(carol, True, node=node, now=utcnow())
    # Matching: Alice and Carol share their symptoms exactly; Bob is similar to both.
    ctx = runtime.matching_context()
    for username, profile in PROFILES:
        with _signed_in(username) as actor:
            matching.put_profile(actor, profile, ctx=ctx, now=utcnow())
    ledger.seal_pending(key)
    return "demo data loaded\n" + message


def _public_id(username: str) -> str:
    return db.session.scalar(select(User.public_id).where(User.username == username)) or ""


@contextmanager
def _signed_in(username: str) -> Iterator[accounts.Actor]:
    """A short session for a demo account, ended afterwards."""
    token = accounts.login(username, PASSWORD, kind="api", ttl_seconds=60, kdf=runtime.kdf(), now=utcnow()).token
    actor = accounts.resolve(token, utcnow())
    if actor is None:
        raise RuntimeError("demo login failed")
    try:
        yield actor
    finally:
        accounts.logout(token)
