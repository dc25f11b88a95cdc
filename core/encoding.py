"""The one canonical byte encoding used for hashing and signing.

Canonical JSON: UTF-8, object keys sorted by code point, no insignificant
whitespace, no floats, no duplicate keys. Binary values travel as unpadded
base64url strings and are the business of the schema, not of this module.
Decoding is strict: bytes are accepted only if re-encoding them would give the very
same bytes, so one value has exactly one encoding. Most bytes are proved canonical
without re-encoding them (see `decode_canonical`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from core.errors import EncodingError

JSONValue = Any

__all__ = ["b64d", "b64e", "canonical", "decode_canonical", "is_b64"]

MAX_DEPTH = 32
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64_VALUE = {char: value for value, char in enumerate(_B64_ALPHABET)}
_B64URL = re.compile("[A-Za-z0-9_-]*")
_B64_SPARE = (0, 0, 0b1111, 0b11)  # bits of the last character past the data, by length % 4
_B64_PAD = (b"", b"", b"==", b"=")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodingError("text is not valid Unicode (lone surrogate)") from exc


def _check(value: JSONValue, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
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


class _Irregular(Exception):
    """Raised by the quick decoder's hooks for what only a re-encoding can judge."""


def _sorted_object(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    result = dict(pairs)
    keys = list(result)
    if len(keys) != len(pairs) or keys != sorted(keys):
        raise _Irregular  # a duplicate key, or keys out of canonical order
    return result


def _plain_int(text: str) -> int:
    if len(text) > 18 or text == "-0":
        raise _Irregular  # perhaps out of range, or not the canonical zero
    return int(text)


def _no_duplicates(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    result: dict[str, JSONValue] = {}
    for key, item in pairs:
        if key in result:
            raise EncodingError(f"duplicate key {key!r}")
        result[key] = item
    return result


def _no_floats(text: str) -> float:
    raise EncodingError("floats have no canonical encoding")


# Shared by all threads, like json.loads's own default decoder.
_QUICK = json.JSONDecoder(
    object_pairs_hook=_sorted_object, parse_int=_plain_int, parse_float=_no_floats, parse_constant=_no_floats
)


def decode_canonical(data: bytes) -> JSONValue:
    """Decode canonical bytes; raises EncodingError unless `data` is exactly canonical.

    Bytes without whitespace or escapes and with at most MAX_DEPTH brackets, which parse with
    each object's keys in strictly increasing order, no float and only integers of at most 18
    digits other than "-0", are canonical without being re-encoded: each of their tokens has
    only the one spelling the encoder gives it. Anything else is decoded again and re-encoded
    to compare, which gives the same verdict and error message as always.
    """
    if b" " in data or b"\\" in data or b"\n" in data or b"\r" in data or b"\t" in data:
        return _decode_and_compare(data)
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH:
        return _decode_and_compare(data)
    try:
        return _QUICK.decode(data.decode("utf-8"))
    except _Irregular:
        return _decode_and_compare(data)
    except EncodingError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EncodingError("not valid JSON") from exc


def _decode_and_compare(data: bytes) -> JSONValue:
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


def is_b64(text: str) -> bool:
    """Whether `b64d` accepts `text`, without decoding it: only the base64url alphabet, no
    padding, and the bits past the last byte clear (so `b64e` would give the same text)."""
    tail = len(text) % 4
    return _B64URL.fullmatch(text) is not None and (
        tail == 0 or (tail > 1 and _B64_VALUE[text[-1]] & _B64_SPARE[tail] == 0)
    )


def b64d(text: str) -> bytes:
    """Bytes from unpadded base64url text; raises EncodingError when malformed or non-canonical."""
    if not isinstance(text, str):
        raise EncodingError("expected base64url text")
    if is_b64(text):
        return binascii.a2b_base64(text.encode("ascii").translate(_FROM_URLSAFE) + _B64_PAD[len(text) % 4])
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise EncodingError("malformed base64url") from exc
    if b64e(data) != text:
        raise EncodingError("non-canonical base64url")
    return data
