"""Untrusted input made safe before any service sees it: JSON bodies parsed with bounds (depth,
numbers, valid Unicode) and whole numbers from queries checked against a range. Every refusal is
a `ValidationFailed` naming the field, never an exception that surfaces as a 500."""

from __future__ import annotations

import json
import math
from typing import Any

from portal.services.errors import ValidationFailed

MAX_DEPTH = 32  # no request of ours nests deeper than a few levels
MAX_INT = 2**63 - 1  # what a 64-bit database column holds
MAX_OFFSET = 2**31 - 1  # paging and block heights: far beyond any real chain or list


class InvalidJSON(ValidationFailed):
    status = 400
    code = "invalid_json"


def _no_constants(name: str) -> Any:
    raise InvalidJSON(f"The body is not valid JSON: {name} is not a JSON number.")


def parse_json(raw: bytes) -> Any:
    """Decode a JSON document and check it (`check_json`); 400 `invalid_json` if it is not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("The body is not valid UTF-8.") from None
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise InvalidJSON(f"The body nests deeper than {MAX_DEPTH} levels.") from None
    except ValueError:  # JSONDecodeError, and ints too long for Python to convert
        raise InvalidJSON("The body is not valid JSON.") from None
    check_json(data)
    return data


def parse_json_object(raw: bytes, declared_json: bool) -> dict[str, Any]:
    """A request body that must be one JSON object (`declared_json`: its Content-Type said JSON)."""
    if not declared_json:
        raise InvalidJSON("Send a JSON object with `Content-Type: application/json`.")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidJSON("The body is not a valid JSON object.")
    return data


def _where(path: tuple[str, ...]) -> str:
    return f"`{'.'.join(path)}`" if path else "The body"


def _check_text(text: str, path: tuple[str, ...]) -> None:
    if "\x00" in text:  # no text field of ours holds one, and PostgreSQL refuses it in any string
        raise ValidationFailed(f"{_where(path)} holds a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed(f"{_where(path)} holds an invalid character (a lone surrogate).") from None


def check_json(data: Any) -> None:
    """Refuse what no field of ours accepts and what breaks code further on: nesting deeper than
    MAX_DEPTH, strings (values or keys) that are not valid Unicode, integers beyond 64 bits,
    non-finite numbers. Iterative, so a hostile document cannot exhaust the stack here."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise InvalidJSON(f"The body nests deeper than {MAX_DEPTH} levels.")
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not -MAX_INT <= value <= MAX_INT:
                raise ValidationFailed(f"{_where(path)} is a number beyond 64 bits.")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValidationFailed(f"{_where(path)} must be a finite number.")
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path)
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(value))


def whole_number(value: object, name: str, *, default: int, low: int = 0, high: int = MAX_OFFSET) -> int:
    """A whole number from a query string or form (None or "" give `default`), within low-high."""
    if value is None or value == "":
        return default
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else None
    text = value.strip() if isinstance(value, str) else text
    digits = text[1:] if text and text[0] == "-" else text
    if not digits or not (digits.isascii() and digits.isdigit()) or len(digits) > 19 or not low <= int(text) <= high:
        raise ValidationFailed(f"`{name}` must be a whole number from {low} to {high}.")
    return int(text)
