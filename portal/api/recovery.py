"""API for a patient's recovery key and "Forgot password" with it (docs/recovery.md)."""

from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Integer, List, String
from flask import current_app, request

from portal import runtime
from portal.api import api_actor, bp, iso
from portal.api.schemas import Text, answer
from portal.models import utcnow
from portal.services import recovery, throttle


def _errors(answers: dict[int, str]) -> dict[int, dict[str, Any]]:
    return {status: answer(text) for status, text in answers.items()}


def _text(name: str, **kwargs: Any) -> Text:
    return Text(error_messages={"required": f"`{name}` is required.", "invalid": f"`{name}` must be text."}, **kwargs)


class RecoveryStatus(Schema):
    set = Boolean(required=True, metadata={"description": "A confirmed recovery key is active."})
    set_at = String(required=True, allow_none=True, metadata={"format": "date-time"})
    pending = Boolean(required=True, metadata={"description": "A new key waits for its two words."})


class PasswordAgain(Schema):
    password = _text("password", required=True)


class NewRecoveryKey(Schema):
    words = List(String(), required=True, metadata={"description": "The 12 words, in order. Shown once."})
    confirm = List(Integer(), required=True, metadata={"description": "Two positions (1-12) to ask the patient."})
    qr_svg = String(required=True, metadata={"description": "The 12 words as a QR code (SVG)."})


# marshmallow formats its messages (str.format), so the braces are doubled.
WORDS_MESSAGE = '`words` must map the two positions asked for to words, e.g. {{"3": "apple", "9": "river"}}.'


class RecoveryConfirm(Schema):
    words = Dict(
        keys=String(),
        values=String(),
        required=True,
        error_messages={"required": WORDS_MESSAGE, "invalid": WORDS_MESSAGE, "null": WORDS_MESSAGE},
        metadata={"example": {"3": "apple", "9": "river"}},
    )


class Recover(Schema):
    username = _text("username", required=True, metadata={"example": "dana.k"})
    recovery_key = _text("recovery_key", required=True, metadata={"description": "The 12 words, space-separated."})
    new_password = _text("new_password", required=True, metadata={"description": "As at registration."})


SIGNED_OUT = {401: "No token, or the token is invalid or has expired."}
PATIENTS_ONLY = {403: "Only patients of this hospital have a recovery key."}


def _status(user_status: recovery.Status) -> dict[str, Any]:
    return {"set": user_status.set_at is not None, "set_at": iso(user_status.set_at), "pending": user_status.pending}


@bp.get("/account/recovery-key")
@bp.output(RecoveryStatus)
@bp.doc(operation_id="getRecoveryKey", security="BearerAuth", responses=_errors({**SIGNED_OUT, **PATIENTS_ONLY}))
def recovery_status() -> dict[str, Any]:
    return _status(recovery.status(api_actor()))


@bp.post("/account/recovery-key")
@bp.input(PasswordAgain, location="json", arg_name="data")
@bp.output(NewRecoveryKey, status_code=201)
@bp.doc(
    operation_id="beginRecoveryKey",
    security="BearerAuth",
    responses=_errors(
        {
            **SIGNED_OUT,
            **PATIENTS_ONLY,
            422: "The password is missing or not right.",
            429: "Too many wrong passwords; wait.",
        }
    ),
)
def recovery_begin(data: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A new recovery key, shown once: it replaces the active one only when confirmed."""
    key = recovery.begin(
        api_actor(),
        data["password"],
        now=utcnow(),
        address=request.remote_addr,
        policy=throttle.policy_from(current_app.config),
    )
    return {"words": key.words, "confirm": list(key.confirm), "qr_svg": key.qr_svg}, 201


@bp.post("/account/recovery-key/confirm")
@bp.input(RecoveryConfirm, location="json", arg_name="data")
@bp.output(RecoveryStatus)
@bp.doc(
    operation_id="confirmRecoveryKey",
    security="BearerAuth",
    responses=_errors(
        {
            **SIGNED_OUT,
            **PATIENTS_ONLY,
            409: "No new recovery key is waiting (`POST /account/recovery-key` first).",
            422: "The words are missing or not the ones asked for; the active key stays.",
        }
    ),
)
def recovery_confirm(data: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor()
    recovery.confirm(actor, data["words"], now=utcnow())
    return _status(recovery.status(actor))


@bp.post("/auth/recover")
@bp.input(Recover, location="json", arg_name="data")
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="recoverAccount",
    responses=_errors(
        {
            401: "The username and recovery key do not match (the same answer whichever is wrong).",
            422: "A field is missing, or the new password is too short or easy to guess.",
            429: "Too many attempts; wait.",
        }
    ),
)
def recover(data: dict[str, Any]) -> str:
    """Forgot password: set a new one with the recovery key. Every session of the account ends."""
    from portal.chat.events import close_sockets

    done = recovery.recover(
        data["username"],
        data["recovery_key"],
        data["new_password"],
        kdf=runtime.kdf(),
        now=utcnow(),
        address=request.remote_addr,
        policy=throttle.policy_from(current_app.config),
    )
    close_sockets(done.sockets)
    return ""
