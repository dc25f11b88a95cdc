"""Patient-controlled access: requests, grants, revocation, emergency opt-in and break-glass.

Every decision is a signed transaction on the ledger carrying no name, reason or
record text: grants and revocations are signed by the patient, declared
emergencies by the doctor. Reasons are sealed notes for the people concerned.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import selectinload

from core.crypto import open_note, seal_note
from core.encoding import b64e, canonical, decode_canonical
from core.errors import CoreError
from core.ledger import sign_transaction
from portal.extensions import db
from portal.models import AccessRequest, EmergencyAccess, Grant, Record, User, epoch_ms
from portal.services import federation, ledger, paging, proxy
from portal.services.accounts import Actor, get_user, published_keys
from portal.services.context import NodeContext
from portal.services.errors import Conflict, Forbidden, NotFound, ValidationFailed
from portal.services.scopes import covers, describe_scope, parse_scope, salted_scope, within

FAR_FUTURE_DAYS = 3650  # an emergency opt-in lasts until the patient opts out
MAX_REASON = 2000


@dataclass(frozen=True)
class Access:
    """Why an actor may open a record: as its patient, its author, under a grant or an emergency."""

    mode: str
    grant: Grant | None = None
    emergency: EmergencyAccess | None = None

    @property
    def grant_ref(self) -> str | None:
        return self.emergency.id if self.emergency else self.grant.id if self.grant else None


def grant_scope(grant: Grant) -> dict[str, Any]:
    """The scope of a grant this node knows the scope of (see `Grant.scope`); all records for
    an emergency opt-in."""
    if grant.scope is None:
        raise Forbidden("This hospital cannot see the scope of that grant.")
    return salted_scope(grant.scope)


def _days(value: object, node: NodeContext) -> int:
    if value is None:
        return node.default_grant_days
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= node.max_grant_days:
        raise ValidationFailed(f"`days` must be a whole number from 1 to {node.max_grant_days}.")
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed("A reason is required.")
    if len(value) > MAX_REASON:
        raise ValidationFailed(f"The reason is longer than {MAX_REASON} characters.")
    return value.strip()


# -- requests -------------------------------------------------------------------------------


def request_access(
    actor: Actor, patient_id: object, reason: object, days: object, scope: object, *, node: NodeContext,
    categories: tuple[str, ...], now: datetime,
) -> AccessRequest:  # fmt: skip
    """A doctor asks a patient for access; the reason is sealed for the patient and the doctor."""
    if actor.user.role != "doctor":
        raise Forbidden("Only doctors request access.")
    patient = get_user(patient_id, role="patient")
    pending = db.session.scalar(
        select(AccessRequest.id).where(
            AccessRequest.doctor_id == actor.user.id,
            AccessRequest.patient_id == patient.id,
            AccessRequest.status == "pending",
        )
    )
    if pending is not None:
        raise Conflict(f"You already have a pending request to {patient.display_name}.")
    request_id = str(uuid.uuid4())
    asked = {"reason": _reason(reason), "scope": parse_scope(scope, categories), "days": _days(days, node)}
    note = seal_note(
        canonical(asked).decode(),
        request_id,
        {"patient": published_keys(patient).umbral, "doctor": actor.user.umbral_public_key},
    )
    payload = {"request": request_id, "patient": patient.public_id, "note": b64e(note)}
    tx = sign_transaction("request", payload, actor.keys(), epoch_ms(now))
    ledger.queue(tx, now)
    request = AccessRequest(
        id=request_id, doctor=actor.user, patient=patient, sealed_reason=note, created_at=now, tx_hash=tx.hash
    )
    db.session.add(request)
    db.session.commit()
    return request


def _requests_of(actor: Actor) -> Select[tuple[AccessRequest]]:
    column = {"patient": AccessRequest.patient_id, "doctor": AccessRequest.doctor_id}.get(actor.user.role)
    if column is None:
        raise Forbidden("Only patients and doctors have access requests.")
    return (
        select(AccessRequest)
        .where(column == actor.user.id)
        .order_by(AccessRequest.created_at.desc(), AccessRequest.id.desc())
        .options(selectinload(AccessRequest.doctor), selectinload(AccessRequest.patient))
    )


def list_requests(actor: Actor) -> list[AccessRequest]:
    """A patient's requests to them, or a doctor's own, newest first."""
    return list(db.session.scalars(_requests_of(actor)))


def page_requests(actor: Actor, limit: int, offset: int) -> paging.Page[AccessRequest]:
    """A page of `list_requests`, counted and cut in SQL."""
    return paging.paged(_requests_of(actor), limit, offset)


@dataclass(frozen=True)
class Asked:
    """What a request asks for, as only its patient and doctor can read it."""

    reason: str
    scope: dict[str, Any]
    days: int


def request_details(actor: Actor, request: AccessRequest) -> Asked | None:
    """The sealed reason, scope and duration, opened with the actor's own key; None if the note
    does not open (then the request cannot be approved)."""
    label = "patient" if actor.user.id == request.patient_id else "doctor"
    try:
        text = open_note(request.sealed_reason, request.id, label, actor.keys().umbral_secret)
        asked = decode_canonical(text.encode())
        return Asked(asked["reason"], asked["scope"], int(asked["days"]))
    except (CoreError, KeyError, TypeError, ValueError):
        return None


def _own_pending_request(actor: Actor, request_id: object) -> AccessRequest:
    request = db.session.get(AccessRequest, request_id) if isinstance(request_id, str) else None
    if request is None or request.patient_id != actor.user.id:
        raise NotFound("No such access request.")
    if request.status != "pending":
        raise Conflict(f"This request was already {request.status}.")
    return request


def approve_request(
    actor: Actor, request_id: object, *, node: NodeContext, now: datetime,
    days: object = None, scope: object = None, categories: tuple[str, ...] = (),
) -> Grant:  # fmt: skip
    """The patient approves: a grant as requested, or narrower (`scope` inside the one asked,
    `days` at most as many as asked); never wider than the doctor asked."""
    request = _own_pending_request(actor, request_id)
    asked = request_details(actor, request)
    if asked is None:
        raise Conflict("This request's details could not be opened, so it cannot be approved; decline it.")
    given_days = asked.days if days is None else _days(days, node)
    if given_days > asked.days:
        raise ValidationFailed(f"`days` must not be more than the {asked.days} asked for.")
    given_scope = asked.scope if scope is None else parse_scope(scope, categories)
    if not within(given_scope, asked.scope):
        raise ValidationFailed(f"`scope` must be within what was asked for: {describe_scope(asked.scope)}.")
    grant = _create_grant(actor, request.doctor, given_scope, given_days, node=node, now=now, request=request)
    request.status, request.decided_at, request.grant_id = "approved", now, grant.id
    request.decision_tx_hash = grant.tx_hash
    db.session.commit()
    return grant


def decline_request(actor: Actor, request_id: object, *, now: datetime) -> AccessRequest:
    """The patient declines; the decline is signed onto the ledger."""
    request = _own_pending_request(actor, request_id)
    tx = sign_transaction("decline", {"request": request.id}, actor.keys(), epoch_ms(now))
    ledger.queue(tx, now)
    request.status, request.decided_at, request.decision_tx_hash = "declined", now, tx.hash
    db.session.commit()
    return request


# -- grants ---------------------------------------------------------------------------------


def _create_grant(
    actor: Actor, doctor: User | None, scope: dict[str, Any], days: int, *, node: NodeContext, now: datetime,
    request: AccessRequest | None = None, hospital: tuple[str, bytes] | None = None,
) -> Grant:  # fmt: skip
    """Key fragments to the doctor (or, for an emergency opt-in, to `hospital`'s emergency key:
    its node id and key), sealed to the proxies; a grant signed by the patient. Commits nothing:
    the caller's use case does."""
    keys = actor.keys()
    if doctor is not None:
        receiver, receiver_home, hospital_node = published_keys(doctor).umbral, doctor.home_node, None
    elif hospital is not None:
        hospital_node, receiver = hospital
        receiver_home = hospital_node
    else:
        raise ValueError("a grant is to a doctor or to a hospital's emergency key")
    grant = Grant(
        id=str(uuid.uuid4()),
        patient=actor.user,
        doctor=doctor,
        emergency=doctor is None,
        hospital_node=hospital_node,
        scope=canonical({"salt": os.urandom(16).hex(), "scope": scope}).decode(),
        created_at=now,
        expires_at=now + timedelta(days=days),
    )
    commitment, sealed = proxy.share_out(grant, keys, receiver, receiver_home, node)
    payload = {
        "grant": grant.id,
        "grantee": doctor.public_id if doctor else None,
        "hospital": hospital_node,
        "scope": hashlib.sha256(grant.scope.encode()).hexdigest(),
        "expires": epoch_ms(grant.expires_at),
        "fragments": commitment,
        "emergency": doctor is None,
        "request": request.id if request else None,
        "sealed": sealed,
    }
    tx = sign_transaction("grant", payload, keys, epoch_ms(now))
    ledger.queue(tx, now)
    grant.tx_hash = tx.hash
    db.session.add(grant)
    db.session.flush()
    federation.take_package(grant, sealed)
    return grant


