"""API for patient-controlled access: requests, grants, the access log, emergency access."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Integer, List, Nested, String
from apiflask.validators import OneOf
from marshmallow import ValidationError, pre_dump, validates_schema

from core.fhir import MEDIA_TYPE
from portal import models, runtime
from portal.api import api_actor, bp, iso
from portal.api.schemas import Flag, Page, Paged, Person, RecordMetadata, Text, Whole, answer, listed
from portal.attachments import send_document, send_fhir
from portal.idempotency import idempotent
from portal.models import utcnow
from portal.services import access_log, accounts, federation, fhir, grants, paging, records
from portal.services.accounts import Actor
from portal.services.errors import ValidationFailed
from portal.services.records import CATEGORIES

# -- shapes -------------------------------------------------------------------------------------

SCOPE_TYPES = ("all", "categories", "dates")
# marshmallow formats its messages (str.format), so the braces are doubled.
SCOPE_MESSAGE = '`scope` must be {{"type": "all" | "categories" | "dates", ...}}.'
SCOPE_KEYS = {"all": set(), "categories": {"categories"}, "dates": {"from", "to"}}


@dataclass(frozen=True)
class Seen:
    """A row as `actor` may see it: the shapes of requests and emergencies open sealed text
    (reasons, scopes) with the actor's key."""

    actor: Actor | None
    row: Any


def person(user: models.User | None) -> dict[str, Any] | None:
    """A user as the `Person` shape (portal/api/schemas.py) shows them."""
    if user is None:
        return None
    return {
        "id": user.public_id,
        "display_name": user.display_name,
        "hospital": user.hospital or federation.hospital_of(user.home_node),
        "home_hospital": federation.hospital_of(user.home_node),
    }


class Scope(Schema):
    """What part of a patient's history a grant or request covers: `{"type": "all"}`,
    `{"type": "categories", "categories": [...]}` or `{"type": "dates", "from": "YYYY-MM-DD",
    "to": "YYYY-MM-DD"}` (both days included). The service checks the categories and dates."""

    type = Text(
        required=True,
        validate=OneOf(SCOPE_TYPES, error=SCOPE_MESSAGE),
        error_messages={"required": SCOPE_MESSAGE, "invalid": SCOPE_MESSAGE},
        metadata={"enum": list(SCOPE_TYPES), "example": "categories"},
    )
    categories = List(
        Text(),
        metadata={"description": "With `categories`: the record categories covered.", "example": ["cardiology"]},
    )
    from_ = Text(
        data_key="from",
        attribute="from",
        metadata={"format": "date", "description": "With `dates`: the first day covered (2026-01-01)."},
    )
    to = Text(metadata={"format": "date", "description": "With `dates`: the last day covered (2026-03-31)."})

    @validates_schema
    def _shape(self, data: dict[str, Any], **kwargs: Any) -> None:
        wanted = SCOPE_KEYS.get(data.get("type", ""))
        if wanted is None:
            return
        errors = {key: [f'`scope.{key}` is required when `type` is "{data["type"]}".'] for key in wanted - set(data)}
        extra = (set(data) - {"type"}) - wanted
        errors.update({key: [f'`scope.{key}` does not belong in a scope of type "{data["type"]}".'] for key in extra})
        if errors:
            raise ValidationError(errors)


