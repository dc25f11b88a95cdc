"""One error path: every failure becomes {"error": {"code", "message"}} for the API and a
friendly page for the portal. Nothing internal (stack traces, SQL, key material) leaks."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, jsonify, render_template, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from portal.extensions import db
from portal.services.errors import DATABASE_BUSY, Busy, ServiceError

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    503: "busy",
}


# Field names as the API spells them, and as a person filling in the portal's forms reads them.
FIELD_LABELS = {
    "title": "title", "category": "category", "notes": "notes", "reason": "reason", "days": "number of days",
    "diagnoses": "diagnoses", "symptoms": "symptoms", "prescriptions": "prescriptions", "drug": "medicine",
    "dose": "dose", "frequency": "frequency", "duration": "duration", "username": "username",
    "password": "password", "display_name": "full name", "hospital": "hospital",
    "licence_number": "licence number", "current_password": "current password", "new_password": "new password",
    "scope.from": "first date", "scope.to": "last date", "scope.categories": "kinds of record", "q": "search",
}  # fmt: skip


def _label(field: str) -> str:
    return FIELD_LABELS.get(field, field.replace("_", " ").replace(".", " "))


# The API's messages name fields for programs; the portal says the same thing to a person.
# Each pattern's named groups fill its sentence ("field" is named as the form names it). First match wins.
PLAIN = [
    (r"`scope\.categories` must be a non-empty list", "Choose at least one kind of record to share."),
    (r"`scope\.from` and `scope\.to` must be dates", "Enter the first and the last date, as year-month-day."),
    (r"`scope\.from` must not be after `scope\.to`", "The first date must not be after the last date."),
    (r"`scope` must be ", "Choose what to share: all records, some kinds of record, or a period."),
    (r"`days` must be a whole number from (?P<low>\d+) to (?P<hi>\d+)", "Enter a number of days from {low} to {hi}."),
    (
        r"`(?P<field>[\w.]+)` must be a whole number from (?P<low>\d+) to (?P<high>\d+)",
        "Enter a whole number from {low} to {high} for the {field}.",
    ),
    (r"`category` must be one of", "Choose one of the categories in the list."),
    (r"`(?P<field>[\w.]+)` is required", "Fill in the {field}."),
    (r"`(?P<field>[\w.]+)` is longer than (?P<n>\d+) characters", "The {field} can be at most {n} characters long."),
    (r"`(?P<field>[\w.]+)` must be text", "Write the {field} as text."),
    (r"At most (?P<n>\d+) `(?P<field>\w+)`", "Enter at most {n} {field}."),
    (r"`prescriptions` must be a list of at most (?P<n>\d+)", "Write at most {n} prescriptions."),
    (r"Each prescription has `drug`", "Each prescription needs the name of the medicine."),
    (r"unknown ICD-10-CM code '(?P<code>[^']*)'", "{code} is not an ICD-10-CM diagnosis code this hospital knows."),
    (r"unknown HPO term '(?P<code>[^']*)'", "{code} is not an HPO symptom this hospital knows."),
]
_PLAIN = [(re.compile(pattern), sentence) for pattern, sentence in PLAIN]


def plain_message(message: str) -> str:
    """A service error's message as the portal shows it: a sentence for a person, not for a
    program (the API keeps the original, which names the fields). The one place this is done."""
    for pattern, sentence in _PLAIN:
        match = pattern.search(message)
        if match:
            groups = match.groupdict()
            if "field" in groups:
                groups["field"] = _label(groups["field"])
            return sentence.format(**groups)
    # Anything else still naming a field: name it the way the form does.
    return re.sub(r"`([\w.]+)`", lambda m: f"the {_label(m[1])}", message)


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/node/")


def error_response(
    status: int, code: str, message: str, fields: dict[str, str] | None = None
) -> tuple[Response, int] | tuple[str, int]:
    if wants_json():
        error: dict[str, object] = {"code": code, "message": message}
        if fields:
            error["fields"] = fields  # the same shape as the request validator's, one entry per bad field
        return jsonify({"error": error}), status
    return render_template("error.html", status=status, message=plain_message(message)), status


def _service_error(exc: ServiceError):  # type: ignore[no-untyped-def]
    body, status = error_response(exc.status, exc.code, exc.message, getattr(exc, "fields", None))
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is None:
        return body, status
    return body, status, {"Retry-After": str(retry_after)}


def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
    status = exc.code or 500
    message = exc.description or "Request failed."
    if status == 413:
        message = "The request is larger than this server accepts."
    body, status = error_response(status, getattr(exc, "api_code", None) or HTTP_CODES.get(status, "error"), message)
    # Keep what the exception says about the answer (Allow on a 405, Retry-After on a 429), not its body type.
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return body, status, headers


def _database_busy(exc: SQLAlchemyError):  # type: ignore[no-untyped-def]
    """The database gave no connection in time or did not answer: 503 with Retry-After, not 500."""
    db.session.rollback()
    log_busy(exc, f"{request.method} {request.path}")
    return _service_error(Busy())


def log_busy(exc: BaseException, where: str) -> None:
    reason = getattr(exc, "orig", None) or exc  # the driver's words, without the statement and its values
    first = str(reason).splitlines()[0] if str(reason) else ""
    log.warning("database busy or unavailable on %s: %s: %s", where, type(reason).__name__, first)


def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal", "Something went wrong on the server; it has been logged.")


def register(app: Flask) -> None:
    app.add_template_filter(plain_message, "plain")
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    for busy in DATABASE_BUSY:
        app.register_error_handler(busy, _database_busy)
    app.register_error_handler(Exception, _unexpected)
