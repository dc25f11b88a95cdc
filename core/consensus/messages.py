"""Signed node-to-node HTTP messages.

A request carries `X-MedLedger-Node` (sender id), `X-MedLedger-Time` (ms) and
`X-MedLedger-Signature` (base64url Ed25519) over

    b"medledger/node-msg/v1\\n" + method + "\\n" + path + "\\n" + time + "\\n" + SHA-256(body) hex

Receivers accept only known nodes, times within `MAX_SKEW_MS` of their clock, and
each signature once (replays inside the window are refused).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping

from core.crypto.keys import NodeKey, node_public_key_from_bytes
from core.encoding import b64d, b64e
from core.errors import EncodingError, InvalidSignature

DOMAIN = b"medledger/node-msg/v1\n"
MAX_SKEW_MS = 30_000
NODE_HEADER, TIME_HEADER, SIGNATURE_HEADER = "X-MedLedger-Node", "X-MedLedger-Time", "X-MedLedger-Signature"


def _message(method: str, path: str, timestamp_ms: int, body: bytes) -> bytes:
    return DOMAIN + f"{method.upper()}\n{path}\n{timestamp_ms}\n{hashlib.sha256(body).hexdigest()}".encode()


def sign_request(node: NodeKey, method: str, path: str, body: bytes, now_ms: int) -> dict[str, str]:
    """The headers that authenticate a request from `node`."""
    signature = node.sign(_message(method, path, now_ms, body))
    return {NODE_HEADER: node.node_id, TIME_HEADER: str(now_ms), SIGNATURE_HEADER: b64e(signature)}


class ReplayGuard:
    """Remembers recent signatures so that each is accepted once."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._capacity = capacity

    def first_time(self, signature: str, timestamp_ms: int, now_ms: int) -> bool:
        for old, at in list(self._seen.items()):
            if at >= now_ms - MAX_SKEW_MS and len(self._seen) <= self._capacity:
                break
            del self._seen[old]
        if signature in self._seen:
            return False
        self._seen[signature] = timestamp_ms
        return True


def verify_request(
    headers: Mapping[str, str], method: str, path: str, body: bytes, node_keys: Mapping[str, bytes], now_ms: int,
    guard: ReplayGuard,
) -> str:  # fmt: skip
    """The sender's node id, if the request is signed by a known node, fresh and not replayed;
    raises InvalidSignature saying why not."""
    sender = headers.get(NODE_HEADER, "")
    key = node_keys.get(sender)
    if key is None:
        raise InvalidSignature(f"unknown node {sender[:64]!r}")
    try:
        timestamp = int(headers.get(TIME_HEADER, ""))
        signature = b64d(headers.get(SIGNATURE_HEADER, ""))
    except (ValueError, EncodingError) as exc:
        raise InvalidSignature("malformed node signature headers") from exc
    if abs(now_ms - timestamp) > MAX_SKEW_MS:
        raise InvalidSignature("node message too old or from the future")
    node_public_key_from_bytes(key).verify(signature, _message(method, path, timestamp, body))
    if not guard.first_time(headers[SIGNATURE_HEADER], timestamp, now_ms):
        raise InvalidSignature("node message replayed")
    return sender