class ScopeField(Nested):
    """A `Scope`; anything but an object is refused with the scope's own message."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Scope, allow_none=True, metadata={"description": "All records if absent."}, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise ValidationError(SCOPE_MESSAGE.format())
        return super()._deserialize(value, attr, data, **kwargs)


class NewAccessRequest(Schema):
    patient_id = Text(
        required=True,
        error_messages={"required": "`patient_id` is required."},
        metadata={"description": "The patient's consortium-wide id."},
    )
    reason = Text(
        required=True,
        error_messages={"required": "A reason is required."},
        metadata={"description": f"Shown to the patient only (at most {grants.MAX_REASON} characters)."},
    )
    days = Whole(
        allow_none=True,
        error_messages={"invalid": "`days` must be a whole number of days."},
        metadata={"description": "How long the access would last; the hospital's default if absent.", "example": 30},
    )
    scope = ScopeField()


class NewGrant(Schema):
    doctor_id = Text(
        required=True,
        error_messages={"required": "`doctor_id` is required."},
        metadata={"description": "The doctor's consortium-wide id."},
    )
    days = Whole(
        allow_none=True,
        error_messages={"invalid": "`days` must be a whole number of days."},
        metadata={"description": "How long the access lasts; the hospital's default if absent.", "example": 30},
    )
    scope = ScopeField()


class Approval(Schema):
    """What the patient gives when approving: by default what was asked; less, never more."""

    days = Whole(
        allow_none=True,
        error_messages={"invalid": "`days` must be a whole number of days."},
        metadata={"description": "Fewer days than asked; as asked if absent.", "example": 7},
    )
    scope = ScopeField()  # inside the one asked; as asked if absent


class EmergencyOptIn(Schema):
    enabled = Flag(
        required=True,
        error_messages={
            "required": "`enabled` must be true or false.",
            "invalid": "`enabled` must be true or false.",
            "null": "`enabled` must be true or false.",
        },
        metadata={"description": "Whether a doctor of a member hospital may break the glass."},
    )


class NewEmergency(Schema):
    reason = Text(
        required=True,
        error_messages={"required": "A reason is required."},
        metadata={"description": "Why the doctor needs the records now; shown to the patient at once."},
    )


class DoctorSearch(Schema):
    q = Text(load_default="", metadata={"description": "Part of a doctor's name.", "example": "Osei"})


class AccessRequest(Schema):
    """A doctor's request for access, dumped from `Seen(actor, row)`: the sealed reason, scope and
    duration are opened with the actor's key (null, and a placeholder reason, if they cannot be)."""

    id = String(required=True)
    doctor = Nested(Person, required=True)
    patient = Nested(Person, required=True)
    reason = String(required=True)
    scope = Nested(Scope, required=True, allow_none=True)
    scope_text = String(required=True, allow_none=True, metadata={"example": "records in cardiology"})
    days = Integer(required=True, allow_none=True)
    status = String(required=True, metadata={"enum": ["pending", "approved", "declined"]})
    created_at = String(required=True, metadata={"format": "date-time"})
    decided_at = String(required=True, allow_none=True, metadata={"format": "date-time"})
    grant_id = String(required=True, allow_none=True)

    @pre_dump
    def _from_row(self, seen: Seen, **kwargs: Any) -> dict[str, Any]:
        actor, item = seen.actor, seen.row
        asked = grants.request_details(actor, item)
        return {
            "id": item.id,
            "doctor": person(item.doctor),
            "patient": person(item.patient),
            "reason": asked.reason if asked else "(the request could not be opened)",
            "scope": asked.scope if asked else None,
            "scope_text": grants.describe_scope(asked.scope) if asked else None,
            "days": asked.days if asked else None,
            "status": item.status,
            "created_at": iso(item.created_at),
            "decided_at": iso(item.decided_at),
            "grant_id": item.grant_id,
        }


