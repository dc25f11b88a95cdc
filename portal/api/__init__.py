"""The JSON API under /api/v1 (bearer tokens only; see docs/api.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apiflask import APIBlueprint
from flask import request

from portal.models import utcnow
from portal.services import accounts
from portal.services.accounts import Actor
from portal.services.errors import Forbidden, Unauthorized
from portal.services.inputs import parse_json_object

bp = APIBlueprint("api", __name__, url_prefix="/api/v1", tag="API")


def bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Sign in first: send `Authorization: Bearer <token>`.")
    return token.strip()


def api_actor(*roles: str) -> Actor:
    """The actor of this API request; 401 without a valid token, 403 for another role."""
    actor = accounts.resolve(bearer_token(), utcnow())
    if actor is None:
        raise Unauthorized("The token is invalid or has expired; sign in again.")
    if roles and actor.user.role not in roles:
        raise Forbidden(f"Only {' or '.join(roles)} accounts may do this.")
    return actor


def iso(moment: datetime | None) -> str | None:
    """A stored UTC time as the API writes every time: ISO 8601 with a Z; None stays None."""
    return moment.isoformat() + "Z" if moment is not None else None


def json_body() -> dict[str, Any]:
    """The request's JSON object, checked (portal/services/inputs.py); 400 `invalid_json` for
    anything else, 422 for a value no field accepts (lone surrogates, numbers beyond 64 bits)."""
    return parse_json_object(request.get_data(cache=True), request.is_json)


from portal.api import access, escrow, recovery, routes, social  # noqa: E402,F401
