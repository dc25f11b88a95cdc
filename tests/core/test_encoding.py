"""Canonical JSON and base64url: one value, exactly one encoding."""

from __future__ import annotations

import math

import pytest

from core.encoding import b64d, b64e, canonical, decode_canonical
from core.errors import CoreError, EncodingError


def _nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


# canonical()


def test_canonical_sorts_keys_at_every_level():
    assert canonical({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'


def test_canonical_has_no_whitespace():
    assert canonical({"a": [1, 2, {"b": None}], "c": True}) == b'{"a":[1,2,{"b":null}],"c":true}'


def test_canonical_writes_utf8_without_escaping():
    assert canonical({"name": "Zoë 日本"}) == '{"name":"Zoë 日本"}'.encode()


def test_canonical_sorts_keys_by_code_point():
    # "B" < "a" < "é" < U+FF61 < U+1F600 by code point (UTF-16 order would put the emoji before U+FF61).
    value = {"\U0001f600": 1, "\uff61": 2, "a": 3, "B": 4, "é": 5}
    assert canonical(value) == '{"B":4,"a":3,"é":5,"\uff61":2,"\U0001f600":1}'.encode()


def test_canonical_escapes_only_what_json_requires():
    assert canonical('a"b\\c\n\x01') == b'"a\\"b\\\\c\\n\\u0001"'


@pytest.mark.parametrize("value", [0, -1, 2**63 - 1, -(2**63 - 1)], ids=["zero", "minus-one", "max", "min"])
def test_canonical_accepts_63_bit_integers(value):
    assert canonical(value) == str(value).encode()


def test_canonical_accepts_32_levels_of_nesting():
    assert canonical(_nested(32)) == b"[" * 32 + b"0" + b"]" * 32


def test_invalid_canonical_float():
    with pytest.raises(EncodingError, match=r"^floats have no canonical encoding$"):
        canonical({"dose": 1.5})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1.0], ids=["nan", "inf", "-inf", "integral-float"])
def test_invalid_canonical_special_floats(value):
    with pytest.raises(EncodingError, match=r"^floats have no canonical encoding$"):
        canonical([value])


@pytest.mark.parametrize("key", [1, None, b"a", ("a",)], ids=["int", "none", "bytes", "tuple"])
def test_invalid_canonical_non_string_key(key):
    with pytest.raises(EncodingError, match=r"^object keys must be strings$"):
        canonical({key: 1})


@pytest.mark.parametrize(
    ("value", "type_name"),
    [({1, 2}, "set"), (b"raw", "bytes"), ((1, 2), "tuple"), (object(), "object"), (frozenset(), "frozenset")],
    ids=["set", "bytes", "tuple", "object", "frozenset"],
)
def test_invalid_canonical_non_json_type(value, type_name):
    with pytest.raises(EncodingError, match=rf"^type {type_name} has no canonical encoding$"):
        canonical({"x": value})


def test_invalid_canonical_too_deep():
    with pytest.raises(EncodingError, match=r"^value is nested too deeply$"):
        canonical(_nested(33))


@pytest.mark.parametrize("value", [2**63, -(2**63), 2**100], ids=["2**63", "-2**63", "2**100"])
def test_invalid_canonical_integer_out_of_range(value):
    with pytest.raises(EncodingError, match=r"^integer out of range$"):
        canonical({"n": value})


def test_encoding_error_is_a_core_error():
    with pytest.raises(CoreError):
        canonical(1.5)


def test_invalid_canonical_lone_surrogate():
    with pytest.raises(EncodingError):
        canonical({"note": "\ud800"})


# decode_canonical()

ROUND_TRIP_VALUES = [
    None,
    True,
    False,
    0,
    -5,
    2**63 - 1,
    "",
    "héllo wörld ✓ \U0001f600",
    "line\nbreak\ttab\x00nul",
    [],
    {},
    [1, "two", [3], {"four": None}],
    {"kind": "record", "payload": {"z": [], "a": {"b": "c"}}, "ts": 1700000000000},
    _nested(32),
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=[f"value-{i}" for i in range(len(ROUND_TRIP_VALUES))])
def test_decode_canonical_round_trips(value):
    encoded = canonical(value)
    assert decode_canonical(encoded) == value
    assert canonical(decode_canonical(encoded)) == encoded


