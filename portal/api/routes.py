from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from flask import Response, current_app, jsonify, request, send_file

from portal import runtime
from portal.api import api_actor, bearer_token, bp, iso, json_body
from portal.idempotency import idempotent
from portal.limits import limiter, registration_limit
from portal.models import User, utcnow
from portal.services import accounts, chat, federation, ledger, records, throttle, two_factor, votes
from portal.services.errors import Conflict, ValidationFailed
from portal.services.inputs import MAX_OFFSET
from portal.services.records import NewAttachment


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.public_id,
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "hospital": user.hospital,
    }


@bp.post("/auth/register")
@idempotent
@limiter.limit(registration_limit, methods=["POST"])
def register() -> tuple[Response, int]:
    data = json_body()
    user = accounts.create_user(
        role="patient",
        username=data.get("username"),
        password=data.get("password"),
        display_name=data.get("display_name"),
        kdf=runtime.kdf(),
        home=runtime.node_key(),
        now=utcnow(),
    )
    return jsonify(user=user_json(user)), 201


@bp.post("/auth/token")
def token() -> Response:
    data = json_body()
    signed_in = accounts.login(
        data.get("username"),
        data.get("password"),
        kind="api",
        ttl_seconds=current_app.config["API_TOKEN_TTL_SECONDS"],
        kdf=runtime.kdf(),
        now=utcnow(),
        address=request.remote_addr,
        policy=throttle.policy_from(current_app.config),
        otp=data.get("otp"),
        two_factor_roles=two_factor.required_roles(current_app.config),
    )
    return jsonify(
        token=signed_in.token,
        expires_at=iso(signed_in.session.expires_at),
        user=user_json(signed_in.session.user),
        failed_attempts={"count": signed_in.failed_attempts, "last_at": iso(signed_in.last_failed_at)},
    )


@bp.delete("/auth/token")
def revoke_token() -> tuple[str, int]:
    from portal.chat.events import end_session

    api_actor()
    end_session(bearer_token())
    accounts.logout(bearer_token())
    return "", 204


@bp.get("/me")
def me() -> Response:
    return jsonify(user=user_json(api_actor().user))


@bp.get("/me/two-factor")
def two_factor_status() -> Response:
    user = api_actor().user
    return jsonify(enabled=two_factor.enabled(user), recovery_codes_left=two_factor.recovery_codes_left(user))


@bp.post("/me/two-factor")
def two_factor_begin() -> tuple[Response, int]:
    """Start setting up (or over): a new secret, as text, otpauth URI and QR code (SVG)."""
    actor = api_actor()
    if two_factor.enabled(actor.user):
        raise Conflict("Two-factor sign-in is on already; turn it off first to set up another app.")
    enrolment = two_factor.begin(actor.user, actor.user_key(), f"{actor.user.username}@{current_app.config['NODE_ID']}")
    return jsonify(secret=enrolment.secret, uri=enrolment.uri, qr_svg=enrolment.qr_svg), 201


@bp.post("/me/two-factor/confirm")
def two_factor_confirm() -> Response:
    actor = api_actor()
    codes = two_factor.confirm(actor.user, actor.user_key(), json_body().get("code"), utcnow())
    return jsonify(enabled=True, recovery_codes=codes)


@bp.delete("/me/two-factor")
def two_factor_off() -> tuple[str, int]:
    actor = api_actor()
    roles = two_factor.required_roles(current_app.config)
    two_factor.turn_off(actor.user, actor.user_key(), json_body().get("code"), utcnow(), roles)
    return "", 204


@bp.post("/me/password")
def change_password() -> tuple[str, int]:
    from portal.chat.events import close_sockets

    actor = api_actor()
    data = json_body()
    others = chat.sockets_of_other_sessions(actor)
    accounts.change_password(actor, data.get("current_password"), data.get("new_password"), runtime.kdf())
    close_sockets(others)  # their sessions have just ended
    return "", 204


@bp.get("/patients")
def find_patients() -> Response:
    api_actor("doctor")
    patients = accounts.find_users("patient", request.args.get("q", ""))
    return jsonify(patients=[{k: user_json(p)[k] for k in ("id", "username", "display_name")} for p in patients])