class Grant(Schema):
    """A patient's grant to a doctor (no doctor: an emergency opt-in for a hospital)."""

    id = String(required=True)
    doctor = Nested(Person, required=True, allow_none=True)
    patient = Nested(Person, required=True)
    scope = Nested(Scope, required=True)
    scope_text = String(required=True, metadata={"example": "all records"})
    created_at = String(required=True, metadata={"format": "date-time"})
    expires_at = String(required=True, metadata={"format": "date-time"})
    revoked_at = String(required=True, allow_none=True, metadata={"format": "date-time"})
    status = String(required=True, metadata={"enum": ["active", "expired", "revoked"]})
    tx_hash = String(required=True)

    @pre_dump
    def _from_row(self, grant: models.Grant, **kwargs: Any) -> dict[str, Any]:
        scope = grants.grant_scope(grant)
        return {
            "id": grant.id,
            "doctor": person(grant.doctor),
            "patient": person(grant.patient),
            "scope": scope,
            "scope_text": grants.describe_scope(scope),
            "created_at": iso(grant.created_at),
            "expires_at": iso(grant.expires_at),
            "revoked_at": iso(grant.revoked_at),
            "status": grants.grant_status(grant, utcnow()),
            "tx_hash": grant.tx_hash,
        }


class EmergencyAccess(Schema):
    """A doctor's break-glass access, dumped from `Seen(actor, row)` (the reason is opened with the
    actor's key, or the hospital's)."""

    id = String(required=True)
    doctor = Nested(Person, required=True)
    patient = Nested(Person, required=True)
    reason = String(required=True)
    created_at = String(required=True, metadata={"format": "date-time"})
    expires_at = String(required=True, metadata={"format": "date-time"})
    active = Boolean(required=True, metadata={"description": "False once expired or ended by an opt-out."})
    reviewed_at = String(required=True, allow_none=True, metadata={"format": "date-time"})
    tx_hash = String(required=True)

    @pre_dump
    def _from_row(self, seen: Seen, **kwargs: Any) -> dict[str, Any]:
        actor, item = seen.actor, seen.row
        return {
            "id": item.id,
            "doctor": person(item.doctor),
            "patient": person(item.patient),
            "reason": grants.emergency_reason(item, node=runtime.node(), actor=actor),
            "created_at": iso(item.created_at),
            "expires_at": iso(item.expires_at),
            # Opting out ends a running emergency for good (reads are refused), so it is not active.
            "active": grants.emergency_active(item, utcnow()),
            "reviewed_at": iso(item.reviewed_at),
            "tx_hash": item.tx_hash,
        }


class DeclaredEmergency(EmergencyAccess):
    """The emergency access just declared. (Its own name: the document's paths are built in
    alphabetical order, so `EmergencyAccess` is first met nested in `EmergencyStatus`, and
    APIFlask would add it a second time, as `EmergencyAccess1`, for this answer.)"""


class ReadRecord(Schema):
    id = String(required=True)
    created_at = String(required=True, metadata={"format": "date-time"})


class AccessEntry(Schema):
    """One read of a patient's record by someone else, as the access log shows it; or an event on
    the patient's own account (no record, `event` says what)."""

    id = String(required=True)
    record = Nested(ReadRecord, required=True, allow_none=True, metadata={"description": "Null for an event."})
    reader = Nested(Person, required=True)
    mode = String(required=True, metadata={"enum": ["author", "grant", "emergency", *access_log.ACCOUNT_EVENTS]})
    event = String(required=True, allow_none=True, metadata={"example": access_log.ACCOUNT_EVENTS["recovery_key"]})
    grant_id = String(required=True, allow_none=True)
    part = String(required=True, metadata={"description": '"record" or "attachment N".', "example": "record"})
    at = String(required=True, metadata={"format": "date-time"})
    tx_hash = String(required=True)

    @pre_dump
    def _from_row(self, entry: models.AccessEntry, **kwargs: Any) -> dict[str, Any]:
        return {
            "id": entry.id,
            "record": {"id": entry.record_id, "created_at": iso(entry.record.created_at)} if entry.record else None,
            "event": access_log.ACCOUNT_EVENTS.get(entry.mode) if entry.record is None else None,
            "reader": person(entry.reader),
            "mode": entry.mode,
            "grant_id": entry.grant_id,
            "part": access_log.part_label(entry.part),
            "at": iso(entry.at),
            "tx_hash": entry.tx_hash,
        }


class AccessRequests(Paged):
    requests = List(Nested(AccessRequest), required=True, metadata={"description": "Newest first."})


