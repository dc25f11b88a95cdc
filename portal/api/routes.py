from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable
from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Dict, File, Integer, List, Nested, String
from apiflask.schema_adapters.marshmallow import parser
from apiflask.validators import Length
from flask import Response, current_app, request
from marshmallow import ValidationError

from core.fhir import MEDIA_TYPE
from portal import runtime
from portal.api import api_actor, bearer_token, bp, iso
from portal.api.schemas import (
    SIGNED_OUT,
    THROTTLED,
    Page,
    Paged,
    QueryWhole,
    RecordSummary,
    Text,
    User,
    listed,
)
from portal.api.schemas import error_answers as _errors
from portal.attachments import send_attachment, send_fhir
from portal.idempotency import idempotent
from portal.limits import limiter, registration_limit
from portal.models import User as UserRow
from portal.models import utcnow
from portal.services import (
    accounts,
    chat,
    federation,
    fhir,
    ledger,
    paging,
    records,
    recovery,
    throttle,
    two_factor,
    votes,
)
from portal.services.errors import Conflict, ValidationFailed
from portal.services.inputs import MAX_OFFSET
from portal.services.records import NewAttachment

FHIR_JSON = MEDIA_TYPE

# -- shapes ------------------------------------------------------------------------------------


def _text(name: str, **kwargs: Any) -> Text:
    """A text field whose refusals name it as the services do."""
    return Text(
        error_messages={"required": f"`{name}` is required.", "invalid": f"`{name}` must be text."},
        **kwargs,
    )


class TextList(List):
    """A list of strings refused as a whole ("`x` must be a list of ..."), as the services say it."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        messages = {"invalid": message, **kwargs.pop("error_messages", {})}
        super().__init__(Text(), error_messages=messages, **kwargs)
        self.message = message

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValidationError(self.message)
        return super()._deserialize(value, attr, data, **kwargs)


class BirthDate(Text):
    """A date of birth as YYYY-MM-DD, checked as accounts.check_date_of_birth does (same sentences)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            return accounts.check_date_of_birth(super()._deserialize(value, attr, data, **kwargs), utcnow().date())
        except ValidationFailed as exc:
            raise ValidationError(exc.message) from None


class Registration(Schema):
    username = _text("username", required=True, metadata={"example": "dana.k"})
    password = _text("password", required=True, metadata={"description": "At least 10 characters, not easy to guess."})
    display_name = _text("display_name", required=True, metadata={"example": "Dana Kim"})
    date_of_birth = BirthDate(
        required=True,
        error_messages={"invalid": "`date_of_birth` must be text.", "required": "`date_of_birth` is required."},
        metadata={"format": "date", "example": "1984-03-21", "description": "YYYY-MM-DD, from 1900 to today."},
    )


class UserAnswer(Schema):
    user = Nested(User, required=True)


class SignIn(Schema):
    username = _text("username", required=True, metadata={"example": "alice"})
    password = _text("password", required=True)
    otp = _text(
        "otp",
        load_default=None,
        allow_none=True,
        metadata={"description": "A code from the authenticator app, or a recovery code, if two-factor is on."},
    )


class FailedAttempts(Schema):
    count = Integer(required=True, metadata={"description": "Failed sign-ins since the last one."})
    last_at = String(required=True, allow_none=True, metadata={"example": "2024-05-01T09:30:00Z"})


class Notice(Schema):
    """Something done to the account without its password, told once, at the next sign-in."""

    kind = String(required=True, metadata={"enum": ["recovered"], "description": "recovered: the password was reset."})
    at = String(required=True, metadata={"format": "date-time"})
    method = String(required=True, metadata={"example": "recovery_key"})


class Token(Schema):
    token = String(required=True)
    expires_at = String(required=True, metadata={"example": "2024-05-01T21:30:00Z"})
    user = Nested(User, required=True)
    failed_attempts = Nested(FailedAttempts, required=True)
    notices = List(Nested(Notice), required=True, metadata={"description": "Each is given once."})


class TwoFactorStatus(Schema):
    enabled = Boolean(required=True)
    recovery_codes_left = Integer(required=True)


class TwoFactorEnrolment(Schema):
    secret = String(required=True, metadata={"description": "The TOTP secret, base32."})
    uri = String(required=True, metadata={"example": "otpauth://totp/MedLedger:alice@node-1?secret=..."})
    qr_svg = String(required=True, metadata={"description": "The URI as a QR code (SVG)."})