@bp.get("/patients/<patient_id>")
def get_patient(patient_id: str) -> Response:
    """A patient of any member hospital by consortium id: name and home hospital, from the
    home node (patients are found by name only at home)."""
    api_actor("doctor")
    patient = federation.resolve(accounts.get_user(patient_id, role="patient"), runtime.peers())
    return jsonify(
        id=patient.public_id,
        display_name=patient.display_name,
        home_node=patient.home_node,
        home_hospital=federation.hospital_of(patient.home_node),
    )


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValidationFailed(f"Attachment {name!r} needs base64 `data`.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed(f"Attachment {name!r} is not valid base64.") from None


def _record_input() -> tuple[dict[str, Any], list[NewAttachment]]:
    """Fields and attachments from JSON or from a multipart form (see docs/api.md)."""
    if request.mimetype == "multipart/form-data":
        fields: dict[str, Any] = {k: request.form.get(k, "") for k in ("title", "category", "notes")}
        for name in ("diagnoses", "symptoms"):
            fields[name] = [c for c in (s.strip() for s in request.form.get(name, "").split(",")) if c]
        try:
            fields["prescriptions"] = json.loads(request.form.get("prescriptions") or "[]")
        except ValueError:
            raise ValidationFailed("`prescriptions` must be a JSON list.") from None
        files = [
            NewAttachment(f.filename or "", f.mimetype or "", f.read())
            for f in request.files.getlist("attachments")
            if f.filename
        ]
        return fields, files
    data = json_body()
    items = data.pop("attachments", None) or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValidationFailed("`attachments` must be a list of objects.")
    files = [
        NewAttachment(
            str(i.get("filename") or ""), str(i.get("content_type") or ""), _b64(i.get("data"), str(i.get("filename")))
        )
        for i in items
    ]
    return data, files


@bp.post("/patients/<patient_id>/records")
@idempotent
def create_record(patient_id: str) -> tuple[Response, int]:
    actor = api_actor("doctor")
    fields, files = _record_input()
    record = records.create_record(
        actor,
        patient_id,
        fields,
        files,
        vocabulary=runtime.vocabulary(),
        limits=runtime.limits(),
        node=runtime.node(),
        now=utcnow(),
    )
    return jsonify(id=record.id, tx_hash=record.tx_hash), 201


@bp.get("/records")
def list_records() -> Response:
    actor = api_actor()
    limit, offset = records.page_bounds(request.args.get("limit"), request.args.get("offset"))
    page = records.list_records(actor, limit, offset)
    return jsonify(records=page, next_offset=offset + limit if len(page) == limit else None)


@bp.get("/records/<record_id>")
def get_record(record_id: str) -> Response:
    return jsonify(records.get_record(api_actor(), record_id, node=runtime.node(), now=utcnow()))


@bp.get("/records/<record_id>/attachments/<int:n>")
def get_attachment(record_id: str, n: int) -> Response:
    meta, data = records.get_attachment(api_actor(), record_id, n, node=runtime.node(), now=utcnow())
    return send_file(
        io.BytesIO(data), mimetype=meta["content_type"], as_attachment=True, download_name=meta["filename"]
    )


@bp.get("/chain/blocks")
def chain_blocks() -> Response:
    blocks, height = ledger.headers(request.args.get("from"), request.args.get("limit"))
    return jsonify(blocks=blocks, height=height)


@bp.get(f"/chain/blocks/<int(max={MAX_OFFSET}):height>")
def chain_block(height: int) -> Response:
    return jsonify(ledger.block(height))


@bp.get("/consensus")
def consensus() -> Response:
    return jsonify(ledger.consensus_status(utcnow()))


@bp.get("/chain/verify")
def chain_verify() -> Response:
    return jsonify(ledger.verify_chain().to_dict())


@bp.post("/votes")
def cast_vote() -> tuple[Response, int]:
    actor = api_actor()
    nodes = json_body().get("nodes")
    tx_hash = votes.cast_vote(actor, nodes, now=utcnow())
    return jsonify(tx_hash=tx_hash, nodes=nodes), 201


@bp.get("/votes")
def current_vote() -> Response:
    return jsonify(nodes=votes.current_vote(api_actor()))