class Grants(Paged):
    grants = List(
        Nested(Grant), required=True, metadata={"description": "Newest first, revoked and expired ones included."}
    )


class PatientRecords(Paged):
    records = List(Nested(RecordMetadata), required=True, metadata={"description": "Newest first."})


class Doctors(Schema):
    doctors = List(Nested(Person), required=True)


class AccessLog(Paged):
    entries = List(Nested(AccessEntry), required=True, metadata={"description": "Newest first."})


class EmergencyStatus(Paged):
    """The opt-in, and a page of the break-glass accesses to the patient's records (`total` and
    `next_offset` page these)."""

    enabled = Boolean(required=True)
    emergencies = List(Nested(EmergencyAccess), required=True, metadata={"description": "Newest first."})


class PatientWithAccess(Schema):
    patient = Nested(Person, required=True)
    grants = List(Nested(Grant), required=True)
    emergency = Nested(EmergencyAccess, required=True, allow_none=True)


class PatientsWithAccess(Schema):
    patients = List(Nested(PatientWithAccess), required=True)


_error = answer


UNAUTHORIZED = _error("No valid token.")
OUT_OF_RANGE = _error("`limit` or `offset` out of range.")


# -- routes -------------------------------------------------------------------------------------


@bp.post("/access-requests")
@idempotent
@bp.input(NewAccessRequest, location="json", arg_name="data")
@bp.output(AccessRequest, status_code=201)
@bp.doc(
    operation_id="createAccessRequest",
    security="BearerAuth",
    responses={
        401: UNAUTHORIZED,
        403: _error("Only doctors request access."),
        404: _error("No such patient."),
        409: _error("A request to this patient is already pending."),
        422: _error("The reason, duration or scope is not valid."),
    },
)
def create_access_request(data: dict[str, Any]) -> tuple[Seen, int]:
    actor = api_actor("doctor")
    item = grants.request_access(
        actor, data["patient_id"], data["reason"], data.get("days"), data.get("scope"),
        node=runtime.node(), categories=CATEGORIES, now=utcnow(),
    )  # fmt: skip
    return Seen(actor, item), 201