class TwoFactorCode(Schema):
    code = _text("code", required=True, metadata={"example": "123456"})


class TwoFactorOn(Schema):
    enabled = Boolean(required=True)
    recovery_codes = List(String(), required=True, metadata={"description": "Ten codes that work once each."})


class PasswordChange(Schema):
    current_password = _text("current_password", required=True)
    new_password = _text("new_password", required=True)


class PatientSearch(Schema):
    q = Text(load_default="", metadata={"description": "Part of a username or name (2+ characters)."})


class PatientIdentity(Schema):
    """What tells two patients of the same name apart (from their home node for another hospital's)."""

    date_of_birth = String(
        required=True, allow_none=True, metadata={"format": "date", "description": "Null: not given."}
    )
    home_hospital = String(required=True, allow_none=True)
    mrn = String(required=True, allow_none=True, metadata={"description": "The hospital number at the home hospital."})
    verified = Boolean(
        required=True, metadata={"description": "False: self-registered, identity not checked in person yet."}
    )


class PatientFound(PatientIdentity):
    id = String(required=True)
    username = String(required=True, allow_none=True)
    display_name = String(required=True)


class PatientsFound(Schema):
    patients = List(Nested(PatientFound), required=True)


class Patient(PatientIdentity):
    id = String(required=True)
    display_name = String(required=True)
    home_node = String(required=True, allow_none=True)


class PrescriptionIn(Schema):
    error_messages = {
        "unknown": "Each prescription has `drug` and optionally `dose`, `frequency`, `duration`.",
        "type": "Each prescription has `drug` and optionally `dose`, `frequency`, `duration`.",
    }
    drug = _text("drug", required=True, metadata={"example": "Salbutamol"})
    dose = _text("dose", load_default="", metadata={"example": "100 mcg"})
    frequency = _text("frequency", load_default="", metadata={"example": "as needed"})
    duration = _text("duration", load_default="", metadata={"example": "30 days"})


NEEDS_DATA = "Each attachment needs base64 `data`."


class AttachmentIn(Schema):
    error_messages = {"type": "`attachments` must be a list of objects."}
    filename = _text("filename", load_default="", metadata={"example": "scan.png"})
    content_type = _text("content_type", load_default="", metadata={"example": "image/png"})
    data = Text(
        required=True,
        error_messages={"required": NEEDS_DATA, "invalid": NEEDS_DATA},
        metadata={"description": "The file, base64-encoded (PDF, PNG, JPEG or WebP)."},
    )


PRESCRIPTIONS = f"`prescriptions` must be a list of at most {records.MAX_PRESCRIPTIONS} items."


class RecordIn(Schema):
    """A new record as JSON; attachments base64-encoded."""

    title = _text("title", required=True, metadata={"example": "Asthma review"})
    category = _text("category", required=True, metadata={"example": "respiratory", "enum": list(records.CATEGORIES)})
    diagnoses = TextList("`diagnoses` must be a list of codes.", load_default=list, metadata={"example": ["J45.909"]})
    symptoms = TextList("`symptoms` must be a list of codes.", load_default=list, metadata={"example": ["HP:0002094"]})
    notes = _text("notes", load_default="", allow_none=True)
    prescriptions = List(
        Nested(PrescriptionIn),
        load_default=list,
        validate=Length(max=records.MAX_PRESCRIPTIONS, error=PRESCRIPTIONS),
        error_messages={"invalid": PRESCRIPTIONS},
    )
    attachments = List(
        Nested(AttachmentIn), load_default=list, error_messages={"invalid": "`attachments` must be a list of objects."}
    )


class RecordForm(Schema):
    """A new record as a multipart form: codes comma-separated, prescriptions as a JSON list."""

    title = _text("title", required=True, metadata={"example": "Chest X-ray"})
    category = _text("category", required=True, metadata={"example": "imaging", "enum": list(records.CATEGORIES)})
    diagnoses = _text("diagnoses", load_default="", metadata={"example": "J45.909, R05.9"})
    symptoms = _text("symptoms", load_default="", metadata={"example": "HP:0012735"})
    notes = _text("notes", load_default="")
    prescriptions = _text(
        "prescriptions", load_default="", metadata={"description": "A JSON list of prescriptions.", "example": "[]"}
    )
    attachments = List(File(), load_default=list, metadata={"description": "Files: PDF, PNG, JPEG or WebP."})
    idempotency_key = _text(
        "idempotency_key", load_default=None, metadata={"description": "Instead of the `Idempotency-Key` header."}
    )


