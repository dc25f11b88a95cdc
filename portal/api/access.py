"""API for patient-controlled access: requests, grants, the access log, emergency access."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request

from portal import runtime
from portal.api import api_actor, bp, iso, json_body
from portal.idempotency import idempotent
from portal.models import AccessEntry, AccessRequest, EmergencyAccess, Grant, User, utcnow
from portal.services import access_log, accounts, federation, grants, records
from portal.services.accounts import Actor
from portal.services.records import CATEGORIES


def person(user: User | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {
        "id": user.public_id,
        "display_name": user.display_name,
        "hospital": user.hospital or federation.hospital_of(user.home_node),
        "home_hospital": federation.hospital_of(user.home_node),
    }


def request_json(actor: Actor, item: AccessRequest) -> dict[str, Any]:
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


def grant_json(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "doctor": person(grant.doctor),
        "patient": person(grant.patient),
        "scope": grants.grant_scope(grant),
        "scope_text": grants.describe_scope(grants.grant_scope(grant)),
        "created_at": iso(grant.created_at),
        "expires_at": iso(grant.expires_at),
        "revoked_at": iso(grant.revoked_at),
        "status": grants.grant_status(grant, utcnow()),
        "tx_hash": grant.tx_hash,
    }


def emergency_json(actor: Actor | None, item: EmergencyAccess) -> dict[str, Any]:
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


def entry_json(entry: AccessEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "record": {"id": entry.record_id, "created_at": iso(entry.record.created_at)},
        "reader": person(entry.reader),
        "mode": entry.mode,
        "grant_id": entry.grant_id,
        "part": "record" if entry.part < 0 else f"attachment {entry.part + 1}",
        "at": iso(entry.at),
        "tx_hash": entry.tx_hash,
    }


@bp.post("/access-requests")
@idempotent
def create_access_request() -> tuple[Response, int]:
    actor = api_actor("doctor")
    data = json_body()
    item = grants.request_access(
        actor, data.get("patient_id"), data.get("reason"), data.get("days"), data.get("scope"),
        node=runtime.node(), categories=CATEGORIES, now=utcnow(),
    )  # fmt: skip
    return jsonify(request_json(actor, item)), 201


@bp.get("/access-requests")
def list_access_requests() -> Response:
    actor = api_actor()
    return jsonify(requests=[request_json(actor, r) for r in grants.list_requests(actor)])


@bp.post("/access-requests/<request_id>/approve")
@idempotent
def approve_access_request(request_id: str) -> tuple[Response, int]:
    actor = api_actor("patient")
    grant = grants.approve_request(actor, request_id, node=runtime.node(), now=utcnow())
    return jsonify(grant_json(grant)), 201


@bp.post("/access-requests/<request_id>/decline")
def decline_access_request(request_id: str) -> Response:
    actor = api_actor("patient")
    return jsonify(request_json(actor, grants.decline_request(actor, request_id, now=utcnow())))


@bp.post("/grants")
@idempotent
def create_grant() -> tuple[Response, int]:
    actor = api_actor("patient")
    data = json_body()
    grant = grants.create_grant(
        actor, data.get("doctor_id"), data.get("days"), data.get("scope"),
        node=runtime.node(), categories=CATEGORIES, now=utcnow(),
    )  # fmt: skip
    return jsonify(grant_json(grant)), 201


@bp.get("/grants")
def list_grants() -> Response:
    return jsonify(grants=[grant_json(g) for g in grants.list_grants(api_actor())])


@bp.delete("/grants/<grant_id>")
def revoke_grant(grant_id: str) -> Response:
    actor = api_actor("patient")
    return jsonify(grant_json(grants.revoke_grant(actor, grant_id, now=utcnow())))


@bp.get("/patients/<patient_id>/records")
def patient_records(patient_id: str) -> Response:
    actor = api_actor("doctor")
    visible = grants.visible_records(actor, patient_id, node=runtime.node(), now=utcnow())
    return jsonify(records=[records.metadata(r) for r in visible])


@bp.get("/doctors")
def find_doctors() -> Response:
    api_actor("patient", "doctor")
    query = request.args.get("q", "")
    local = accounts.find_users("doctor", query, local_only=True)
    return jsonify(doctors=[person(d) for d in federation.find_doctors(query, local, runtime.peers())])


@bp.get("/access-log")
def access_log_view() -> Response:
    actor = api_actor("patient")
    limit, offset = records.page_bounds(request.args.get("limit"), request.args.get("offset"))
    page = access_log.for_patient(actor, limit, offset)
    return jsonify(entries=[entry_json(e) for e in page], next_offset=offset + limit if len(page) == limit else None)


@bp.get("/emergency-access")
def emergency_status() -> Response:
    actor = api_actor("patient")
    optin = grants.emergency_optin(actor.user, utcnow())
    return jsonify(
        enabled=optin is not None,
        emergencies=[emergency_json(actor, e) for e in grants.emergencies_for(actor.user)],
    )


@bp.put("/emergency-access")
def set_emergency() -> Response:
    actor = api_actor("patient")
    optin = grants.set_emergency_optin(actor, json_body().get("enabled"), node=runtime.node(), now=utcnow())
    return jsonify(enabled=optin is not None)


@bp.post("/patients/<patient_id>/emergency")
def declare_emergency(patient_id: str) -> tuple[Response, int]:
    actor = api_actor("doctor")
    emergency = grants.declare_emergency(
        actor, patient_id, json_body().get("reason"), node=runtime.node(), now=utcnow()
    )
    return jsonify(emergency_json(actor, emergency)), 201


@bp.get("/patients-with-access")
def my_patients() -> Response:
    actor = api_actor("doctor")
    return jsonify(
        patients=[
            {
                "patient": person(entry["patient"]),
                "grants": [grant_json(g) for g in entry["grants"]],
                "emergency": emergency_json(actor, entry["emergency"]) if entry["emergency"] else None,
            }
            for entry in grants.patients_of(actor, utcnow())
        ]
    )
