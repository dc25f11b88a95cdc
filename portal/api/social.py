"""API for symptom matching and chat (patients only; see docs/api.md "Matching and chat")."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request

from core.clinical import Vocabulary
from core.errors import CoreError
from portal import runtime
from portal.api import api_actor, bp, iso, json_body
from portal.extensions import db
from portal.models import ChatKey, Connection, User, utcnow
from portal.services import chat, ledger, matching
from portal.services.errors import ValidationFailed
from portal.services.inputs import whole_number

MAX_QUERY = 100


def connection_json(connection: Connection, me: User, unread: int = 0) -> dict[str, Any]:
    peer_user = db.session.get(User, matching.peer_of(connection, me))
    return {
        "id": str(connection.id),
        "peer": matching.pseudonym_of(peer_user, runtime.pseudonym_key()) if peer_user else None,
        "state": connection.state,
        "direction": "out" if connection.requester_id == me.id else "in",
        "unread": unread,
        "created_at": iso(connection.created_at),
        "decided_at": iso(connection.decided_at),
    }


def key_json(row: ChatKey) -> dict[str, Any]:
    return {
        "key": row.key,
        "fingerprint": row.fingerprint,
        "tx": row.tx_hash,
        "height": ledger.block_height_of(row.tx_hash),
        "salt": row.salt,
        "subject": row.subject,
        "registered_at": iso(row.created_at),
        "superseded_at": iso(row.superseded_at),
    }


def profile_json(view: matching.ProfileView | None) -> dict[str, Any] | None:
    if view is None:
        return None
    return {
        "terms": view.terms,
        "diagnosis": view.diagnosis,
        "age_band": view.age_band,
        "sex": view.sex,
        "discoverable": view.discoverable,
    }


def _query_text() -> str:
    text = request.args.get("q", "")
    if len(text) > MAX_QUERY:
        raise ValidationFailed(f"`q` is longer than {MAX_QUERY} characters.")
    return text


def _limit(default: int, maximum: int) -> int:
    return whole_number(request.args.get("limit"), "limit", default=default, low=1, high=maximum)


# -- vocabulary -----------------------------------------------------------------------------


@bp.get("/symptoms")
def search_symptoms() -> Response:
    api_actor("patient")
    found = runtime.vocabulary().search_symptoms(_query_text(), _limit(20, 50))
    return jsonify(symptoms=[{"id": s.id, "name": s.name} for s in found])


@bp.get("/diagnoses")
def lookup_diagnoses() -> Response:
    """Exact ICD-10-CM code lookup (a code with or without the dot)."""
    api_actor("patient")
    vocabulary: Vocabulary = runtime.vocabulary()
    text = _query_text().strip()
    found = []
    if text:
        try:
            diagnosis = vocabulary.diagnosis(text)
            found.append({"code": diagnosis.code, "description": diagnosis.description})
        except CoreError:
            pass
    return jsonify(diagnoses=found)


# -- profile and matches --------------------------------------------------------------------


@bp.get("/profile")
def get_profile() -> Response:
    actor = api_actor("patient")
    return jsonify(profile=profile_json(matching.get_profile(actor, ctx=runtime.matching_context())))


@bp.put("/profile")
def put_profile() -> Response:
    actor = api_actor("patient")
    view = matching.put_profile(actor, json_body(), ctx=runtime.matching_context(), now=utcnow())
    return jsonify(profile=profile_json(view))


@bp.delete("/profile")
def withdraw_profile() -> tuple[str, int]:
    actor = api_actor("patient")
    matching.withdraw_profile(actor, ctx=runtime.matching_context())
    return "", 204


@bp.get("/matches")
def find_matches() -> Response:
    actor = api_actor("patient")
    found = matching.find_matches(
        actor,
        request.args.get("mode", "exact"),
        request.args.get("threshold"),
        ctx=runtime.matching_context(),
        now=utcnow(),
    )
    return jsonify(
        matches=[
            {
                "pseudonym": m.pseudonym,
                "similar": m.similar,
                "shared": m.shared,
                "connection": {"id": str(m.connection.id), "state": m.connection.state} if m.connection else None,
            }
            for m in found
        ]
    )


# -- connections and blocks -----------------------------------------------------------------


@bp.post("/matches/<pseudonym>/connect")
def connect(pseudonym: str) -> tuple[Response, int]:
    from portal.chat.events import notify_connection

    actor = api_actor("patient")
    connection = matching.connect(actor, pseudonym, ctx=runtime.matching_context(), now=utcnow())
    notify_connection(connection, connection.addressee_id)
    return jsonify(connection=connection_json(connection, actor.user)), 201


@bp.get("/connections")
def list_connections() -> Response:
    actor = api_actor("patient")
    unread = chat.unread_counts(actor.user)
    return jsonify(
        connections=[connection_json(c, actor.user, unread.get(c.id, 0)) for c in matching.list_connections(actor)]
    )


def _decide(connection_id: str, accept: bool) -> Response:
    from portal.chat.events import notify_connection

    actor = api_actor("patient")
    connection = matching.decide(actor, connection_id, accept, now=utcnow())
    notify_connection(connection, connection.requester_id)
    return jsonify(connection=connection_json(connection, actor.user))


@bp.post("/connections/<connection_id>/accept")
def accept_connection(connection_id: str) -> Response:
    return _decide(connection_id, True)


@bp.post("/connections/<connection_id>/decline")
def decline_connection(connection_id: str) -> Response:
    return _decide(connection_id, False)


@bp.post("/blocks")
def create_block() -> tuple[Response, int]:
    actor = api_actor("patient")
    row, name = matching.block(actor, json_body().get("pseudonym"), ctx=runtime.matching_context(), now=utcnow())
    return jsonify(block={"pseudonym": name, "created_at": iso(row.created_at)}), 201


@bp.delete("/blocks/<pseudonym>")
def delete_block(pseudonym: str) -> tuple[str, int]:
    matching.unblock(api_actor("patient"), pseudonym)
    return "", 204


@bp.get("/blocks")
def list_blocks() -> Response:
    actor = api_actor("patient")
    rows = matching.list_blocks(actor, ctx=runtime.matching_context())
    return jsonify(blocks=[{"pseudonym": name, "created_at": iso(row.created_at)} for row, name in rows])


# -- chat keys ------------------------------------------------------------------------------


@bp.put("/chat/key")
def register_chat_key() -> Response:
    actor = api_actor("patient")
    row = chat.register_key(
        actor, json_body().get("key"), node_key=runtime.node_key(), ctx=runtime.matching_context(), now=utcnow()
    )
    return jsonify(key=key_json(row))


@bp.get("/chat/key")
def own_chat_key() -> Response:
    row = chat.own_key(api_actor("patient"))
    return jsonify(key=key_json(row) if row else None)


@bp.get("/chat/keys/<pseudonym>")
def peer_chat_key(pseudonym: str) -> Response:
    current, previous = chat.peer_keys(api_actor("patient"), pseudonym)
    return jsonify(key={**key_json(current), "previous": [key_json(k) for k in previous]})
