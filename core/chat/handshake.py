"""The handshake: signed ephemeral ECDH, HKDF over the transcript, key confirmation both ways.

    initiator                                   responder
    hello   {conversation, key, peer, eph, nonce, sig_I}  ->
            <-  reply   {conversation, key, eph, nonce, sig_R, mac_R}
    confirm {conversation, mac_I}  ->

sig_I signs the hello transcript, sig_R the whole transcript (both sides'
fields); the keys come from HKDF-SHA256(ECDH(eph_I, eph_R), salt = SHA-256 of
the whole transcript); each MAC proves its sender derived the same keys over the
same transcript. Every check happens before any state changes, so a rejected
message leaves the handshake waiting for a genuine one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.chat.identity import SCALAR_BYTES, IdentityKey, PublicIdentity, load_point, point_bytes, private_from_scalar
from core.chat.session import Session
from core.chat.wire import (
    HELLO_LABEL,
    I2R,
    KEY_BYTES,
    NONCE_BYTES,
    PREFIX,
    R2I,
    REPLY_LABEL,
    STATE_LABEL,
    VERSION,
    check_conversation,
    frame,
    parse_handshake,
)
from core.crypto import aead
from core.encoding import b64d, b64e, canonical
from core.errors import (
    EncodingError,
    IdentityKeyMismatch,
    KeyConfirmationError,
    MalformedChatMessage,
    UnexpectedHandshakeMessage,
    WrongConversation,
)

Rng = Callable[[int], bytes]
STATE_FIELDS = frozenset({"type", "v", "conversation", "key", "peer", "message", "sealed"})


@dataclass(frozen=True, repr=False)
class KeySchedule:
    """The four keys of a session, each HKDF-SHA256(ikm = ECDH secret, salt = transcript hash, info = label)."""

    i2r: bytes
    r2i: bytes
    confirm_i2r: bytes
    confirm_r2i: bytes

    def __repr__(self) -> str:
        return "<KeySchedule (secret)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("KeySchedule holds secrets and cannot be pickled")


def hello_transcript(conversation: str, initiator: bytes, responder: bytes, eph: bytes, nonce: bytes) -> bytes:
    """The bytes the initiator signs: frame(hello label, conversation, both identity points, eph_I, nonce_I)."""
    return frame(HELLO_LABEL, conversation, initiator, responder, eph, nonce)


def full_transcript(hello: bytes, eph: bytes, nonce: bytes) -> bytes:
    """The bytes the responder signs: the hello transcript then frame(reply label, eph_R, nonce_R)."""
    return hello + frame(REPLY_LABEL, eph, nonce)


def key_schedule(shared: bytes, transcript_hash: bytes) -> KeySchedule:
    """Derive the session's four 32-byte keys from the ECDH secret and the transcript hash."""

    def expand(label: str) -> bytes:
        info = f"{PREFIX} {label}".encode()
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=transcript_hash, info=info).derive(shared)

    return KeySchedule(expand("key i2r"), expand("key r2i"), expand("confirm i2r"), expand("confirm r2i"))


def confirmation(key: bytes, direction: str, transcript_hash: bytes) -> bytes:
    """The key confirmation MAC of one direction: HMAC-SHA256(key, frame(confirm label, transcript hash))."""
    return hmac.new(key, frame(f"{PREFIX} confirm {direction}", transcript_hash), hashlib.sha256).digest()


def _ephemeral(rng: Rng) -> ec.EllipticCurvePrivateKey:
    while True:
        try:
            return private_from_scalar(rng(SCALAR_BYTES))
        except MalformedChatMessage:
            continue  # out-of-range scalar: probability about 2**-32, draw again