@bp.get("/access-requests")
@bp.input(Page, location="query", arg_name="query")
@bp.output(AccessRequests)
@bp.doc(
    operation_id="listAccessRequests",
    security="BearerAuth",
    responses={401: UNAUTHORIZED, 403: _error("Admins have no access requests."), 422: OUT_OF_RANGE},
)
def list_access_requests(query: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor()
    page = grants.page_requests(actor, *paging.bounds(query["limit"], query["offset"]))
    return listed("requests", page.map(lambda r: Seen(actor, r)))


@bp.post("/access-requests/<request_id>/approve")
@idempotent
@bp.input(Approval, location="json", arg_name="data")
@bp.output(Grant, status_code=201)
@bp.doc(
    operation_id="approveAccessRequest",
    security="BearerAuth",
    responses={
        401: UNAUTHORIZED,
        403: _error("Only the patient asked decides."),
        404: _error("No such request."),
        409: _error("The request was already decided."),
        422: _error("The scope or duration is wider than asked, or not valid."),
    },
)
def approve_access_request(request_id: str, data: dict[str, Any]) -> tuple[models.Grant, int]:
    actor = api_actor("patient")
    grant = grants.approve_request(
        actor, request_id, node=runtime.node(), now=utcnow(),
        days=data.get("days"), scope=data.get("scope"), categories=CATEGORIES,
    )  # fmt: skip
    return grant, 201


@bp.post("/access-requests/<request_id>/decline")
@bp.output(AccessRequest)
@bp.doc(
    operation_id="declineAccessRequest",
    security="BearerAuth",
    responses={
        401: UNAUTHORIZED,
        403: _error("Only the patient asked decides."),
        404: _error("No such request."),
        409: _error("The request was already decided."),
    },
)
def decline_access_request(request_id: str) -> Seen:
    actor = api_actor("patient")
    return Seen(actor, grants.decline_request(actor, request_id, now=utcnow()))


@bp.post("/grants")
@idempotent
@bp.input(NewGrant, location="json", arg_name="data")
@bp.output(Grant, status_code=201)
@bp.doc(
    operation_id="createGrant",
    security="BearerAuth",
    responses={
        401: UNAUTHORIZED,
        403: _error("Only patients grant access."),
        404: _error("No such doctor."),
        422: _error("The duration or scope is not valid."),
    },
)
def create_grant(data: dict[str, Any]) -> tuple[models.Grant, int]:
    actor = api_actor("patient")
    grant = grants.create_grant(
        actor, data["doctor_id"], data.get("days"), data.get("scope"),
        node=runtime.node(), categories=CATEGORIES, now=utcnow(),
    )  # fmt: skip
    return grant, 201


@bp.get("/grants")
@bp.input(Page, location="query", arg_name="query")
@bp.output(Grants)
@bp.doc(
    operation_id="listGrants",
    security="BearerAuth",
    responses={401: UNAUTHORIZED, 403: _error("Admins have no grants."), 422: OUT_OF_RANGE},
)
def list_grants(query: dict[str, Any]) -> dict[str, Any]:
    return listed("grants", grants.page_grants(api_actor(), *paging.bounds(query["limit"], query["offset"])))


@bp.delete("/grants/<grant_id>")
@bp.output(Grant)
@bp.doc(
    operation_id="revokeGrant",
    security="BearerAuth",
    responses={
        401: UNAUTHORIZED,
        403: _error("Only patients revoke grants."),
        404: _error("No such grant of yours."),
        409: _error("The grant was already revoked."),
    },
)
def revoke_grant(grant_id: str) -> models.Grant:
    actor = api_actor("patient")
    return grants.revoke_grant(actor, grant_id, now=utcnow())


@bp.get("/patients/<patient_id>/records")
@bp.input(Page, location="query", arg_name="query")
@bp.output(PatientRecords)
@bp.doc(
    operation_id="listPatientRecords",
    security="BearerAuth",
    responses={
        401: UNAUTHORIZED,
        403: _error("No grant or emergency access to this patient's records."),
        404: _error("No such patient."),
        422: OUT_OF_RANGE,
    },
)
def patient_records(patient_id: str, query: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor("doctor")
    limit, offset = paging.bounds(query["limit"], query["offset"])
    visible = grants.visible_records(actor, patient_id, node=runtime.node(), now=utcnow(), limit=limit, offset=offset)
    return listed("records", visible.map(records.metadata))


@bp.get("/doctors")
@bp.input(DoctorSearch, location="query", arg_name="query")
@bp.output(Doctors)
@bp.doc(
    operation_id="findDoctors",
    security="BearerAuth",
    responses={401: UNAUTHORIZED, 403: _error("Only patients and doctors search for doctors.")},
)
def find_doctors(query: dict[str, Any]) -> dict[str, Any]:
    api_actor("patient", "doctor")
    text = query["q"]
    local = accounts.find_users("doctor", text, local_only=True)
    return {"doctors": [person(d) for d in federation.find_doctors(text, local, runtime.peers())]}


class AccessLogQuery(Page):
    format = String(
        validate=OneOf(["json", "fhir", "csv"]),
        metadata={
            "description": "`fhir`: the whole log as a FHIR R4 Bundle of AuditEvent resources; `csv`: the whole "
            "log as CSV; both downloads, `limit` and `offset` not allowed. `json` (if absent): a page of it."
        },
    )


@bp.get("/access-log")
@bp.input(AccessLogQuery, location="query", arg_name="query")
@bp.output(
    AccessLog,
    description="A page of the log; with `format=fhir` a FHIR Bundle (application/fhir+json), with `format=csv` "
    "CSV (text/csv), as downloads.",
)
@bp.doc(
    operation_id="getAccessLog",
    security="BearerAuth",
    responses={
        401: UNAUTHORIZED,
        403: _error("Only patients have an access log."),
        422: _error("`limit` or `offset` out of range, or given with `format=fhir` or `csv`."),
        200: {"content": {MEDIA_TYPE: {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}}},
    },
)
def access_log_view(query: dict[str, Any]) -> Any:
    actor = api_actor("patient")
    wanted = query.get("format", "json")
    if wanted != "json" and (query.get("limit") is not None or query.get("offset") is not None):
        raise ValidationFailed("`limit` and `offset` page the JSON log; the FHIR and CSV copies hold all of it.")
    if wanted == "fhir":
        bundle = fhir.access_log_bundle(actor, now=utcnow())
        return send_fhir(bundle, "medledger-access-log")
    if wanted == "csv":
        day = utcnow().strftime("%Y-%m-%d")
        return send_document(fhir.access_log_csv(actor), "text/csv; charset=utf-8", f"medledger-access-log-{day}.csv")
    return listed("entries", access_log.for_patient(actor, *paging.bounds(query.get("limit"), query.get("offset"))))


@bp.get("/emergency-access")
@bp.input(Page, location="query", arg_name="query")
@bp.output(EmergencyStatus)
@bp.doc(
    operation_id="getEmergencyAccess",
    security="BearerAuth",
    responses={401: UNAUTHORIZED, 403: _error("Only patients opt in to emergency access."), 422: OUT_OF_RANGE},
)
def emergency_status(query: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor("patient")
    optin = grants.emergency_optin(actor.user, utcnow())
    page = grants.emergencies_for(actor.user, *paging.bounds(query["limit"], query["offset"]))
    return {"enabled": optin is not None, **listed("emergencies", page.map(lambda e: Seen(actor, e)))}


@bp.put("/emergency-access")
@bp.input(EmergencyOptIn, location="json", arg_name="data")
@bp.output(EmergencyOptIn)
@bp.doc(
    operation_id="setEmergencyAccess",
    security="BearerAuth",
    responses={401: UNAUTHORIZED, 403: _error("Only patients opt in to emergency access.")},
)
def set_emergency(data: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor("patient")
    optin = grants.set_emergency_optin(actor, data["enabled"], node=runtime.node(), now=utcnow())
    return {"enabled": optin is not None}


@bp.post("/patients/<patient_id>/emergency")
@bp.input(NewEmergency, location="json", arg_name="data")
@bp.output(DeclaredEmergency, status_code=201)
@bp.doc(
    operation_id="declareEmergency",
    security="BearerAuth",
    responses={
        401: UNAUTHORIZED,
        403: _error("Not a doctor, or the patient has not opted in to emergency access."),
        404: _error("No such patient."),
        409: _error("Your emergency access to this patient is already active."),
        422: _error("The reason is empty or too long."),
    },
)
def declare_emergency(patient_id: str, data: dict[str, Any]) -> tuple[Seen, int]:
    actor = api_actor("doctor")
    emergency = grants.declare_emergency(actor, patient_id, data["reason"], node=runtime.node(), now=utcnow())
    return Seen(actor, emergency), 201


@bp.get("/patients-with-access")
@bp.output(PatientsWithAccess)
@bp.doc(
    operation_id="listPatientsWithAccess",
    security="BearerAuth",
    responses={401: UNAUTHORIZED, 403: _error("Only doctors have patients with access.")},
)
def my_patients() -> dict[str, Any]:
    actor = api_actor("doctor")
    return {
        "patients": [
            {
                "patient": person(entry["patient"]),
                "grants": entry["grants"],
                "emergency": Seen(actor, entry["emergency"]) if entry["emergency"] else None,
            }
            for entry in grants.patients_of(actor, utcnow())
        ]
    }
