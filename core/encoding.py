"""The one canonical byte encoding used for hashing and signing.

Canonical JSON: UTF-8, object keys sorted by code point, no insignificant
whitespace, no floats, no duplicate keys. Binary values travel as unpadded
base64url strings and are the business of the schema, not of this module.
Decoding is strict: bytes are accepted only if re-encoding them gives the very
same bytes, so one value has exactly one encoding.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from core.errors import EncodingError

JSONValue = Any

__all__ = ["b64d", "b64e", "canonical", "decode_canonical"]


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError("text is not valid Unicode (lone surrogate)") from exc


def _check(value: JSONValue, depth: int = 0) -> None:
    if depth > 32:
        raise EncodingError("value is nested too deeply")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text(value)
        return
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise EncodingError("integer out of range")
        return
    if isinstance(value, float):
        raise EncodingError("floats have no canonical encoding")
    if isinstance(value, list):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError("object keys must be strings")
            _check_text(key)
            _check(item, depth + 1)
        return
    raise EncodingError(f"type {type(value).__name__} has no canonical encoding")


def canonical(value: JSONValue) -> bytes:
    """Encode a JSON value canonically. Raises EncodingError for floats and non-JSON types."""
    _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_duplicates(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    result: dict[str, JSONValue] = {}
    for key, item in pairs:
        if key in result:
            raise EncodingError(f"duplicate key {key!r}")
        result[key] = item
    return result


def _no_floats(text: str) -> float:
    raise EncodingError("floats have no canonical encoding")


def decode_canonical(data: bytes) -> JSONValue:
    """Decode canonical bytes; raises EncodingError unless `data` is exactly canonical."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=_no_floats,
            parse_constant=_no_floats,
        )
    except EncodingError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EncodingError("not valid JSON") from exc
    if canonical(value) != data:
        raise EncodingError("not in canonical form")
    return value


def b64e(data: bytes) -> str:
    """Unpadded base64url text for bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Bytes from unpadded base64url text; raises EncodingError when malformed or non-canonical."""
    if not isinstance(text, str):
        raise EncodingError("expected base64url text")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise EncodingError("malformed base64url") from exc
    if b64e(data) != text:
        raise EncodingError("non-canonical base64url")
    return data