def _nonce(rng: Rng) -> bytes:
    nonce = rng(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise ValueError("rng returned the wrong number of bytes")
    return nonce


def _check_conversation(expected: str, fields: dict[str, Any], kind: str) -> None:
    if fields["conversation"] != expected:
        raise WrongConversation(f"the {kind} is for another conversation")


def _check_peer_key(peer: PublicIdentity, key: bytes, role: str) -> None:
    if key != peer.raw:
        raise IdentityKeyMismatch(f"the {role}'s identity key does not match the one registered on the ledger")


def _state_aad(kind: str, conversation: str, key: str, peer: str, message: dict[str, Any]) -> bytes:
    return frame(STATE_LABEL, kind, conversation, key, peer, canonical(message))


def _export(
    kind: str, obj: Initiator | Responder, message: dict[str, Any], secret: bytes, storage_key: bytes
) -> dict[str, Any]:
    public = (kind, obj.conversation, obj.identity.public.b64, obj.peer.b64, message)
    sealed = aead.encrypt(storage_key, secret, _state_aad(*public))
    return {"type": kind, "v": VERSION, "conversation": obj.conversation, "key": public[2], "peer": public[3],
            "message": message, "sealed": b64e(sealed)}  # fmt: skip


def _import(kind: str, data: dict[str, Any], identity: IdentityKey, storage_key: bytes) -> tuple[PublicIdentity, bytes]:
    """Check a saved handshake state of `kind` for `identity`; return (peer, opened secret)."""
    if not isinstance(data, dict) or set(data) != STATE_FIELDS or data.get("type") != kind or data.get("v") != VERSION:
        raise MalformedChatMessage(f"not a saved {kind} handshake")
    if data["key"] != identity.public.b64:
        raise IdentityKeyMismatch(f"this saved {kind} handshake belongs to another identity key")
    try:
        peer = PublicIdentity.from_b64(data["peer"])
        aad = _state_aad(kind, check_conversation(data["conversation"]), data["key"], data["peer"], data["message"])
        sealed = b64d(data["sealed"])
    except (EncodingError, TypeError, AttributeError) as exc:
        raise MalformedChatMessage(f"not a saved {kind} handshake") from exc
    return peer, aead.decrypt(storage_key, sealed, aad)


class Initiator:
    """The side that asked to connect. Call hello(), send it, then on_reply(reply) once.

    `peer` is the responder's identity key as registered on the ledger; `rng`
    gives random bytes (os.urandom unless a test fixes it).
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, identity: IdentityKey, peer: PublicIdentity, conversation: str, rng: Rng = os.urandom) -> None:
        self.identity = identity
        self.peer = peer
        self.conversation = check_conversation(conversation)
        self._rng = rng
        self._hello: dict[str, Any] | None = None
        self._eph: ec.EllipticCurvePrivateKey | None = None
        self._transcript = b""
        self._done = False

    def hello(self) -> dict[str, Any]:
        """The hello message (made on first call, the same one after, so it can be resent)."""
        if self._hello is None:
            eph = _ephemeral(self._rng)
            eph_raw = point_bytes(eph.public_key())
            nonce = _nonce(self._rng)
            own = self.identity.public.raw
            transcript = hello_transcript(self.conversation, own, self.peer.raw, eph_raw, nonce)
            self._hello = {
                "type": "hello",
                "v": VERSION,
                "conversation": self.conversation,
                "key": b64e(own),
                "peer": self.peer.b64,
                "eph": b64e(eph_raw),
                "nonce": b64e(nonce),
                "sig": b64e(self.identity.sign(transcript)),
            }
            self._eph, self._transcript = eph, transcript
        return dict(self._hello)

    def on_reply(self, reply: dict[str, Any]) -> tuple[dict[str, Any], Session]:
        """Check the responder's reply; return (confirm message to send, established Session).

        Raises UnexpectedHandshakeMessage (no hello yet, or a reply was already
        accepted), MalformedChatMessage, WrongConversation, IdentityKeyMismatch
        (the reply's key is not the peer's ledger key), HandshakeSignatureError
        and KeyConfirmationError.
        """
        if self._eph is None or self._done:
            raise UnexpectedHandshakeMessage(
                "a reply was already accepted (replayed reply)" if self._done else "a reply before the hello was sent"
            )
        fields = parse_handshake(reply, "reply")
        _check_conversation(self.conversation, fields, "reply")
        _check_peer_key(self.peer, fields["key"], "responder")
        peer_eph = load_point(fields["eph"])
        transcript = full_transcript(self._transcript, fields["eph"], fields["nonce"])
        self.peer.verify(fields["sig"], transcript, "reply")
        transcript_hash = hashlib.sha256(transcript).digest()
        keys = key_schedule(self._eph.exchange(ec.ECDH(), peer_eph), transcript_hash)
        if not hmac.compare_digest(fields["mac"], confirmation(keys.confirm_r2i, R2I, transcript_hash)):
            raise KeyConfirmationError("the responder's key confirmation does not match our transcript and keys")
        self._done = True
        self._eph = None
        confirm = {
            "type": "confirm",
            "v": VERSION,
            "conversation": self.conversation,
            "mac": b64e(confirmation(keys.confirm_i2r, I2R, transcript_hash)),
        }
        session = Session(
            conversation=self.conversation,
            role="initiator",
            own=self.identity.public,
            peer=self.peer,
            transcript_hash=transcript_hash,
            send_key=keys.i2r,
            recv_key=keys.r2i,
        )
        return confirm, session

    def to_dict(self, storage_key: bytes) -> dict[str, Any]:
        """Save a handshake waiting for its reply (JSON-able): the hello in clear, the ephemeral key sealed.

        The ephemeral private key is sealed with AES-256-GCM under the caller's
        32-byte `storage_key`. Raises UnexpectedHandshakeMessage when there is
        nothing to wait for (no hello yet, or already done).
        """
        if self._eph is None or self._hello is None:
            raise UnexpectedHandshakeMessage("only an initiator waiting for its reply can be saved")
        scalar = self._eph.private_numbers().private_value.to_bytes(SCALAR_BYTES, "big")
        return _export("initiator", self, self._hello, scalar, storage_key)

    @classmethod
    def from_dict(cls, data: dict[str, Any], identity: IdentityKey, storage_key: bytes) -> Initiator:
        """Restore an initiator saved by to_dict; raises MalformedChatMessage, IdentityKeyMismatch, DecryptionError."""
        peer, scalar = _import("initiator", data, identity, storage_key)
        initiator = cls(identity, peer, data["conversation"])
        hello = data["message"]
        fields = parse_handshake(hello, "hello")
        eph = private_from_scalar(scalar)
        initiator._hello = dict(hello)
        initiator._eph = eph
        initiator._transcript = hello_transcript(
            initiator.conversation, identity.public.raw, peer.raw, point_bytes(eph.public_key()), fields["nonce"]
        )
        return initiator

    def __repr__(self) -> str:
        return f"<Initiator {self.conversation!r} (secret)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Initiator holds secrets and cannot be pickled")


class Responder:
    """The side that accepted. Call on_hello(hello) -> reply, send it, then on_confirm(confirm) -> Session."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, identity: IdentityKey, peer: PublicIdentity, conversation: str, rng: Rng = os.urandom) -> None:
        self.identity = identity
        self.peer = peer
        self.conversation = check_conversation(conversation)
        self._rng = rng
        self._pending: tuple[bytes, KeySchedule] | None = None
        self._reply: dict[str, Any] | None = None
        self._done = False

    def on_hello(self, hello: dict[str, Any]) -> dict[str, Any]:
        """Check the initiator's hello and answer it with a reply.

        Raises UnexpectedHandshakeMessage (a hello was already answered),
        MalformedChatMessage, WrongConversation, IdentityKeyMismatch (the
        hello's key is not the peer's ledger key, or it is addressed to another
        identity key than ours) and HandshakeSignatureError.
        """
        if self._pending is not None or self._done:
            raise UnexpectedHandshakeMessage("a hello was already answered in this handshake (replayed hello)")
        fields = parse_handshake(hello, "hello")
        _check_conversation(self.conversation, fields, "hello")
        _check_peer_key(self.peer, fields["key"], "initiator")
        own = self.identity.public.raw
        if fields["peer"] != own:
            raise IdentityKeyMismatch("the hello is addressed to another identity key than ours")
        peer_eph = load_point(fields["eph"])
        hello_bytes = hello_transcript(self.conversation, fields["key"], own, fields["eph"], fields["nonce"])
        self.peer.verify(fields["sig"], hello_bytes, "hello")
        eph = _ephemeral(self._rng)
        eph_raw = point_bytes(eph.public_key())
        nonce = _nonce(self._rng)
        transcript = full_transcript(hello_bytes, eph_raw, nonce)
        transcript_hash = hashlib.sha256(transcript).digest()
        keys = key_schedule(eph.exchange(ec.ECDH(), peer_eph), transcript_hash)
        self._pending = (transcript_hash, keys)
        self._reply = {
            "type": "reply",
            "v": VERSION,
            "conversation": self.conversation,
            "key": self.identity.public.b64,
            "eph": b64e(eph_raw),
            "nonce": b64e(nonce),
            "sig": b64e(self.identity.sign(transcript)),
            "mac": b64e(confirmation(keys.confirm_r2i, R2I, transcript_hash)),
        }
        return dict(self._reply)

    def on_confirm(self, confirm: dict[str, Any]) -> Session:
        """Check the initiator's key confirmation; return the established Session.

        Raises UnexpectedHandshakeMessage (no hello answered yet, or already
        confirmed), MalformedChatMessage, WrongConversation and KeyConfirmationError.
        """
        if self._pending is None:
            raise UnexpectedHandshakeMessage(
                "the handshake is already confirmed (replayed confirm)" if self._done else "a confirm before any hello"
            )
        fields = parse_handshake(confirm, "confirm")
        _check_conversation(self.conversation, fields, "confirm")
        transcript_hash, keys = self._pending
        if not hmac.compare_digest(fields["mac"], confirmation(keys.confirm_i2r, I2R, transcript_hash)):
            raise KeyConfirmationError("the initiator's key confirmation does not match our transcript and keys")
        self._pending = None
        self._reply = None
        self._done = True
        return Session(
            conversation=self.conversation,
            role="responder",
            own=self.identity.public,
            peer=self.peer,
            transcript_hash=transcript_hash,
            send_key=keys.r2i,
            recv_key=keys.i2r,
        )

    def to_dict(self, storage_key: bytes) -> dict[str, Any]:
        """Save a handshake waiting for its confirm (JSON-able): the reply in clear, the keys sealed.

        The transcript hash and the derived keys are sealed with AES-256-GCM under
        the caller's 32-byte `storage_key`. Raises UnexpectedHandshakeMessage when
        there is nothing to wait for (no hello answered yet, or already done).
        """
        if self._pending is None or self._reply is None:
            raise UnexpectedHandshakeMessage("only a responder waiting for the confirm can be saved")
        th, keys = self._pending
        secret = th + keys.i2r + keys.r2i + keys.confirm_i2r + keys.confirm_r2i
        return _export("responder", self, self._reply, secret, storage_key)

    @classmethod
    def from_dict(cls, data: dict[str, Any], identity: IdentityKey, storage_key: bytes) -> Responder:
        """Restore a responder saved by to_dict; raises MalformedChatMessage, IdentityKeyMismatch, DecryptionError."""
        peer, secret = _import("responder", data, identity, storage_key)
        responder = cls(identity, peer, data["conversation"])
        parse_handshake(data["message"], "reply")
        keys = KeySchedule(*(secret[i : i + KEY_BYTES] for i in range(KEY_BYTES, 5 * KEY_BYTES, KEY_BYTES)))
        responder._pending = (secret[:KEY_BYTES], keys)
        responder._reply = dict(data["message"])
        return responder

    def __repr__(self) -> str:
        return f"<Responder {self.conversation!r} (secret)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Responder holds secrets and cannot be pickled")