def create_grant(
    actor: Actor, doctor_id: object, days: object, scope: object, *, node: NodeContext, categories: tuple[str, ...],
    now: datetime,
) -> Grant:  # fmt: skip
    """A patient grants a doctor access without a request."""
    if actor.user.role != "patient":
        raise Forbidden("Only patients grant access to their records.")
    doctor = get_user(doctor_id, role="doctor")
    grant = _create_grant(actor, doctor, parse_scope(scope, categories), _days(days, node), node=node, now=now)
    db.session.commit()
    return grant


def _grants_of(actor: Actor) -> Select[tuple[Grant]]:
    if actor.user.role == "patient":
        where = (Grant.patient_id == actor.user.id) & ~Grant.emergency
    elif actor.user.role == "doctor":
        where = Grant.doctor_id == actor.user.id
    else:
        raise Forbidden("Only patients and doctors have grants.")
    return (
        select(Grant)
        .where(where)
        .order_by(Grant.created_at.desc(), Grant.id.desc())
        .options(selectinload(Grant.doctor), selectinload(Grant.patient))
    )


def list_grants(actor: Actor, include_ended: bool = True) -> list[Grant]:
    """A patient's grants to doctors, or the grants a doctor holds, newest first."""
    query = _grants_of(actor)
    return list(db.session.scalars(query if include_ended else query.where(Grant.revoked_at.is_(None))))


