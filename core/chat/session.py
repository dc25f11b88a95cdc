"""An established chat session: AES-256-GCM per direction, counters, strict in-order delivery.

Every envelope names its session (`sid`). A session that replaced another keeps the
receiving half of a few earlier ones, so an envelope sealed before a reset is still
read, in its own order, once and only once.
"""

from __future__ import annotations

from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.chat.identity import PublicIdentity
from core.chat.wire import (
    ENVELOPE_TYPE,
    I2R,
    KEY_BYTES,
    MAX_PLAINTEXT_BYTES,
    MAX_SEQ,
    R2I,
    SESSION_ID_BYTES,
    STATE_LABEL,
    VERSION,
    check_conversation,
    frame,
    message_aad,
    message_nonce,
    parse_envelope,
    seq_bytes,
    session_id,
)
from core.crypto import aead
from core.encoding import b64d, b64e
from core.errors import (
    ChatDecryptionError,
    ChatError,
    EncodingError,
    MalformedChatMessage,
    ReorderedMessage,
    ReplayedMessage,
    SessionExhausted,
)

ROLES = ("initiator", "responder")
STATE_FIELDS = frozenset(
    {"type", "v", "conversation", "role", "key", "peer", "send_seq", "recv_seq", "earlier", "sealed"}
)
EARLIER_FIELDS = frozenset({"sid", "role", "recv_seq"})
MAX_EARLIER_SESSIONS = 4


class UnknownSession(ChatError):
    """An envelope names a session this side does not hold (never had, or replaced too long ago)."""

    code = "other_session"


class _Earlier:
    """The receiving half of a replaced session: enough to read what was sealed before the reset."""

    __slots__ = ("_recv", "id", "recv_key", "recv_seq", "role")

    def __init__(self, sid: bytes, role: str, recv_key: bytes, recv_seq: int) -> None:
        if role not in ROLES or len(sid) != SESSION_ID_BYTES or len(recv_key) != KEY_BYTES:
            raise MalformedChatMessage("not the receiving half of a chat session")
        _check_seq(recv_seq)
        self.id, self.role, self.recv_key, self.recv_seq = sid, role, recv_key, recv_seq
        self._recv = AESGCM(recv_key)

    @property
    def recv_direction(self) -> str:
        return R2I if self.role == "initiator" else I2R

    def __reduce__(self) -> NoReturn:
        raise TypeError("a session holds secrets and cannot be pickled")


def _check_seq(seq: object) -> None:
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ + 1:
        raise MalformedChatMessage("session counters are integers from 0 to 2**32")


