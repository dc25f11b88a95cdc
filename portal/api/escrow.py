"""Hospital-assisted recovery in the API (services/escrow.py, docs/recovery.md): the patient's
choice, and setting a new password with the code the front desk handed over."""

from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, List, Nested, String

from portal import runtime
from portal.api import api_actor, bp, iso
from portal.api.schemas import Flag, Text, answer
from portal.limits import limiter, registration_limit
from portal.models import utcnow
from portal.services import escrow


def _errors(answers: dict[int, str]) -> dict[int, dict[str, Any]]:
    return {status: answer(text) for status, text in answers.items()}


SIGNED_OUT = {401: "No token, or the token is invalid or has expired."}


class EscrowRecovery(Schema):
    case = String(required=True)
    completed_at = String(required=True, allow_none=True, metadata={"format": "date-time"})
    opened_by = String(required=True, metadata={"description": "The admin who checked the identity in person."})
    approved_by = String(required=True, allow_none=True, metadata={"description": "The admin who approved it."})
    approved_by_hospital = String(required=True, allow_none=True)
    tx_hash = String(required=True, allow_none=True, metadata={"description": "Its `escrow_recovery` transaction."})


class EscrowStatus(Schema):
    enabled = Boolean(required=True, metadata={"description": "Whether the hospitals keep the key in escrow."})
    state = String(
        required=True,
        metadata={
            "enum": ["held", "delivering", "waiting", "off", "not_offered"],
            "description": "held: both shares kept; delivering: the second hospital has not taken its share "
            "yet; waiting: made at the next sign-in (or once a second hospital has joined); off: opted out.",
        },
    )
    holder = String(required=True, allow_none=True, metadata={"description": "The node holding the other share."})
    holder_hospital = String(required=True, allow_none=True)
    can_turn_off = Boolean(required=True, metadata={"description": "Patients only: doctors are always escrowed."})
    recoveries = List(Nested(EscrowRecovery), required=True)


class EscrowChoice(Schema):
    enabled = Flag(required=True, metadata={"description": "false: both shares are deleted."})


class RecoverWithCode(Schema):
    username = Text(required=True)
    hospital_code = Text(required=True, metadata={"description": "The one-time code the front desk handed over."})
    new_password = Text(required=True)


class Recovered(Schema):
    recovered = Boolean(required=True)
    username = String(required=True)


def _status(data: dict[str, Any]) -> dict[str, Any]:
    for item in data["recoveries"]:
        item["completed_at"] = iso(item["completed_at"])
    return data


@bp.get("/account/escrow")
@bp.output(EscrowStatus)
@bp.doc(operation_id="getEscrow", security="BearerAuth", responses=_errors(SIGNED_OUT))
def escrow_status() -> dict[str, Any]:
    """Whether two hospitals keep the account's key in escrow, and its past recoveries."""
    return _status(escrow.status(api_actor().user))


@bp.put("/account/escrow")
@bp.input(EscrowChoice, location="json", arg_name="data")
@bp.output(EscrowStatus)
@bp.doc(
    operation_id="setEscrow",
    security="BearerAuth",
    responses=_errors({**SIGNED_OUT, 403: "Only patients choose (doctors are always escrowed).", 422: "Not a bool."}),
)
def escrow_choice(data: dict[str, Any]) -> dict[str, Any]:
    """Turn hospital-assisted recovery off (both shares are deleted) or on again (new shares)."""
    return _status(escrow.set_enabled(api_actor(), data["enabled"], utcnow()))


@bp.post("/auth/recover-with-code")
@limiter.limit(registration_limit)
@bp.input(RecoverWithCode, location="json", arg_name="data")
@bp.output(Recovered)
@bp.doc(
    operation_id="recoverWithCode",
    responses=_errors(
        {
            401: "The username or code is wrong, or the code has expired or was used.",
            422: "A field is missing, or the new password is too easy to guess.",
            429: "Too many attempts from this address; wait and try again.",
        }
    ),
)
def recover_with_code(data: dict[str, Any]) -> dict[str, Any]:
    """Set a new password with the one-time code from the home hospital's front desk: the same
    keys, records and grants; every session ends; the next sign-in says it happened."""
    user = escrow.recover_with_code(
        data["username"], data["hospital_code"], data["new_password"], runtime.kdf(), utcnow()
    )
    return {"recovered": True, "username": user.username}