def page_grants(actor: Actor, limit: int, offset: int) -> paging.Page[Grant]:
    """A page of `list_grants` (revoked and expired ones included), counted and cut in SQL."""
    return paging.paged(_grants_of(actor), limit, offset)


def grant_status(grant: Grant, now: datetime) -> str:
    if grant.revoked_at is not None:
        return "revoked"
    return "expired" if grant.expires_at <= now else "active"


def revoke_grant(actor: Actor, grant_id: object, *, now: datetime) -> Grant:
    """Revocation takes effect at once: the proxy's key fragments are destroyed and later reads
    are refused. What was already read cannot be taken back."""
    grant = db.session.get(Grant, grant_id) if isinstance(grant_id, str) else None
    if grant is None or grant.patient_id != actor.user.id:
        raise NotFound("No such grant.")
    if grant.revoked_at is not None:
        raise Conflict("This grant is already revoked.")
    federation.destroy_fragments(grant.id)
    tx = sign_transaction("revoke", {"grant": grant.id}, actor.keys(), epoch_ms(now))
    ledger.queue(tx, now)
    grant.revoked_at, grant.revoke_tx_hash = now, tx.hash
    db.session.commit()
    return grant


# -- emergency access -----------------------------------------------------------------------


def _live_optins(patient: User, now: datetime) -> list[Grant]:
    return list(
        db.session.scalars(
            select(Grant).where(
                Grant.patient_id == patient.id, Grant.emergency, Grant.revoked_at.is_(None), Grant.expires_at > now
            )
        )
    )


