"""Retries that store nothing twice (docs/api.md, *Retries*): a write sent with an
`Idempotency-Key` header (or, from a portal form, an `idempotency_key` field) is done once; the
same key again gets the first answer again, with `Idempotent-Replayed: true`.

How it is exactly once: the key's row is added to the database session before the view runs, so
it commits in the same transaction as the write itself (the services commit once, at the end of
their work). A concurrent duplicate then fails on the row's primary key and is told to retry; a
failed write rolls the row back with it. The answer is stored right after. If the server dies in
between, the write is stored but its answer is not: a retry is told so (409
`idempotency_answer_lost`) rather than writing again. Keys are scoped to the account (or to
anonymous requests) and the route; reusing one with a different body is refused. The stored
answer is sealed (AES-GCM) under a key derived from the client's key, which the server does not
keep (only a hash names the row), so a copy of the database does not reveal it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from flask import Response, current_app, request
from flask_login import current_user
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from core.crypto import aead
from portal.extensions import db
from portal.models import IdempotentRequest, utcnow
from portal.services import accounts
from portal.services.errors import Conflict, ValidationFailed

HEADER, FIELD = "Idempotency-Key", "idempotency_key"
KEEP = timedelta(hours=24)
F = TypeVar("F", bound=Callable[..., Any])


class AnswerLost(Conflict):
    code = "idempotency_answer_lost"


def _scope() -> str:
    """Whose key it is: the bearer token's account, the portal session's, or anonymous."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        actor = accounts.resolve(token.strip(), utcnow())
        return f"user:{actor.user.id}" if actor is not None else "anonymous"
    return f"user:{current_user.id}" if current_user.is_authenticated else "anonymous"


def _client_key() -> str | None:
    key = request.headers.get(HEADER)
    if key is None and request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        key = request.form.get(FIELD) or None
    if key is None:
        return None
    if not (1 <= len(key) <= 200 and key.isascii() and key.isprintable()):
        raise ValidationFailed(f"`{HEADER}` must be 1-200 printable ASCII characters (a UUID is best).")
    return key


def _derive(label: str, scope: str, key: str) -> bytes:
    return hashlib.sha256(f"medledger/idempotency/{label}\n{scope}\n{key}".encode()).digest()


def _replay(row: IdempotentRequest, secret: bytes) -> Response:
    body = aead.decrypt(secret, row.body or b"", row.id.encode())
    response = Response(body, status=row.status, content_type=row.content_type)
    if row.location:
        response.headers["Location"] = row.location
    response.headers["Idempotent-Replayed"] = "true"
    return response


def idempotent(view: F) -> F:
    """Make a write view safe to retry with an Idempotency-Key (without one, it runs as before)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = _client_key()
        if key is None:
            return view(*args, **kwargs)
        now = utcnow()
        scope = f"{_scope()}\n{request.method} {request.path}"
        row_id, secret = _derive("id", scope, key).hex(), _derive("answer", scope, key)
        fingerprint = hashlib.sha256(request.get_data(cache=True)).hexdigest()
        db.session.execute(delete(IdempotentRequest).where(IdempotentRequest.created_at < now - KEEP))
        db.session.commit()
        row = db.session.get(IdempotentRequest, row_id)
        if row is not None:
            if row.fingerprint != fingerprint:
                raise ValidationFailed(f"This `{HEADER}` was used for a different request; use a new key.")
            if row.status is None:
                raise AnswerLost(
                    "A request with this Idempotency-Key was stored, but its answer was lost; "
                    "check what it wrote before sending it again with a new key."
                )
            return _replay(row, secret)
        row = IdempotentRequest(id=row_id, fingerprint=fingerprint, created_at=now)
        db.session.add(row)  # committed by the write's own transaction, or rolled back with it
        try:
            response = current_app.make_response(view(*args, **kwargs))
        except IntegrityError:
            db.session.rollback()
            raise Conflict("The same request is being handled already; wait a moment and retry.") from None
        except Exception:
            db.session.rollback()
            raise
        if not 200 <= response.status_code < 400:  # a refusal stored nothing: the key stays free
            db.session.rollback()
            db.session.execute(delete(IdempotentRequest).where(IdempotentRequest.id == row_id))
            db.session.commit()
            return response
        stored = db.session.get(IdempotentRequest, row_id) or row
        stored.status, stored.body = response.status_code, aead.encrypt(secret, response.get_data(), row_id.encode())
        stored.content_type, stored.location = response.content_type, response.headers.get("Location")
        db.session.merge(stored)
        db.session.commit()
        return response

    return wrapper  # type: ignore[return-value]
