"""End-to-end encrypted, mutually authenticated patient chat (docs/chat-protocol.md).

Same protocol as pwa/chat-crypto.js: identity keys ECDSA P-256; a three-message
handshake (hello, reply, confirm) of signed ephemeral ECDH through an untrusted
relay; keys from HKDF-SHA256 over the whole transcript; AES-256-GCM messages
with per-direction counters, each envelope naming its session. Errors are core.errors.ChatError subclasses with a
stable `code`.
"""

from core.chat.devices import DeviceChanges, device_changes
from core.chat.handshake import Initiator, Responder
from core.chat.identity import IdentityKey, PublicIdentity, key_change
from core.chat.session import MAX_EARLIER_SESSIONS, Session, UnknownSession
from core.chat.wire import MAX_ENVELOPE_BYTES, MAX_HANDSHAKE_BYTES, MAX_PLAINTEXT_BYTES, VERSION

__all__ = [
    "MAX_EARLIER_SESSIONS",
    "MAX_ENVELOPE_BYTES",
    "MAX_HANDSHAKE_BYTES",
    "MAX_PLAINTEXT_BYTES",
    "VERSION",
    "DeviceChanges",
    "IdentityKey",
    "Initiator",
    "PublicIdentity",
    "Responder",
    "Session",
    "UnknownSession",
    "device_changes",
    "key_change",
]
