"""Payload rules for each transaction kind.

Each rule checks the payload's shape only; who may sign what is checked by
`KeyRegistry`. Adding a kind (grant, vote, access entry) adds a rule here and
never changes the transaction envelope.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from core.encoding import b64d
from core.errors import EncodingError, InvalidTransaction

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ROLES = ("patient", "doctor", "admin")
MAX_ATTACHMENTS = 20


def _fields(payload: dict[str, Any], names: set[str]) -> None:
    if set(payload) != names:
        raise InvalidTransaction("payload must have exactly the fields " + ", ".join(sorted(names)))


def _binary(payload: dict[str, Any], name: str) -> bytes:
    try:
        return b64d(payload[name])
    except EncodingError as exc:
        raise InvalidTransaction(f"payload field {name!r} is not base64url") from exc


def check_genesis(payload: dict[str, Any]) -> None:
    _fields(payload, {"chain", "nodes"})
    if not isinstance(payload["chain"], str) or not payload["chain"]:
        raise InvalidTransaction("genesis needs a chain id")
    nodes = payload["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise InvalidTransaction("genesis needs at least one node")
    for node in nodes:
        if not isinstance(node, dict) or set(node) != {"id", "key"}:
            raise InvalidTransaction("each genesis node needs exactly id and key")
        if not isinstance(node["id"], str) or not NODE_ID_RE.match(node["id"]):
            raise InvalidTransaction("bad node id")
        if len(_binary(node, "key")) != 32:
            raise InvalidTransaction("node keys are 32-byte Ed25519 keys")


def check_key(payload: dict[str, Any]) -> None:
    _fields(payload, {"account", "role", "rsa", "umbral"})
    if not isinstance(payload["account"], str) or not UUID_RE.match(payload["account"]):
        raise InvalidTransaction("account must be a UUID")
    if payload["role"] not in ROLES:
        raise InvalidTransaction("unknown role")
    _binary(payload, "rsa")
    if len(_binary(payload, "umbral")) != 33:
        raise InvalidTransaction("umbral key must be a 33-byte compressed point")


def check_record(payload: dict[str, Any]) -> None:
    _fields(payload, {"record", "body", "capsule", "pkey", "akey", "attachments"})
    if not isinstance(payload["record"], str) or not UUID_RE.match(payload["record"]):
        raise InvalidTransaction("record must be a UUID")
    for name in ("body", "capsule", "pkey", "akey"):
        _binary(payload, name)
    attachments = payload["attachments"]
    if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
        raise InvalidTransaction("attachments must be a list of at most 20 hashes")
    if not all(isinstance(h, str) and HEX64_RE.match(h) for h in attachments):
        raise InvalidTransaction("attachment hashes must be SHA-256 hex")


RULES: dict[str, Callable[[dict[str, Any]], None]] = {
    "genesis": check_genesis,
    "key": check_key,
    "record": check_record,
}
