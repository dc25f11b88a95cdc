"""Wire formats of the chat protocol: sizes, labels, the framing used for signing and hashing, message parsing.

Every byte string that is signed, hashed, MACed or used as associated data is a
`frame`: each part as a 4-byte big-endian length followed by its bytes, so no
two different lists of parts give the same bytes. Binary fields travel in JSON
as unpadded base64url. docs/chat-protocol.md is the normative description;
pwa/chat-crypto.js implements the same rules.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from core.encoding import b64d
from core.errors import EncodingError, MalformedChatMessage, UnexpectedHandshakeMessage

VERSION = 1
MAX_HANDSHAKE_BYTES = 4096
MAX_ENVELOPE_BYTES = 65536
MAX_PLAINTEXT_BYTES = 32768
MAX_CONVERSATION_CHARS = 128
MAX_SEQ = 2**32 - 1

POINT_BYTES = 65
NONCE_BYTES = 32
SIGNATURE_BYTES = 64
MAC_BYTES = 32
KEY_BYTES = 32
SESSION_ID_BYTES = 16
TAG_BYTES = 16
GCM_NONCE_BYTES = 12

PREFIX = "medledger-chat/v1"
HELLO_LABEL = f"{PREFIX} hello"
REPLY_LABEL = f"{PREFIX} reply"
MESSAGE_LABEL = f"{PREFIX} msg"
SESSION_ID_LABEL = f"{PREFIX} session id"
STATE_LABEL = f"{PREFIX} state"
I2R = "i2r"
R2I = "r2i"

HANDSHAKE_TYPES = ("hello", "reply", "confirm")
ENVELOPE_TYPE = "msg"
FIELDS: dict[str, frozenset[str]] = {
    "hello": frozenset({"type", "v", "conversation", "key", "peer", "eph", "nonce", "sig"}),
    "reply": frozenset({"type", "v", "conversation", "key", "eph", "nonce", "sig", "mac"}),
    "confirm": frozenset({"type", "v", "conversation", "mac"}),
    "msg": frozenset({"type", "v", "sid", "seq", "ct"}),
}
SIZES = {"key": POINT_BYTES, "peer": POINT_BYTES, "eph": POINT_BYTES, "nonce": NONCE_BYTES,
         "sig": SIGNATURE_BYTES, "mac": MAC_BYTES}  # fmt: skip


def frame(*parts: bytes | str) -> bytes:
    """Length-prefixed concatenation: for each part, 4-byte big-endian length then the bytes (text as UTF-8)."""
    out = bytearray()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def seq_bytes(seq: int) -> bytes:
    """A message counter as 8 bytes, big-endian."""
    return seq.to_bytes(8, "big")


def message_nonce(seq: int) -> bytes:
    """The AES-GCM nonce of message `seq`: four zero bytes then the 8-byte counter (keys differ per direction)."""
    return bytes(4) + seq_bytes(seq)


def message_aad(conversation: str, session_id: bytes, direction: str, seq: int) -> bytes:
    """Associated data binding an envelope to its conversation, session, direction and counter."""
    return frame(MESSAGE_LABEL, conversation, session_id, direction, seq_bytes(seq))


def session_id(transcript_hash: bytes) -> bytes:
    """A session's id: the first 16 bytes of SHA-256(frame(session id label, TH)).

    Both sides compute it from the handshake, so it needs no message of its own;
    it names the session an envelope was sealed under (not a secret).
    """
    return hashlib.sha256(frame(SESSION_ID_LABEL, transcript_hash)).digest()[:SESSION_ID_BYTES]


def check_conversation(conversation: object) -> str:
    """Return `conversation` if it is a non-empty string of at most 128 characters; else MalformedChatMessage."""
    if not isinstance(conversation, str) or not 0 < len(conversation) <= MAX_CONVERSATION_CHARS:
        raise MalformedChatMessage("the conversation id must be a string of 1 to 128 characters")
    return conversation


def serialised_size(message: object) -> int:
    """Bytes of the compact JSON form of `message`; MalformedChatMessage if it is not JSON."""
    try:
        return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise MalformedChatMessage("the message is not JSON") from exc


def parse_handshake(message: object, expected: str) -> dict[str, Any]:
    """Check a handshake message's shape and return its fields with binary ones decoded.

    Raises MalformedChatMessage (not a dict, too large, unknown type, other
    version, missing or extra fields, bad base64url or lengths) and
    UnexpectedHandshakeMessage (a well-formed message of another type than
    `expected`).
    """
    if not isinstance(message, dict):
        raise MalformedChatMessage("a handshake message must be a JSON object")
    if serialised_size(message) > MAX_HANDSHAKE_BYTES:
        raise MalformedChatMessage(f"a handshake message must be at most {MAX_HANDSHAKE_BYTES} bytes")
    kind = message.get("type")
    if kind not in HANDSHAKE_TYPES:
        raise MalformedChatMessage("unknown handshake message type")
    _check_version(message)
    if kind != expected:
        raise UnexpectedHandshakeMessage(f"expected a {expected} message, got a {kind}")
    _check_fields(message, kind)
    fields: dict[str, Any] = {"conversation": check_conversation(message["conversation"])}
    for name in FIELDS[kind] & SIZES.keys():
        fields[name] = decode_field(message, name, SIZES[name])
    return fields


def parse_envelope(envelope: object) -> tuple[bytes, int, bytes]:
    """Check an envelope's shape; return (session id, seq, ciphertext). Raises MalformedChatMessage."""
    if not isinstance(envelope, dict):
        raise MalformedChatMessage("an envelope must be a JSON object")
    if envelope.get("type") != ENVELOPE_TYPE:
        raise MalformedChatMessage("not a chat envelope")
    _check_version(envelope)
    _check_fields(envelope, ENVELOPE_TYPE)
    if serialised_size(envelope) > MAX_ENVELOPE_BYTES:
        raise MalformedChatMessage(f"an envelope must be at most {MAX_ENVELOPE_BYTES} bytes")
    seq = envelope["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise MalformedChatMessage("the envelope counter must be an integer from 0 to 2**32-1")
    sid = decode_field(envelope, "sid", SESSION_ID_BYTES)
    ct = _b64(envelope["ct"], "ct")
    if len(ct) < TAG_BYTES:
        raise MalformedChatMessage("the envelope ciphertext is too short")
    return sid, seq, ct


def decode_field(message: dict[str, Any], name: str, size: int) -> bytes:
    """Decode base64url field `name` and check it has exactly `size` bytes; MalformedChatMessage otherwise."""
    data = _b64(message[name], name)
    if len(data) != size:
        raise MalformedChatMessage(f"field {name!r} must be {size} bytes")
    return data


def _b64(value: object, name: str) -> bytes:
    try:
        return b64d(value)  # type: ignore[arg-type]
    except EncodingError as exc:
        raise MalformedChatMessage(f"field {name!r} is not unpadded base64url") from exc


def _check_version(message: dict[str, Any]) -> None:
    version = message.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version != VERSION:
        raise MalformedChatMessage(f"unsupported protocol version (this client speaks v{VERSION})")


def _check_fields(message: dict[str, Any], kind: str) -> None:
    if set(message) != FIELDS[kind]:
        raise MalformedChatMessage(f"a {kind} message has exactly the fields {', '.join(sorted(FIELDS[kind]))}")