def test_decode_canonical_keeps_bool_and_int_apart():
    decoded = decode_canonical(b"[true,1]")
    assert decoded[0] is True
    assert type(decoded[1]) is int


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a": 1}', "not in canonical form"),
        (b'{"a":1} ', "not in canonical form"),
        (b' {"a":1}', "not in canonical form"),
        (b'{"a":1,\n"b":2}', "not in canonical form"),
        (b'{"b":1,"a":2}', "not in canonical form"),
        (b'{"x":{"b":1,"a":2}}', "not in canonical form"),
        (b'{"a":1,"a":1}', "duplicate key 'a'"),
        (b'{"a":{"k":1,"k":2}}', "duplicate key 'k'"),
        (b"1.0", "floats have no canonical encoding"),
        (b"1e3", "floats have no canonical encoding"),
        (b'{"a":0.5}', "floats have no canonical encoding"),
        (b"NaN", "floats have no canonical encoding"),
        (b"Infinity", "floats have no canonical encoding"),
        (b"-Infinity", "floats have no canonical encoding"),
        (b'"\xff"', "not valid JSON"),
        (b'"\xc3"', "not valid JSON"),
        (b"\xef\xbb\xbf1", "not valid JSON"),
        (b'{"a":1}x', "not valid JSON"),
        (b'{"a":1}{}', "not valid JSON"),
        (b"[1,]", "not valid JSON"),
        (b"01", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"-0", "not in canonical form"),
        (b'"\\u0041"', "not in canonical form"),
        (b'"\\u00e9"', "not in canonical form"),
        (b'"\\/"', "not in canonical form"),
        (b"9223372036854775808", "integer out of range"),
        (b"[" * 33 + b"0" + b"]" * 33, "value is nested too deeply"),
    ],
    ids=[
        "space-after-colon",
        "trailing-space",
        "leading-space",
        "newline",
        "unsorted-keys",
        "unsorted-nested-keys",
        "duplicate-key",
        "duplicate-nested-key",
        "float",
        "exponent",
        "nested-float",
        "nan",
        "infinity",
        "minus-infinity",
        "invalid-utf8",
        "truncated-utf8",
        "utf8-bom",
        "trailing-garbage",
        "two-values",
        "trailing-comma",
        "leading-zero",
        "empty",
        "absurd-nesting",
        "minus-zero",
        "escaped-ascii",
        "escaped-non-ascii",
        "escaped-slash",
        "int-out-of-range",
        "too-deep",
    ],
)
def test_invalid_decode_canonical(data, message):
    with pytest.raises(EncodingError) as info:
        decode_canonical(data)
    assert str(info.value) == message


def test_invalid_decode_canonical_lone_surrogate():
    with pytest.raises(EncodingError):
        decode_canonical(b'{"a":"\\ud800"}')


# base64url

B64_CASES = [
    (b"", ""),
    (b"f", "Zg"),
    (b"fo", "Zm8"),
    (b"foo", "Zm9v"),
    (b"foob", "Zm9vYg"),
    (b"\xfb\xff", "-_8"),
    (bytes(range(256)), None),
]


@pytest.mark.parametrize(("data", "text"), B64_CASES, ids=[f"len-{len(d)}" for d, _ in B64_CASES])
def test_b64_round_trip(data, text):
    encoded = b64e(data)
    if text is not None:
        assert encoded == text
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded
    assert b64d(encoded) == data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Zg==", "non-canonical base64url"),
        ("Zm8=", "non-canonical base64url"),
        ("Zh", "non-canonical base64url"),
        ("+/8", "non-canonical base64url"),
        ("Zm9v\n", "non-canonical base64url"),
        ("Zm 9v", "non-canonical base64url"),
        ("Zm9v!", "non-canonical base64url"),
        ("Z", "malformed base64url"),
        ("Zm9vY", "malformed base64url"),
        ("é", "malformed base64url"),
    ],
    ids=[
        "padding",
        "padding-one",
        "nonzero-trailing-bits",
        "standard-alphabet",
        "newline",
        "space",
        "garbage-char",
        "one-char",
        "five-chars",
        "non-ascii",
    ],
)
def test_invalid_b64d(text, message):
    with pytest.raises(EncodingError) as info:
        b64d(text)
    assert str(info.value) == message


@pytest.mark.parametrize("value", [b"Zm9v", None, 5], ids=["bytes", "none", "int"])
def test_invalid_b64d_not_text(value):
    with pytest.raises(EncodingError, match=r"^expected base64url text$"):
        b64d(value)
