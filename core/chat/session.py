"""An established chat session: AES-256-GCM per direction, counters, strict in-order delivery."""

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
    STATE_LABEL,
    VERSION,
    check_conversation,
    frame,
    message_aad,
    message_nonce,
    parse_envelope,
    seq_bytes,
)
from core.crypto import aead
from core.encoding import b64d, b64e
from core.errors import (
    ChatDecryptionError,
    EncodingError,
    MalformedChatMessage,
    ReorderedMessage,
    ReplayedMessage,
    SessionExhausted,
)

ROLES = ("initiator", "responder")
STATE_FIELDS = frozenset({"type", "v", "conversation", "role", "key", "peer", "send_seq", "recv_seq", "sealed"})


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
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ + 1:
                raise MalformedChatMessage("session counters are integers from 0 to 2**32")
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
        aad = message_aad(self.conversation, self.send_direction, seq)
        ct = self._send.encrypt(message_nonce(seq), plaintext, aad)
        return {"type": ENVELOPE_TYPE, "v": VERSION, "seq": seq, "ct": b64e(ct)}

    def open(self, envelope: dict[str, Any]) -> bytes:
        """Decrypt the next envelope from the peer; only seq == next expected is accepted.

        Raises MalformedChatMessage (shape), ReplayedMessage (seq already
        accepted), ReorderedMessage (seq ahead of the next expected) and
        ChatDecryptionError (anything else: tampered, wrong key, wrong
        conversation or direction). The counter advances only on success.
        """
        seq, ct = parse_envelope(envelope)
        if seq < self.recv_seq:
            raise ReplayedMessage(f"message {seq} was already received (replay); expected {self.recv_seq}")
        if seq > self.recv_seq:
            raise ReorderedMessage(f"message {seq} arrived out of order; expected {self.recv_seq}")
        aad = message_aad(self.conversation, self.recv_direction, seq)
        try:
            plaintext = self._recv.decrypt(message_nonce(seq), ct, aad)
        except InvalidTag as exc:
            raise ChatDecryptionError() from exc
        self.recv_seq = seq + 1
        return plaintext

    def to_dict(self, storage_key: bytes) -> dict[str, Any]:
        """Export for storage (JSON-able): counters and identities in clear, keys sealed under `storage_key`.

        `storage_key` is a 32-byte AES key the client keeps safe; the counters are
        authenticated with the keys so a stored state cannot be edited unnoticed.
        Save again after every seal/open, or counters go back on restore.
        """
        public = self._public_part()
        secret = self.transcript_hash + self._keys[0] + self._keys[1]
        return {**public, "sealed": b64e(aead.encrypt(storage_key, secret, _state_aad(public)))}

    @classmethod
    def from_dict(cls, data: dict[str, Any], storage_key: bytes) -> Session:
        """Restore a session saved by to_dict. Raises MalformedChatMessage or DecryptionError (wrong key, edited)."""
        if not isinstance(data, dict) or set(data) != STATE_FIELDS or data.get("type") != "session":
            raise MalformedChatMessage("not a saved chat session")
        if data.get("v") != VERSION:
            raise MalformedChatMessage("a saved chat session of another protocol version")
        public = {name: data[name] for name in STATE_FIELDS - {"sealed"}}
        try:
            sealed = b64d(data["sealed"])
            own, peer = PublicIdentity.from_b64(data["key"]), PublicIdentity.from_b64(data["peer"])
            aad = _state_aad(public)
        except (EncodingError, TypeError, AttributeError, OverflowError) as exc:
            raise MalformedChatMessage("not a saved chat session") from exc
        secret = aead.decrypt(storage_key, sealed, aad)
        return cls(
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
    )
