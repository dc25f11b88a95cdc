"""The front door's limits (docs/security.md, *Abuse limits*): request rates per client address
with Flask-Limiter (Redis when REDIS_URL is set, else the Redis of SOCKETIO_MESSAGE_QUEUE, so
that every server of a node counts together; memory otherwise), and body sizes per route: small
JSON and forms get SMALL_BODY_BYTES, only record uploads get the attachment limit, node-to-node
calls NODE_MAX_BODY_BYTES.

Sign-in throttling per account and address is not here but in the service layer
(portal/services/throttle.py), since it must see which account an attempt was for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from portal.services.errors import ValidationFailed


def client_key() -> str:
    """Whose requests count together: one client address at one node (nodes may share a Redis)."""
    return f"{current_app.config['NODE_ID']}/{get_remote_address()}"


limiter = Limiter(key_func=client_key, key_prefix="medledger")

# Endpoints that take record uploads with attachments: the only ones given MAX_CONTENT_LENGTH.
UPLOADS = {"api.create_record", "doctor.new_record", "doctor.import_fhir"}


def registration_limit() -> str:
    return str(current_app.config["REGISTER_RATE_LIMIT"])


def _body_limit() -> None:
    """Set this request's body limit before anything reads the body (Werkzeug answers 413)."""
    config = current_app.config
    if request.endpoint in UPLOADS:
        return  # the app-wide MAX_CONTENT_LENGTH
    if request.path.startswith("/node/"):
        request.max_content_length = config["NODE_MAX_BODY_BYTES"]
    else:
        request.max_content_length = config["SMALL_BODY_BYTES"]


def _no_nul() -> None:
    """A NUL in the path, the query or a form field is refused here: no id, search or field of
    ours holds one, and PostgreSQL refuses it in any string (it would surface as a 500)."""
    texts = [request.path, *request.args.keys(), *request.args.values()]
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        texts += [*request.form.keys(), *request.form.values()]
    if any("\x00" in text for text in texts):
        raise ValidationFailed("The request holds a NUL character.")


def shared_storage(config: Mapping[str, Any]) -> str | None:
    """Where every server of the node counts together: REDIS_URL, else the chat's Redis message
    queue (a node with several servers or workers has one), else nowhere (each process counts)."""
    queue = str(config.get("SOCKETIO_MESSAGE_QUEUE") or "")
    return config.get("REDIS_URL") or (queue if queue.startswith(("redis://", "rediss://")) else None)


def init_app(app: Flask) -> None:
    if not app.config.get("RATELIMIT_STORAGE_URI"):
        app.config["RATELIMIT_STORAGE_URI"] = shared_storage(app.config) or "memory://"
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    app.config.setdefault("RATELIMIT_STRATEGY", "moving-window")
    limiter.init_app(app)
    app.before_request(_body_limit)
    app.before_request(_no_nul)