def emergency_optin(patient: User, now: datetime, hospital: str | None = None) -> Grant | None:
    """The patient's live emergency opt-in: the one for `hospital` (a node id), or any."""
    live = [g for g in _live_optins(patient, now) if hospital is None or g.hospital_node == hospital]
    return live[0] if live else None


def set_emergency_optin(actor: Actor, enabled: object, *, node: NodeContext, now: datetime) -> Grant | None:
    """Opt in or out. Opting in makes one grant per member hospital, each to that hospital's
    emergency key and split over the proxies like any grant, so a doctor of any hospital can
    break the glass (a hospital that joined later is added by opting in again); opting out
    revokes them all."""
    if actor.user.role != "patient":
        raise Forbidden("Only patients opt in to emergency access.")
    if not isinstance(enabled, bool):
        raise ValidationFailed("`enabled` must be true or false.")
    live = _live_optins(actor.user, now)
    if enabled:
        covered = {g.hospital_node for g in live}
        for hospital in federation.member_emergency_keys(node.node_id, node.emergency_key().public).items():
            if hospital[0] not in covered:
                _create_grant(actor, None, {"type": "all"}, FAR_FUTURE_DAYS, node=node, now=now, hospital=hospital)
        db.session.commit()
        return emergency_optin(actor.user, now, node.node_id)
    for grant in live:
        revoke_grant(actor, grant.id, now=now)
    return None


def declare_emergency(
    actor: Actor, patient_id: object, reason: object, *, node: NodeContext, now: datetime
) -> EmergencyAccess:
    """Break-glass: a short access for a doctor, with a written reason, shown to the patient at once,
    queued for an admin's review and recorded on the ledger. Refused without the patient's opt-in."""
    if actor.user.role != "doctor":
        raise Forbidden("Only doctors declare emergencies.")
    patient = get_user(patient_id, role="patient")
    text = _reason(reason)
    optin = emergency_optin(patient, now, node.node_id)
    if optin is None:
        raise Forbidden(f"{patient.display_name} has not opted in to emergency access, so break-glass is refused.")
    running = _live_emergency(actor.user, patient, now)
    if running is not None:
        raise Conflict(f"Your emergency access is already active until {running.expires_at:%H:%M} UTC.")
    access_id = str(uuid.uuid4())
    sealed = seal_note(
        text,
        access_id,
        {
            "patient": patient.umbral_public_key,
            "doctor": actor.user.umbral_public_key,
            "hospital": node.emergency_key().public,
        },
    )
    expires = now + node.emergency_duration
    payload = {
        "access": access_id,
        "patient": patient.public_id,
        "grant": optin.id,
        "expires": epoch_ms(expires),
        "note": b64e(sealed),
    }
    tx = sign_transaction("emergency", payload, actor.keys(), epoch_ms(now))
    ledger.queue(tx, now)
    emergency = EmergencyAccess(
        id=access_id, patient=patient, doctor=actor.user, grant_id=optin.id, sealed_reason=sealed,
        created_at=now, expires_at=expires, tx_hash=tx.hash,
    )  # fmt: skip
    db.session.add(emergency)
    db.session.commit()
    return emergency


def emergencies_for(patient: User, limit: int = paging.DEFAULT_LIMIT, offset: int = 0) -> paging.Page[EmergencyAccess]:
    """A page of the break-glass accesses to the patient's records, newest first."""
    return paging.paged(
        select(EmergencyAccess)
        .where(EmergencyAccess.patient_id == patient.id)
        .order_by(EmergencyAccess.created_at.desc(), EmergencyAccess.id.desc())
        .options(selectinload(EmergencyAccess.doctor), selectinload(EmergencyAccess.patient)),
        limit,
        offset,
    )


