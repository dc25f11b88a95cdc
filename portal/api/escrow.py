"""Hospital-assisted recovery in the API (services/escrow.py, docs/recovery.md): the patient's
choice and past recoveries. The front desk's one-time code sets a new password at
`POST /auth/recover` (api/recovery.py), beside the recovery key."""

from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, List, Nested, String

from portal.api import api_actor, bp, iso
from portal.api.schemas import SIGNED_OUT, Flag, error_answers
from portal.models import utcnow
from portal.services import escrow


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
            "yet; waiting: waiting for a second hospital (no other member hospital to hold the second share yet, "
            "or the one that held it left): made automatically at the first sign-in after one has joined; "
            "off: opted out.",
        },
    )
    holder = String(required=True, allow_none=True, metadata={"description": "The node holding the other share."})
    holder_hospital = String(required=True, allow_none=True)
    can_turn_off = Boolean(required=True, metadata={"description": "Patients only: doctors are always escrowed."})
    recoveries = List(Nested(EscrowRecovery), required=True)


class EscrowChoice(Schema):
    enabled = Flag(required=True, metadata={"description": "false: both shares are deleted."})


def _status(data: dict[str, Any]) -> dict[str, Any]:
    for item in data["recoveries"]:
        item["completed_at"] = iso(item["completed_at"])
    return data


@bp.get("/account/escrow")
@bp.output(EscrowStatus)
@bp.doc(operation_id="getEscrow", security="BearerAuth", responses=error_answers(SIGNED_OUT))
def escrow_status() -> dict[str, Any]:
    """Whether two hospitals keep the account's key in escrow, and its past recoveries."""
    return _status(escrow.status(api_actor().user))


@bp.put("/account/escrow")
@bp.input(EscrowChoice, location="json", arg_name="data")
@bp.output(EscrowStatus)
@bp.doc(
    operation_id="setEscrow",
    security="BearerAuth",
    responses=error_answers(
        {**SIGNED_OUT, 403: "Only patients choose (doctors are always escrowed).", 422: "Not a bool."}
    ),
)
def escrow_choice(data: dict[str, Any]) -> dict[str, Any]:
    """Turn hospital-assisted recovery off (both shares are deleted) or on again (new shares)."""
    return _status(escrow.set_enabled(api_actor(), data["enabled"], utcnow()))
