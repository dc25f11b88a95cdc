"""One error path: every failure becomes {"error": {"code", "message"}} for the API and a
friendly page for the portal. Nothing internal (stack traces, SQL, key material) leaks."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from portal.services.errors import ServiceError

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
}


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/node/")


def error_response(status: int, code: str, message: str) -> tuple[Response, int] | tuple[str, int]:
    if wants_json():
        return jsonify({"error": {"code": code, "message": message}}), status
    return render_template("error.html", status=status, message=message), status


def _service_error(exc: ServiceError):  # type: ignore[no-untyped-def]
    body, status = error_response(exc.status, exc.code, exc.message)
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


def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal", "Something went wrong on the server; it has been logged.")


def register(app: Flask) -> None:
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