def emergency_reason(emergency: EmergencyAccess, *, node: NodeContext, actor: Actor | None = None) -> str:
    """The reason, opened by the patient or the doctor with their key, or by the hospital (admin
    review) with its emergency key."""
    try:
        if actor is None:
            return open_note(emergency.sealed_reason, emergency.id, "hospital", node.emergency_key().secret)
        label = "patient" if actor.user.id == emergency.patient_id else "doctor"
        return open_note(emergency.sealed_reason, emergency.id, label, actor.keys().umbral_secret)
    except CoreError:
        return "(the reason could not be opened)"


def emergencies_to_review(hospital: str) -> list[EmergencyAccess]:
    """Emergencies declared by the doctors of `hospital` (a node id), unreviewed first: each
    hospital reviews its own doctors, whichever hospital their patients belong to."""
    return list(
        db.session.scalars(
            select(EmergencyAccess)
            .join(User, EmergencyAccess.doctor_id == User.id)
            .where(User.home_node == hospital)
            .order_by(EmergencyAccess.reviewed_at.is_not(None), EmergencyAccess.created_at.desc())
        )
    )


def review_emergency(actor: Actor, emergency_id: object, *, now: datetime) -> EmergencyAccess:
    if actor.user.role != "admin":
        raise Forbidden("Only admins review emergency accesses.")
    emergency = db.session.get(EmergencyAccess, emergency_id) if isinstance(emergency_id, str) else None
    if emergency is None or emergency.doctor.home_node != actor.user.home_node:
        raise NotFound("No such emergency access.")
    if emergency.reviewed_at is None:
        emergency.reviewed_at, emergency.reviewed_by = now, actor.user
        db.session.commit()
    return emergency


# -- the access decision --------------------------------------------------------------------


def _unexpired_emergency(doctor: User, patient: User, now: datetime) -> EmergencyAccess | None:
    return db.session.scalar(
        select(EmergencyAccess)
        .where(EmergencyAccess.doctor_id == doctor.id, EmergencyAccess.patient_id == patient.id)
        .where(EmergencyAccess.expires_at > now)
        .order_by(EmergencyAccess.expires_at.desc())
        .limit(1)
    )


def emergency_optin_of(emergency: EmergencyAccess, now: datetime) -> Grant | None:
    """The opt-in an emergency was declared under, while it is live. Opting out revokes it, so an
    emergency ended by an opt-out stays ended when the patient opts in again (new grants)."""
    optin = db.session.get(Grant, emergency.grant_id)
    return optin if optin is not None and optin.revoked_at is None and optin.expires_at > now else None


def emergency_active(emergency: EmergencyAccess, now: datetime) -> bool:
    return emergency.expires_at > now and emergency_optin_of(emergency, now) is not None


def _live_emergency(doctor: User, patient: User, now: datetime) -> EmergencyAccess | None:
    emergency = _unexpired_emergency(doctor, patient, now)
    return emergency if emergency is not None and emergency_active(emergency, now) else None


def _grants_between(doctor: User, patient: User) -> list[Grant]:
    return list(
        db.session.scalars(
            select(Grant)
            .where(Grant.doctor_id == doctor.id, Grant.patient_id == patient.id)
            .order_by(Grant.created_at.desc())
        )
    )


def _usable(grant: Grant, now: datetime) -> bool:
    """A live grant whose scope this node knows (so it can say what it covers)."""
    return grant_status(grant, now) == "active" and grant.scope is not None


def _refusal(doctor: User, patient: User, now: datetime) -> Forbidden:
    """Why a doctor may not read (more of) a patient's records, as precisely as can be said."""
    grants = _grants_between(doctor, patient)
    live = [g for g in grants if grant_status(g, now) == "active"]
    if live:
        scopes = "; ".join(describe_scope(grant_scope(g)) for g in live)
        return Forbidden(f"This record is outside the scope of your access ({scopes}).")
    if _unexpired_emergency(doctor, patient, now) is not None:
        return Forbidden("The patient has opted out of emergency access, which ended your emergency access.")
    if grants:
        if grants[0].revoked_at is not None:
            return Forbidden("The patient revoked your access to their records.")
        return Forbidden(f"Your access to this patient's records expired on {grants[0].expires_at:%Y-%m-%d %H:%M} UTC.")
    return Forbidden("You may not read this record: ask the patient for access first.")