class Session:
    """Both directions of one conversation after a completed handshake.

    Only Initiator.on_reply, Responder.on_confirm and Session.from_dict make
    one. Holds secret keys: never printable, hashable or picklable.
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self,
        *,
        conversation: str,
        role: str,
        own: PublicIdentity,
        peer: PublicIdentity,
        transcript_hash: bytes,
        send_key: bytes,
        recv_key: bytes,
        send_seq: int = 0,
        recv_seq: int = 0,
    ) -> None:
        if role not in ROLES:
            raise MalformedChatMessage("a session role is 'initiator' or 'responder'")
        if len(send_key) != KEY_BYTES or len(recv_key) != KEY_BYTES or len(transcript_hash) != KEY_BYTES:
            raise MalformedChatMessage("session keys and the transcript hash are 32 bytes")
        for seq in (send_seq, recv_seq):
            _check_seq(seq)
        self.id = session_id(transcript_hash)
        self.earlier: list[_Earlier] = []
        self.conversation = check_conversation(conversation)
        self.role = role
        self.own = own
        self.peer = peer
        self.transcript_hash = transcript_hash
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self._keys = (send_key, recv_key)
        self.send_seq = send_seq
        self.recv_seq = recv_seq

    @property
    def sid(self) -> str:
        """The session id as envelopes carry it (unpadded base64url of 16 bytes)."""
        return b64e(self.id)

    def replaces(self, previous: Session) -> None:
        """Keep the receiving half of `previous` (and of the sessions it replaced, up to four in all),
        so envelopes the peer sealed under them before this session existed are still read.

        Raises MalformedChatMessage when `previous` belongs to another conversation or is this session.
        """
        if previous.conversation != self.conversation or previous.id == self.id:
            raise MalformedChatMessage("a session replaces an earlier one of the same conversation")
        half = _Earlier(previous.id, previous.role, previous._keys[1], previous.recv_seq)
        kept = [half, *(e for e in previous.earlier if e.id != self.id)]
        self.earlier = kept[:MAX_EARLIER_SESSIONS]

    @property
    def send_direction(self) -> str:
        """'i2r' for the initiator, 'r2i' for the responder."""
        return I2R if self.role == "initiator" else R2I

    @property
    def recv_direction(self) -> str:
        """The direction of the messages this side receives."""
        return R2I if self.role == "initiator" else I2R

    def seal(self, plaintext: bytes) -> dict[str, Any]:
        """Encrypt the next message: returns the envelope {"type": "msg", "v": 1, "seq": n, "ct": b64url}.

        The counter advances even if the envelope is never sent, so a nonce is
        never reused. Raises MalformedChatMessage for a plaintext over 32 KiB and
        SessionExhausted after 2**32 messages.
        """
        if not isinstance(plaintext, bytes) or len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise MalformedChatMessage(f"a chat message is bytes, at most {MAX_PLAINTEXT_BYTES}")
        seq = self.send_seq
        if seq > MAX_SEQ:
            raise SessionExhausted("this session has sent its last message; run a new handshake")
        self.send_seq = seq + 1
        aad = message_aad(self.conversation, self.id, self.send_direction, seq)
        ct = self._send.encrypt(message_nonce(seq), plaintext, aad)
        return {"type": ENVELOPE_TYPE, "v": VERSION, "sid": self.sid, "seq": seq, "ct": b64e(ct)}

    def open(self, envelope: dict[str, Any]) -> bytes:
        """Decrypt the next envelope from the peer in the session it names; only seq == next expected
        of that session is accepted.

        Raises MalformedChatMessage (shape), UnknownSession (a session neither
        this one nor one it replaced), ReplayedMessage (seq already accepted),
        ReorderedMessage (seq ahead of the next expected) and
        ChatDecryptionError (anything else: tampered, wrong key, wrong
        conversation or direction). The counter advances only on success.
        """
        sid, seq, ct = parse_envelope(envelope)
        target: Session | _Earlier | None = self if sid == self.id else None
        target = target or next((e for e in self.earlier if e.id == sid), None)
        if target is None:
            raise UnknownSession("the message was sealed under an encrypted session this side does not hold")
        if seq < target.recv_seq:
            raise ReplayedMessage(f"message {seq} was already received (replay); expected {target.recv_seq}")
        if seq > target.recv_seq:
            raise ReorderedMessage(f"message {seq} arrived out of order; expected {target.recv_seq}")
        aad = message_aad(self.conversation, sid, target.recv_direction, seq)
        try:
            plaintext = target._recv.decrypt(message_nonce(seq), ct, aad)
        except InvalidTag as exc:
            raise ChatDecryptionError() from exc
        target.recv_seq = seq + 1
        return plaintext

    def to_dict(self, storage_key: bytes) -> dict[str, Any]:
        """Export for storage (JSON-able): counters and identities in clear, keys sealed under `storage_key`.

        `storage_key` is a 32-byte AES key the client keeps safe; the counters are
        authenticated with the keys so a stored state cannot be edited unnoticed.
        Save again after every seal/open, or counters go back on restore.
        """
        public = self._public_part()
        secret = self.transcript_hash + self._keys[0] + self._keys[1] + b"".join(e.recv_key for e in self.earlier)
        return {**public, "sealed": b64e(aead.encrypt(storage_key, secret, _state_aad(public)))}

    @classmethod
    def from_dict(cls, data: dict[str, Any], storage_key: bytes) -> Session:
        """Restore a session saved by to_dict. Raises MalformedChatMessage or DecryptionError (wrong key, edited)."""
        if not isinstance(data, dict) or set(data) != STATE_FIELDS or data.get("type") != "session":
            raise MalformedChatMessage("not a saved chat session")
        if data.get("v") != VERSION:
            raise MalformedChatMessage("a saved chat session of another protocol version")
        public = {name: data[name] for name in STATE_FIELDS - {"sealed"}}
        earlier = data["earlier"]
        if (
            not isinstance(earlier, list)
            or len(earlier) > MAX_EARLIER_SESSIONS
            or not all(isinstance(e, dict) and set(e) == EARLIER_FIELDS for e in earlier)
        ):
            raise MalformedChatMessage("not a saved chat session")
        try:
            sealed = b64d(data["sealed"])
            own, peer = PublicIdentity.from_b64(data["key"]), PublicIdentity.from_b64(data["peer"])
            aad = _state_aad(public)
            sids = [b64d(e["sid"]) for e in earlier]
        except (EncodingError, TypeError, AttributeError, OverflowError) as exc:
            raise MalformedChatMessage("not a saved chat session") from exc
        secret = aead.decrypt(storage_key, sealed, aad)
        if len(secret) != 3 * KEY_BYTES + KEY_BYTES * len(earlier):
            raise MalformedChatMessage("not a saved chat session")
        session = cls(
            conversation=data["conversation"],
            role=data["role"],
            own=own,
            peer=peer,
            transcript_hash=secret[:32],
            send_key=secret[32:64],
            recv_key=secret[64:96],
            send_seq=data["send_seq"],
            recv_seq=data["recv_seq"],
        )
        offset = 3 * KEY_BYTES
        for sid, half in zip(sids, earlier, strict=True):
            key = secret[offset : offset + KEY_BYTES]
            session.earlier.append(_Earlier(sid, half["role"], key, half["recv_seq"]))
            offset += KEY_BYTES
        return session

    def _public_part(self) -> dict[str, Any]:
        return {
            "type": "session",
            "v": VERSION,
            "conversation": self.conversation,
            "role": self.role,
            "key": self.own.b64,
            "peer": self.peer.b64,
            "send_seq": self.send_seq,
            "recv_seq": self.recv_seq,
            "earlier": [{"sid": b64e(e.id), "role": e.role, "recv_seq": e.recv_seq} for e in self.earlier],
        }

    def __repr__(self) -> str:
        return f"<Session {self.conversation!r} {self.role} send={self.send_seq} recv={self.recv_seq} (secret)>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("Session holds secrets and cannot be pickled")


def _state_aad(public: dict[str, Any]) -> bytes:
    return frame(
        STATE_LABEL,
        public["conversation"],
        public["role"],
        public["key"],
        public["peer"],
        seq_bytes(public["send_seq"]),
        seq_bytes(public["recv_seq"]),
        *(part for e in public["earlier"] for part in (e["sid"], e["role"], seq_bytes(e["recv_seq"]))),
    )