class RecordCreated(Schema):
    id = String(required=True, metadata={"example": "7d1c7a4e-1f0b-4f4e-9a51-1c2d3e4f5a6b"})
    tx_hash = String(required=True, metadata={"description": "The record's transaction on the ledger."})


class RecordList(Paged):
    records = List(Nested(RecordSummary), required=True, metadata={"description": "Newest first."})


class DiagnosisOut(Schema):
    code = String(required=True, metadata={"example": "J45.909"})
    description = String(required=True)


class SymptomOut(Schema):
    id = String(required=True, metadata={"example": "HP:0002094"})
    name = String(required=True)


class PrescriptionOut(Schema):
    drug = String(required=True)
    dose = String(required=True)
    frequency = String(required=True)
    duration = String(required=True)


class AttachmentOut(Schema):
    n = Integer(required=True)
    filename = String(required=True)
    content_type = String(required=True)
    size = Integer(required=True)


class ReadAccess(Schema):
    mode = String(required=True, metadata={"example": "grant"})
    grant = String(required=True, allow_none=True)


class RecordOut(RecordSummary):
    diagnoses = List(Nested(DiagnosisOut), required=True)
    symptoms = List(Nested(SymptomOut), required=True)
    notes = String(required=True)
    prescriptions = List(Nested(PrescriptionOut), required=True)
    attachments = List(Nested(AttachmentOut), required=True)
    access = Nested(ReadAccess, required=True)


class BlockPage(Schema):
    from_ = QueryWhole(0, MAX_OFFSET, data_key="from")
    limit = QueryWhole(1, ledger.MAX_PAGE)


class BlockHeader(Schema):
    v = Integer()
    height = Integer(required=True)
    ts = Integer()
    prev = String()
    root = String()
    nonce = String()
    producer = String()
    sig = String()
    hash = String(required=True)
    tx_count = Integer()
    error = String(metadata={"description": "Only when the stored header cannot be decoded."})


class BlockHeaders(Schema):
    blocks = List(Nested(BlockHeader), required=True)
    height = Integer(required=True, metadata={"description": "The chain's height; -1 when empty."})


class TransactionOut(Schema):
    v = Integer()
    kind = String()
    signer = String()
    ts = Integer()
    nonce = String()
    payload = Dict()
    sig = String()
    hash = String(required=True)
    error = String(metadata={"description": "Only when the stored transaction cannot be decoded."})


class BlockOut(Schema):
    hash = String(required=True)
    header = Nested(BlockHeader, required=True)
    transactions = List(Nested(TransactionOut), required=True)


class ConsensusParams(Schema):
    delegates = Integer(required=True)
    slot_ms = Integer(required=True)
    epoch_slots = Integer(required=True)
    miss_limit = Integer(required=True)
    genesis_ms = Integer(required=True)


class Candidate(Schema):
    node = String(required=True)
    score = Integer(required=True)
    reliability = Integer(required=True)
    votes = Integer(required=True)
    banned_until_epoch = Integer(required=True, allow_none=True)
    misses = Integer(required=True)
    produced = Integer(required=True)


class Slot(Schema):
    slot = Integer(required=True)
    starts = Integer(required=True)
    node = String(required=True, allow_none=True)


class Removal(Schema):
    slot = Integer(required=True)
    node = String(required=True)
    reason = String(required=True)


class Consensus(Schema):
    params = Nested(ConsensusParams, required=True)
    epoch = Integer(required=True)
    slot = Integer(required=True)
    height = Integer(required=True)
    final_height = Integer(required=True)
    delegates = List(String(), required=True)
    candidates = List(Nested(Candidate), required=True)
    schedule = List(Nested(Slot), required=True)
    removals = List(Nested(Removal), required=True)


class ChainReport(Schema):
    valid = Boolean(required=True)
    blocks = Integer(required=True)
    tip_hash = String(required=True, allow_none=True)
    height = Integer(allow_none=True, metadata={"description": "Only when invalid: the first bad height."})
    check = String(allow_none=True, metadata={"description": "Only when invalid: the check that failed."})
    detail = String(allow_none=True, metadata={"description": "Only when invalid."})