def decide(actor: Actor, record: Record, *, node: NodeContext, now: datetime) -> Access:
    """May `actor` open `record`, and why? The patient and the author always; a doctor under a live
    grant covering it (preferred, so the log names the patient's own decision), else under a live
    emergency while the patient is opted in. Raises Forbidden with the reason otherwise."""
    if actor.user.id == record.patient_id:
        return Access("patient")
    if actor.user.id == record.author_id:
        return Access("author")
    if actor.user.role != "doctor":
        raise Forbidden("You may not read this record.")
    for grant in _grants_between(actor.user, record.patient):
        if _usable(grant, now) and covers(salted_scope(grant.scope), record, node):
            return Access("grant", grant=grant)
    emergency = _live_emergency(actor.user, record.patient, now)
    if emergency is not None:
        return Access("emergency", grant=emergency_optin_of(emergency, now), emergency=emergency)
    raise _refusal(actor.user, record.patient, now)


def patients_of(actor: Actor, now: datetime) -> list[dict[str, Any]]:
    """A doctor's patients through live grants or emergencies, with what and until when."""
    if actor.user.role != "doctor":
        raise Forbidden("Only doctors have patients through grants.")
    result: dict[int, dict[str, Any]] = {}
    for grant in list_grants(actor, include_ended=False):
        if grant_status(grant, now) == "active":
            entry = result.setdefault(grant.patient_id, {"patient": grant.patient, "grants": [], "emergency": None})
            entry["grants"].append(grant)
    emergencies = db.session.scalars(
        select(EmergencyAccess).where(EmergencyAccess.doctor_id == actor.user.id, EmergencyAccess.expires_at > now)
    )
    for emergency in emergencies:
        if emergency_optin_of(emergency, now) is None:
            continue
        entry = result.setdefault(emergency.patient_id, {"patient": emergency.patient, "grants": [], "emergency": None})
        entry["emergency"] = emergency
    return sorted(result.values(), key=lambda e: e["patient"].display_name)


def visible_records(
    actor: Actor, patient_id: object, *, node: NodeContext, now: datetime, limit: int | None = None, offset: int = 0
) -> paging.Page[Record]:
    """A page (all of them if `limit` is None) of a patient's records that a doctor may open now,
    newest first: authored by them or covered by a live grant or emergency, as `decide` rules.
    Forbidden, with the reason, when the doctor has no access at all."""
    if actor.user.role != "doctor":
        raise Forbidden("Only doctors list a patient's records through grants.")
    patient = get_user(patient_id, role="patient")
    records = db.session.scalars(
        select(Record)
        .where(Record.patient_id == patient.id)
        .order_by(Record.created_at.desc(), Record.id.desc())
        .options(selectinload(Record.author), selectinload(Record.transaction))
    )
    # `decide` for every record at once: the grants and the emergency are looked up once, then each
    # record is judged from its index (author, date, category tag) alone. Scopes are sealed
    # JSON, so the filter runs here and the list is paged after it.
    held = [salted_scope(g.scope) for g in _grants_between(actor.user, patient) if _usable(g, now)]
    emergency = _live_emergency(actor.user, patient, now)
    visible = [
        r
        for r in records
        if r.author_id == actor.user.id or any(covers(s, r, node) for s in held) or emergency is not None
    ]
    holds_access = any(entry["patient"].id == patient.id for entry in patients_of(actor, now))
    if not visible and not holds_access:
        raise _refusal(actor.user, patient, now)
    return paging.paged_list(visible, len(visible) if limit is None else limit, offset)
