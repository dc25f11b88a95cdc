"""API for a patient's recovery key, and "Forgot password": one route that takes one of two
proofs, the recovery key's 12 words or the one-time code of the home hospital's front desk
(docs/recovery.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Integer, List, String
from apiflask.schema_adapters.marshmallow import parser
from flask import current_app, request
from sqlalchemy import select

from portal import runtime
from portal.api import api_actor, bp, iso, json_body
from portal.api.schemas import SIGNED_OUT, THROTTLED, Text, error_answers
from portal.extensions import db
from portal.models import AuthSession, ChatSocket, User, utcnow
from portal.services import accounts, escrow, recovery, throttle
from portal.services.errors import Unauthorized, ValidationFailed


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


class RecoverWithKey(Schema):
    """Forgot password, with the patient's recovery key."""

    username = _text("username", required=True, metadata={"example": "dana.k"})
    recovery_key = _text("recovery_key", required=True, metadata={"description": "The 12 words, space-separated."})
    new_password = _text("new_password", required=True, metadata={"description": "As at registration."})


class RecoverWithCode(Schema):
    """Forgot password, with the one-time code the home hospital's front desk handed over (escrow)."""

    username = _text("username", required=True, metadata={"example": "dana.k"})
    desk_code = _text(
        "desk_code",
        required=True,
        metadata={
            "description": "The front desk's one-time code: 20 letters and digits (dashes, spaces and case do not "
            "matter), valid once, for one hour.",
            "example": "ABCD-EFGH-JKLM-NPQR-STUV",
        },
    )
    new_password = _text("new_password", required=True, metadata={"description": "As at registration."})


# The body names its proof: the schema of that one validates it.
PROOFS: dict[str, type[Schema]] = {"recovery_key": RecoverWithKey, "desk_code": RecoverWithCode}
NO_PROOF = "Send one proof: `recovery_key` (the 12 words) or `desk_code` (the front desk's one-time code)."
TWO_PROOFS = "Send one proof only: `recovery_key` or `desk_code`, not both."
# One answer for every failed proof, whichever it was and whatever was wrong (the account, the
# words, the code, a used or expired code), so nobody learns which part was wrong or whether the
# account exists.
NO_MATCH = (
    "That username and recovery key or front-desk code do not match (a code works once, for one hour). "
    "Check them and try again."
)
PATIENTS_ONLY = {403: "Only patients of this hospital have a recovery key."}


def _status(user_status: recovery.Status) -> dict[str, Any]:
    return {"set": user_status.set_at is not None, "set_at": iso(user_status.set_at), "pending": user_status.pending}


@bp.get("/account/recovery-key")
@bp.output(RecoveryStatus)
@bp.doc(operation_id="getRecoveryKey", security="BearerAuth", responses=error_answers({**SIGNED_OUT, **PATIENTS_ONLY}))
def recovery_status() -> dict[str, Any]:
    return _status(recovery.status(api_actor()))


@bp.post("/account/recovery-key")
@bp.input(PasswordAgain, location="json", arg_name="data")
@bp.output(NewRecoveryKey, status_code=201)
@bp.doc(
    operation_id="beginRecoveryKey",
    security="BearerAuth",
    responses=error_answers(
        {
            **SIGNED_OUT,
            **PATIENTS_ONLY,
            422: "The password is missing or not right (counted like a failed sign-in).",
            **THROTTLED,
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
    responses=error_answers(
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


def _recover_body(view: Callable[..., Any]) -> Callable[..., Any]:
    """The body of a reset, as `data`: it must carry exactly one proof, and the schema of that
    proof validates it (both are documented, as a oneOf)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = [name for name in PROOFS if name in json_body()]
        if len(given) != 1:
            raise ValidationFailed(TWO_PROOFS if given else NO_PROOF)
        return view(*args, data=parser.parse(PROOFS[given[0]](), request, location="json"), **kwargs)

    return wrapper


def _chat_sockets(username: str) -> list[str]:
    """The /chat connections of every session of the account: read before a reset ends the
    sessions (their rows go with them), closed after it, as at a password change."""
    sessions = select(AuthSession.id).join(User, AuthSession.user_id == User.id).where(User.username == username)
    return list(db.session.scalars(select(ChatSocket.sid).where(ChatSocket.session_id.in_(sessions))))


def _with_desk_code(data: dict[str, Any], *, address: str | None, policy: throttle.Policy) -> list[str]:
    """The desk's code sets the new password (services/escrow.py), checked and throttled as the
    recovery key is: a weak new password is refused before the code is tried, and a wrong code
    counts like a failed sign-in. Answers the chat connections of the sessions it ended."""
    username, now = data["username"], utcnow()
    accounts.check_password(data["new_password"], [username])
    throttle.check(username, address, policy, now)
    sockets = _chat_sockets(username)
    try:
        escrow.recover_with_code(username, data["desk_code"], data["new_password"], runtime.kdf(), now)
    except Unauthorized:
        db.session.rollback()
        throttle.failed(username, address, policy, now)
        raise
    throttle.succeeded(username)
    db.session.commit()
    return sockets


@bp.post("/auth/recover")
@_recover_body
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="recoverAccount",
    responses=error_answers(
        {
            401: "The username and the proof do not match: one answer whatever was wrong (the account, the words, "
            "the code, or a code used or expired).",
            422: "Neither or both of `recovery_key` and `desk_code`, a field missing or not text, or a new password "
            "too short or easy to guess (refused before the proof is tried).",
            **THROTTLED,
        }
    ),
    extensions={
        "requestBody": {
            "content": {"application/json": {"schema": {"oneOf": [RecoverWithKey, RecoverWithCode]}}},
        }
    },
)
def recover(data: dict[str, Any]) -> str:
    """Forgot password: set a new one with the recovery key or the front desk's one-time code.
    The same keys, records and grants; every session of the account ends, its chat connections
    close, and the next sign-in says it happened."""
    from portal.chat.events import close_sockets

    address, policy = request.remote_addr, throttle.policy_from(current_app.config)
    try:
        if "recovery_key" in data:
            sockets = recovery.recover(
                data["username"],
                data["recovery_key"],
                data["new_password"],
                kdf=runtime.kdf(),
                now=utcnow(),
                address=address,
                policy=policy,
            ).sockets
        else:
            sockets = _with_desk_code(data, address=address, policy=policy)
    except Unauthorized:
        raise Unauthorized(NO_MATCH) from None
    close_sockets(sockets)  # their sessions have just ended
    return ""