NODES = "`nodes` must be a list of node ids."


class Vote(Schema):
    nodes = TextList(NODES, required=True, error_messages={"required": NODES}, metadata={"example": ["node-1"]})


class VoteCast(Schema):
    tx_hash = String(required=True)
    nodes = List(String(), required=True)


class CurrentVote(Schema):
    nodes = List(String(), required=True, allow_none=True, metadata={"description": "None until a vote is in a block."})


# -- routes ------------------------------------------------------------------------------------


def user_json(user: UserRow) -> dict[str, Any]:
    return {
        "id": user.public_id,
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "hospital": user.hospital,
        "date_of_birth": user.date_of_birth.isoformat() if user.date_of_birth else None,
    }


@bp.post("/auth/register")
@idempotent
@limiter.limit(registration_limit, methods=["POST"])
@bp.input(Registration, location="json", arg_name="data")
@bp.output(UserAnswer, status_code=201)
@bp.doc(
    operation_id="register",
    responses=_errors(
        {
            409: "The username is taken.",
            422: "A field is missing or not valid (username, password strength, name, date of birth).",
        }
    ),
)
def register(data: dict[str, Any]) -> tuple[dict[str, Any], int]:
    user = accounts.create_user(
        role="patient",
        username=data["username"],
        password=data["password"],
        display_name=data["display_name"],
        date_of_birth=data["date_of_birth"],
        kdf=runtime.kdf(),
        home=runtime.node_key(),
        now=utcnow(),
    )
    return {"user": user_json(user)}, 201


@bp.post("/auth/token")
@bp.input(SignIn, location="json", arg_name="data")
@bp.output(Token)
@bp.doc(
    operation_id="signIn",
    responses=_errors(
        {
            401: "Wrong username or password, or a two-factor code is needed (`two_factor_required`) or wrong.",
            403: "The account must set up two-factor sign-in first (`two_factor_setup_required`).",
            422: "A field is missing or not text.",
            **THROTTLED,
        }
    ),
)
def token(data: dict[str, Any]) -> dict[str, Any]:
    signed_in = accounts.login(
        data["username"],
        data["password"],
        kind="api",
        ttl_seconds=current_app.config["API_TOKEN_TTL_SECONDS"],
        kdf=runtime.kdf(),
        now=utcnow(),
        address=request.remote_addr,
        policy=throttle.policy_from(current_app.config),
        otp=data["otp"],
        two_factor_roles=two_factor.required_roles(current_app.config),
    )
    return {
        "token": signed_in.token,
        "expires_at": iso(signed_in.session.expires_at),
        "user": user_json(signed_in.session.user),
        "failed_attempts": {"count": signed_in.failed_attempts, "last_at": iso(signed_in.last_failed_at)},
        "notices": [{**n, "at": iso(n["at"])} for n in recovery.take_notices(signed_in.session.user)],
    }


@bp.delete("/auth/token")
@bp.output({}, status_code=204)
@bp.doc(operation_id="signOut", security="BearerAuth", responses=_errors(SIGNED_OUT))
def revoke_token() -> str:
    from portal.chat.events import end_session

    api_actor()
    end_session(bearer_token())
    accounts.logout(bearer_token())
    return ""


@bp.get("/me")
@bp.output(UserAnswer)
@bp.doc(operation_id="getMe", security="BearerAuth", responses=_errors(SIGNED_OUT))
def me() -> dict[str, Any]:
    return {"user": user_json(api_actor().user)}


@bp.get("/me/two-factor")
@bp.output(TwoFactorStatus)
@bp.doc(operation_id="getTwoFactor", security="BearerAuth", responses=_errors(SIGNED_OUT))
def two_factor_status() -> dict[str, Any]:
    user = api_actor().user
    return {"enabled": two_factor.enabled(user), "recovery_codes_left": two_factor.recovery_codes_left(user)}


