"""Patient chat: identity keys on the ledger, conversations, store-then-relay of messages.

The server never holds a chat key or a plaintext message: browsers (or `core.chat`) run
the handshake and seal messages; this relays handshake messages and stores envelopes as
the opaque JSON the clients sent, size-limited, until the recipient acknowledges them.
A conversation is an accepted connection (its id as a string) between two patients who
have not blocked each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from core.chat import PublicIdentity
from core.errors import CoreError
from core.ledger import sign_transaction
from portal.extensions import db
from portal.models import ChatKey, ChatMessage, Connection, User, epoch_ms
from portal.services import ledger
from portal.services.accounts import Actor
from portal.services.errors import Conflict, Forbidden, NotFound, TooLarge, ValidationFailed
from portal.services.matching import RateLimited, blocked_between, get_connection, patient_by_pseudonym, peer_of

KINDS = ("handshake", "message")
MAX_HISTORY_PAGE = 100
MAX_BACKLOG = 1000


@dataclass(frozen=True)
class ChatLimits:
    max_envelope_bytes: int = 64 * 1024
    max_handshake_bytes: int = 4 * 1024
    send_rate_per_minute: int = 120


def _patient(actor: Actor) -> User:
    if actor.user.role != "patient":
        raise Forbidden("Only patients use symptom matching and chat.")
    return actor.user


# -- identity keys --------------------------------------------------------------------------


def _parse_key(value: object) -> PublicIdentity:
    try:
        if isinstance(value, str) and len(value) <= 100:
            return PublicIdentity.from_b64(value)
    except CoreError:
        pass
    raise ValidationFailed("`key` must be a P-256 public key: the 65-byte uncompressed point in base64url.")


def current_key(user: User) -> ChatKey | None:
    return db.session.scalar(select(ChatKey).where(ChatKey.user_id == user.id, ChatKey.superseded_at.is_(None)))


def register_key(actor: Actor, key: object, *, now: datetime) -> ChatKey:
    """Register the caller's chat identity public key: a `chat_key` transaction signed by the
    patient goes to the ledger; an earlier key is kept as superseded (peers see the change).
    Registering the current key again changes nothing."""
    user = _patient(actor)
    identity = _parse_key(key)
    wire, fingerprint = identity.b64, identity.fingerprint
    current = current_key(user)
    if current is not None and current.key == wire:
        return current
    payload = {"account": user.public_id, "key": wire, "fingerprint": fingerprint}
    tx = sign_transaction("chat_key", payload, actor.keys(), epoch_ms(now))
    ledger.queue(tx, now)
    if current is not None:
        current.superseded_at = now
    row = ChatKey(user_id=user.id, key=wire, fingerprint=fingerprint, tx_hash=tx.hash, created_at=now)
    db.session.add(row)
    db.session.commit()
    return row


def own_key(actor: Actor) -> ChatKey | None:
    return current_key(_patient(actor))


def peer_keys(actor: Actor, pseudonym: str) -> tuple[ChatKey, list[ChatKey]]:
    """A connected peer's current chat key and their earlier ones (newest first), only for a
    patient with an accepted, unblocked connection to them."""
    user = _patient(actor)
    peer = patient_by_pseudonym(pseudonym)
    accepted = db.session.scalar(
        select(Connection.id).where(
            Connection.state == "accepted",
            ((Connection.requester_id == user.id) & (Connection.addressee_id == peer.id))
            | ((Connection.requester_id == peer.id) & (Connection.addressee_id == user.id)),
        )
    )
    if accepted is None or blocked_between(user, peer):
        raise Forbidden("You can see the chat key of a patient you are connected with only.")
    keys = list(db.session.scalars(select(ChatKey).where(ChatKey.user_id == peer.id).order_by(ChatKey.id.desc())))
    if not keys or keys[0].superseded_at is not None:
        raise NotFound("This patient has not registered a chat key yet.")
    return keys[0], keys[1:]


# -- conversations --------------------------------------------------------------------------


def conversation(user: User, conversation_id: object) -> Connection:
    """The accepted connection `conversation_id` of which `user` is a member; Forbidden for
    anyone else (whether or not it exists), Conflict before it is accepted or while blocked."""
    connection = get_connection(conversation_id)
    if connection is None or user.id not in (connection.requester_id, connection.addressee_id):
        raise Forbidden("You are not a member of this conversation.")
    if connection.state != "accepted":
        raise Conflict("This conversation has not been accepted.")
    peer = db.session.get(User, peer_of(connection, user))
    if peer is None or blocked_between(user, peer):
        raise Forbidden("This conversation is closed: one of you has blocked the other.")
    return connection


def conversations(user: User) -> list[Connection]:
    """The user's open conversations (accepted, unblocked)."""
    rows = db.session.scalars(
        select(Connection).where(
            Connection.state == "accepted",
            (Connection.requester_id == user.id) | (Connection.addressee_id == user.id),
        )
    )
    result = []
    for connection in rows:
        peer = db.session.get(User, peer_of(connection, user))
        if peer is not None and not blocked_between(user, peer):
            result.append(connection)
    return result


