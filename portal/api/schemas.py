"""The API's shared shapes and field types: each validates requests, shapes responses and is a
component of the OpenAPI document (apispec names it after the class). A shape used by one
group of routes lives beside them; one used by several lives here."""

from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Integer, Nested, String
from marshmallow import ValidationError

from portal.services.errors import ValidationFailed
from portal.services.inputs import MAX_INT, MAX_OFFSET, whole_number
from portal.services.paging import DEFAULT_LIMIT, MAX_LIMIT
from portal.services.paging import Page as PageOf


class Text(String):
    """Text that is valid Unicode (no lone surrogates; the JSON parser refuses them first)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("Holds an invalid character (a lone surrogate).") from None
        return text


class Whole(Integer):
    """An integer as JSON Schema means it: 5 and 5.0 pass; "5", true and 5.5 do not."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid")
        number = int(value)
        if not -MAX_INT <= number <= MAX_INT:
            raise self.make_error("invalid")
        return number


class ErrorDetail(Schema):
    code = String(required=True, metadata={"example": "not_found"})
    message = String(required=True, metadata={"example": "No such record."})
    fields = Dict(keys=String(), values=String(), metadata={"description": "One message per field (422 only)."})


class Error(Schema):
    """Every error answer: a stable code, a sentence for people, and per-field messages on 422."""

    error = Nested(ErrorDetail, required=True)


class QueryWhole(Integer):
    """A whole number in a query string (ASCII digits; blank is absent), range-checked with the
    message every service uses: "`limit` must be a whole number from 1 to 200." (inputs.whole_number)."""

    def __init__(self, low: int, high: int, **kwargs: Any) -> None:
        metadata = {"minimum": low, "maximum": high, **kwargs.pop("metadata", {})}
        super().__init__(load_default=kwargs.pop("load_default", None), metadata=metadata, **kwargs)
        self.low, self.high = low, high

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | None:
        try:
            return whole_number(value, self.data_key or attr or "", default=None, low=self.low, high=self.high)  # type: ignore[arg-type]
        except ValidationFailed as exc:
            raise ValidationError(exc.message) from None


class Flag(Boolean):
    """JSON true or false, nothing else (marshmallow's Boolean also takes "yes", 1, "on", ...)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def answer(description: str, schema: type[Schema] = Error) -> dict[str, Any]:
    """A documented answer for `@bp.doc(responses=...)`: its description and JSON shape."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_answers(answers: dict[int, str]) -> dict[int, dict[str, Any]]:
    """An operation's documented error answers, {status: sentence}, each in the Error shape."""
    return {status: answer(text) for status, text in answers.items()}


# Error answers several operations share.
SIGNED_OUT = {401: "No token, or the token is invalid or has expired."}
THROTTLED = {
    429: "Too many failed attempts for this account name or from this address (sign-in and password "
    "resets count together); wait as long as `Retry-After` says."
}


class Page(Schema):
    """Paging of a list (services/paging.py): `limit` (DEFAULT_LIMIT if absent) and `offset`."""

    limit = QueryWhole(1, MAX_LIMIT, metadata={"description": f"How many ({DEFAULT_LIMIT} if absent)."})
    offset = QueryWhole(0, MAX_OFFSET, metadata={"description": "How many to skip (0 if absent)."})


class Paged(Schema):
    """The paging half of every list answer: the list itself is under its own key beside these."""

    total = Integer(
        required=True,
        metadata={"description": "How many items the caller may see with the same filters, on all pages."},
    )
    next_offset = Integer(
        required=True, allow_none=True, metadata={"description": "The `offset` of the next page; null on the last."}
    )


def listed(key: str, page: PageOf[Any]) -> dict[str, Any]:
    """A page as a list answer: `{key: [...], "total": ..., "next_offset": ...}` (a `Paged` shape)."""
    return {key: page.items, "total": page.total, "next_offset": page.next_offset}


class User(Schema):
    """An account as its owner sees it (`GET /me`)."""

    id = String(required=True, metadata={"description": "The consortium-wide id, the same on every node."})
    username = String(required=True, allow_none=True)
    display_name = String(required=True)
    role = String(required=True, metadata={"enum": ["patient", "doctor", "admin"]})
    hospital = String(required=True, allow_none=True)
    date_of_birth = String(required=True, allow_none=True, metadata={"format": "date", "description": "A patient's."})


class Person(Schema):
    """Someone another account deals with: a doctor, a patient, a reader in the access log."""

    id = String(required=True)
    display_name = String(required=True)
    hospital = String(required=True, allow_none=True)
    home_hospital = String(required=True, allow_none=True)


class RecordAuthor(Schema):
    id = String(required=True)
    display_name = String(required=True)
    hospital = String(required=True, allow_none=True)


class RecordPatient(Schema):
    id = String(required=True)
    display_name = String(required=True)


class RecordMetadata(Schema):
    """What a node knows of a record without opening it (`records.metadata`): a granted doctor's
    list of what they may open."""

    id = String(required=True)
    created_at = String(required=True, metadata={"format": "date-time", "example": "2026-05-01T09:30:00Z"})
    author = Nested(RecordAuthor, required=True)
    patient = Nested(RecordPatient, required=True)
    tx_hash = String(required=True, metadata={"description": "The record's transaction on the ledger."})
    block_height = Integer(required=True, allow_none=True, metadata={"description": "Null until in a block."})


class RecordSummary(RecordMetadata):
    """A record in a list its reader may open: the metadata, its title and category."""

    title = String(required=True)
    category = String(required=True)