@bp.post("/me/two-factor")
@bp.output(TwoFactorEnrolment, status_code=201)
@bp.doc(
    operation_id="beginTwoFactor",
    security="BearerAuth",
    responses=_errors({**SIGNED_OUT, 409: "Two-factor sign-in is on already."}),
)
def two_factor_begin() -> tuple[dict[str, Any], int]:
    """Start setting up (or over): a new secret, as text, otpauth URI and QR code (SVG)."""
    actor = api_actor()
    if two_factor.enabled(actor.user):
        raise Conflict("Two-factor sign-in is on already; turn it off first to set up another app.")
    enrolment = two_factor.begin(actor.user, actor.user_key(), f"{actor.user.username}@{current_app.config['NODE_ID']}")
    return {"secret": enrolment.secret, "uri": enrolment.uri, "qr_svg": enrolment.qr_svg}, 201


@bp.post("/me/two-factor/confirm")
@bp.input(TwoFactorCode, location="json", arg_name="data")
@bp.output(TwoFactorOn)
@bp.doc(
    operation_id="confirmTwoFactor",
    security="BearerAuth",
    responses=_errors(
        {
            **SIGNED_OUT,
            409: "No set-up was begun (`POST /me/two-factor` first).",
            422: "The code is missing or not right.",
        }
    ),
)
def two_factor_confirm(data: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor()
    codes = two_factor.confirm(actor.user, actor.user_key(), data["code"], utcnow())
    return {"enabled": True, "recovery_codes": codes}


@bp.delete("/me/two-factor")
@bp.input(TwoFactorCode, location="json", arg_name="data")
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="turnOffTwoFactor",
    security="BearerAuth",
    responses=_errors(
        {
            **SIGNED_OUT,
            403: "Two-factor sign-in is required for this account's role.",
            409: "Two-factor sign-in is not on.",
            422: "The code is missing or not right.",
        }
    ),
)
def two_factor_off(data: dict[str, Any]) -> str:
    actor = api_actor()
    roles = two_factor.required_roles(current_app.config)
    two_factor.turn_off(actor.user, actor.user_key(), data["code"], utcnow(), roles)
    return ""


@bp.post("/me/password")
@bp.input(PasswordChange, location="json", arg_name="data")
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="changePassword",
    security="BearerAuth",
    responses=_errors(
        {401: "No valid token, or the current password is wrong.", 422: "The new password is too short or easy."}
    ),
)
def change_password(data: dict[str, Any]) -> str:
    from portal.chat.events import close_sockets

    actor = api_actor()
    others = chat.sockets_of_other_sessions(actor)
    accounts.change_password(actor, data["current_password"], data["new_password"], runtime.kdf())
    close_sockets(others)  # their sessions have just ended
    return ""


@bp.get("/patients")
@bp.input(PatientSearch, location="query", arg_name="query")
@bp.output(PatientsFound)
@bp.doc(
    operation_id="findPatients",
    security="BearerAuth",
    responses=_errors({**SIGNED_OUT, 403: "Only doctors search for patients.", 422: "The search needs 2+ characters."}),
)
def find_patients(query: dict[str, Any]) -> dict[str, Any]:
    api_actor("doctor")
    patients = accounts.find_users("patient", query["q"])
    return {"patients": [federation.patient_card(p) for p in patients]}


@bp.get("/patients/<patient_id>")
@bp.output(Patient)
@bp.doc(
    operation_id="getPatient",
    security="BearerAuth",
    responses=_errors({**SIGNED_OUT, 403: "Only doctors look patients up.", 404: "No such patient."}),
)
def get_patient(patient_id: str) -> dict[str, Any]:
    """A patient of any member hospital by consortium id: name, home hospital, date of birth,
    hospital number and in-person check, from the home node (patients are found by name only at home)."""
    api_actor("doctor")
    patient = federation.resolve(accounts.get_user(patient_id, role="patient"), runtime.peers())
    return {**federation.describe(patient), "home_node": patient.home_node}


def _b64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed(f"Attachment {name!r} is not valid base64.") from None


_RECORD_IN = RecordIn()  # made once: a schema's set-up cost about a tenth of a millisecond per write