def _body(kind: object, body: object, limits: ChatLimits) -> str:
    if kind not in KINDS:
        raise ValidationFailed("Unknown message kind.")
    name = "message" if kind == "handshake" else "envelope"
    if not isinstance(body, dict) or not body:
        raise ValidationFailed(f"`{name}` must be a non-empty JSON object.")
    try:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise ValidationFailed(f"`{name}` must be plain JSON.") from None
    limit = limits.max_handshake_bytes if kind == "handshake" else limits.max_envelope_bytes
    if len(text.encode()) > limit:
        raise TooLarge(f"The {name} is larger than {limit} bytes.")
    return text


def store(
    user: User, conversation_id: object, kind: str, body: object, *, limits: ChatLimits, now: datetime
) -> tuple[ChatMessage, Connection]:
    """Store a handshake message or an envelope for the peer (to relay now or deliver later)."""
    connection = conversation(user, conversation_id)
    text = _body(kind, body, limits)
    recent = db.session.scalar(
        select(func.count(ChatMessage.id)).where(
            ChatMessage.sender_id == user.id, ChatMessage.sent_at > now - timedelta(minutes=1)
        )
    )
    if (recent or 0) >= limits.send_rate_per_minute:
        raise RateLimited(f"You can send {limits.send_rate_per_minute} messages a minute; wait a moment.")
    message = ChatMessage(
        connection_id=connection.id,
        sender_id=user.id,
        recipient_id=peer_of(connection, user),
        kind=kind,
        body=text,
        sent_at=now,
    )
    db.session.add(message)
    db.session.commit()
    return message, connection


def acknowledge(user: User, conversation_id: object, up_to: object, *, now: datetime) -> int:
    """Mark everything for `user` in the conversation with id <= up_to delivered; returns how
    many were newly marked. Delivered items are never sent again."""
    connection = conversation(user, conversation_id)
    if not isinstance(up_to, int) or isinstance(up_to, bool) or up_to < 0:
        raise ValidationFailed("`up_to` must be a message id.")
    result = db.session.execute(
        update(ChatMessage)
        .where(
            ChatMessage.connection_id == connection.id,
            ChatMessage.recipient_id == user.id,
            ChatMessage.id <= up_to,
            ChatMessage.delivered_at.is_(None),
        )
        .values(delivered_at=now)
    )
    db.session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def undelivered(user: User, conversation_id: int | None = None, after: int = 0) -> list[ChatMessage]:
    """Items for `user` not yet acknowledged, oldest first, in open conversations only."""
    open_ids = [c.id for c in conversations(user)]
    if conversation_id is not None:
        open_ids = [i for i in open_ids if i == conversation_id]
    if not open_ids:
        return []
    return list(
        db.session.scalars(
            select(ChatMessage)
            .where(
                ChatMessage.recipient_id == user.id,
                ChatMessage.delivered_at.is_(None),
                ChatMessage.connection_id.in_(open_ids),
                ChatMessage.id > after,
            )
            .order_by(ChatMessage.id)
            .limit(MAX_BACKLOG)
        )
    )


def unread_count(user: User, connection_id: int) -> int:
    return (
        db.session.scalar(
            select(func.count(ChatMessage.id)).where(
                ChatMessage.connection_id == connection_id,
                ChatMessage.recipient_id == user.id,
                ChatMessage.delivered_at.is_(None),
                ChatMessage.kind == "message",
            )
        )
        or 0
    )


def unread_counts(user: User) -> dict[int, int]:
    """Unacknowledged chat messages per conversation."""
    rows = db.session.execute(
        select(ChatMessage.connection_id, func.count(ChatMessage.id))
        .where(ChatMessage.recipient_id == user.id, ChatMessage.delivered_at.is_(None), ChatMessage.kind == "message")
        .group_by(ChatMessage.connection_id)
    )
    return {connection_id: count for connection_id, count in rows}


def history(user: User, conversation_id: object, before: object, limit: object) -> tuple[list[ChatMessage], bool]:
    """A page of the conversation (both directions), oldest first, ending before message id
    `before` (None: the newest); and whether older items remain."""
    connection = conversation(user, conversation_id)
    if before is not None and (not isinstance(before, int) or isinstance(before, bool) or before <= 0):
        raise ValidationFailed("`before` must be a message id or null.")
    if limit is None:
        limit = 50
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_HISTORY_PAGE:
        raise ValidationFailed(f"`limit` must be 1-{MAX_HISTORY_PAGE}.")
    query = select(ChatMessage).where(ChatMessage.connection_id == connection.id)
    if before is not None:
        query = query.where(ChatMessage.id < before)
    rows = list(db.session.scalars(query.order_by(ChatMessage.id.desc()).limit(limit + 1)))
    return list(reversed(rows[:limit])), len(rows) > limit


def body_of(message: ChatMessage) -> Any:
    return json.loads(message.body)


def require_patient(actor: Actor) -> User:
    """The actor's account if it is a patient's; Forbidden otherwise."""
    return _patient(actor)
