"""Errors a use case can end with; each carries its HTTP status and a message for people."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationFailed(ServiceError):
    status = 422
    code = "validation_failed"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


class Busy(ServiceError):
    """No database connection came free in time (every one in use under load), or the database
    is unreachable or locked: nothing was done, and the same request may simply come again."""

    status = 503
    code = "busy"
    retry_after = 5

    def __init__(self, message: str = "The server is busy; nothing was changed. Try again in a few seconds.") -> None:
        super().__init__(message)


DATABASE_BUSY = (PoolTimeout, OperationalError)  # SQLAlchemy's pool timeout, and the database not answering