def _record_body(view: Callable[..., Any]) -> Callable[..., Any]:
    """The body of a new record, JSON (RecordIn) or multipart (RecordForm), chosen by the
    request's content type and validated by the matching schema, as `data`; both are documented."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.mimetype == "multipart/form-data":
            data = parser.parse(RecordForm(), request, location="form_and_files")
        elif request.mimetype == FHIR_JSON:
            data = {}  # the Bundle is read by the FHIR import (fhir.import_bundle), not by a schema
        else:
            data = parser.parse(_RECORD_IN, request, location="json")
        return view(*args, data=data, **kwargs)

    return wrapper


def _record_input(data: dict[str, Any]) -> tuple[dict[str, Any], list[NewAttachment]]:
    """Fields and attachments from the validated JSON or multipart body (see docs/api.md)."""
    if request.mimetype == "multipart/form-data":
        fields: dict[str, Any] = {k: data[k] for k in ("title", "category", "notes")}
        for name in ("diagnoses", "symptoms"):
            fields[name] = [c for c in (s.strip() for s in data[name].split(",")) if c]
        try:
            fields["prescriptions"] = json.loads(data["prescriptions"] or "[]")
        except ValueError:
            raise ValidationFailed("`prescriptions` must be a JSON list.") from None
        files = [NewAttachment(f.filename or "", f.mimetype or "", f.read()) for f in data["attachments"] if f.filename]
        return fields, files
    items = data.pop("attachments")
    files = [NewAttachment(i["filename"], i["content_type"], _b64(i["data"], i["filename"])) for i in items]
    return data, files


@bp.post("/patients/<patient_id>/records")
@idempotent
@_record_body
@bp.output(RecordCreated, status_code=201)
@bp.doc(
    operation_id="createRecord",
    security="BearerAuth",
    responses=_errors(
        {
            **SIGNED_OUT,
            403: "Only doctors write records.",
            404: "No such patient.",
            409: "The patient's keys do not match the ledger, or the Idempotency-Key's answer was lost.",
            413: "An attachment, or the body, is too large.",
            422: "A field is missing or not valid (codes, category, attachments), the Idempotency-Key is reused, "
            "or a FHIR Bundle cannot be imported (`fhir_rejected`: `fields` names each resource and its problem).",
        }
    ),
    extensions={
        "requestBody": {
            "content": {
                "application/json": {"schema": RecordIn},
                "multipart/form-data": {"schema": RecordForm},
                FHIR_JSON: {
                    "schema": {
                        "type": "object",
                        "description": "A FHIR R4 Bundle from another EHR, imported as one record (docs/fhir.md).",
                    }
                },
            },
        }
    },
)
def create_record(patient_id: str, data: dict[str, Any]) -> tuple[dict[str, Any], int]:
    actor = api_actor("doctor")
    context = {"vocabulary": runtime.vocabulary(), "limits": runtime.limits(), "node": runtime.node(), "now": utcnow()}
    if request.mimetype == FHIR_JSON:
        record = fhir.import_bundle(actor, patient_id, request.get_data(), **context)
    else:
        fields, files = _record_input(data)
        record = records.create_record(actor, patient_id, fields, files, **context)
    return {"id": record.id, "tx_hash": record.tx_hash}, 201


@bp.get("/records")
@bp.input(Page, location="query", arg_name="query")
@bp.output(RecordList)
@bp.doc(
    operation_id="listRecords",
    security="BearerAuth",
    responses=_errors({**SIGNED_OUT, 403: "Admins do not read records.", 422: "`limit` or `offset` out of range."}),
)
def list_records(query: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor()
    return listed("records", records.list_records(actor, *paging.bounds(query["limit"], query["offset"])))


FHIR_BUNDLE = "A FHIR R4 Bundle of type `collection` (docs/fhir.md), as a download."


@bp.get("/records/fhir")
@bp.output({}, content_type=FHIR_JSON, description=FHIR_BUNDLE)
@bp.doc(
    operation_id="exportOwnRecordFhir",
    security="BearerAuth",
    responses=_errors({**SIGNED_OUT, 403: "Only a patient exports their own record."}),
)
def export_own_fhir() -> Response:
    """The patient's whole record as one FHIR R4 Bundle (docs/fhir.md)."""
    bundle = fhir.export_own(api_actor("patient"), node=runtime.node(), now=utcnow())
    return send_fhir(bundle, "medledger-record")


@bp.get("/patients/<patient_id>/fhir")
@bp.output({}, content_type=FHIR_JSON, description=FHIR_BUNDLE)
@bp.doc(
    operation_id="exportPatientFhir",
    security="BearerAuth",
    responses=_errors({**SIGNED_OUT, 403: "You have no access to this patient's records.", 404: "No such patient."}),
)
def export_patient_fhir(patient_id: str) -> Response:
    """What the doctor's access covers, as a FHIR R4 Bundle: every record and attachment in it
    is a read in the patient's access log."""
    bundle = fhir.export_for_doctor(api_actor("doctor"), patient_id, node=runtime.node(), now=utcnow())
    return send_fhir(bundle, "medledger-patient")


@bp.get("/records/<record_id>")
@bp.output(RecordOut)
@bp.doc(
    operation_id="getRecord",
    security="BearerAuth",
    responses=_errors(
        {
            **SIGNED_OUT,
            403: "You may not read this record (ask the patient for access).",
            404: "No such record.",
            409: "The record cannot be read (`record_unreadable`).",
        }
    ),
)
def get_record(record_id: str) -> dict[str, Any]:
    return records.get_record(api_actor(), record_id, node=runtime.node(), now=utcnow())


class AttachmentQuery(Schema):
    inline = QueryWhole(
        0,
        1,
        metadata={
            "description": "1: to be shown rather than saved (`Content-Disposition: inline`, with a sandboxing "
            "Content-Security-Policy), for an image or a PDF; other types are always a download. Same access "
            "check and access-log entry as the download."
        },
    )


@bp.get("/records/<record_id>/attachments/<int:n>")
@bp.input(AttachmentQuery, location="query", arg_name="query")
@bp.output(
    {},
    content_type="application/octet-stream",
    description="The attachment's bytes, with its real type (application/pdf, image/png, image/jpeg or "
    "image/webp) and file name (Content-Disposition: attachment, or inline with `?inline=1`).",
)
@bp.doc(
    operation_id="getAttachment",
    security="BearerAuth",
    responses=_errors(
        {
            **SIGNED_OUT,
            403: "You may not read this record.",
            404: "No such record or attachment.",
            409: "The attachment cannot be read (`record_unreadable`).",
        }
    ),
)
def get_attachment(record_id: str, n: int, query: dict[str, Any]) -> Response:
    meta, data = records.get_attachment(api_actor(), record_id, n, node=runtime.node(), now=utcnow())
    return send_attachment(meta, data, inline=query.get("inline") == 1)


@bp.get("/chain/blocks")
@bp.input(BlockPage, location="query", arg_name="query")
@bp.output(BlockHeaders)
@bp.doc(operation_id="listBlocks", responses=_errors({422: "`from` or `limit` out of range."}))
def chain_blocks(query: dict[str, Any]) -> dict[str, Any]:
    blocks, height = ledger.headers(query["from_"], query["limit"])
    return {"blocks": blocks, "height": height}


@bp.get(f"/chain/blocks/<int(max={MAX_OFFSET}):height>")
@bp.output(BlockOut)
@bp.doc(operation_id="getBlock", responses=_errors({404: "No block at this height."}))
def chain_block(height: int) -> dict[str, Any]:
    return ledger.block(height)


@bp.get("/consensus")
@bp.output(Consensus)
@bp.doc(operation_id="getConsensus", responses=_errors({422: "The chain has no genesis block or consensus state."}))
def consensus() -> dict[str, Any]:
    return ledger.consensus_status(utcnow())


@bp.get("/chain/verify")
@bp.output(ChainReport)
@bp.doc(operation_id="verifyChain", responses={})
def chain_verify() -> dict[str, Any]:
    return ledger.verify_chain().to_dict()


@bp.post("/votes")
@bp.input(Vote, location="json", arg_name="data")
@bp.output(VoteCast, status_code=201)
@bp.doc(
    operation_id="castVote",
    security="BearerAuth",
    responses=_errors({**SIGNED_OUT, 422: "Not a list of candidate nodes, empty, too long or repeated."}),
)
def cast_vote(data: dict[str, Any]) -> tuple[dict[str, Any], int]:
    actor = api_actor()
    nodes = data["nodes"]
    tx_hash = votes.cast_vote(actor, nodes, now=utcnow())
    return {"tx_hash": tx_hash, "nodes": nodes}, 201


@bp.get("/votes")
@bp.output(CurrentVote)
@bp.doc(operation_id="getVote", security="BearerAuth", responses=_errors(SIGNED_OUT))
def current_vote() -> dict[str, Any]:
    return {"nodes": votes.current_vote(api_actor())}
