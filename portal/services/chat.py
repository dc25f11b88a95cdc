"""Patient chat: identity keys on the ledger, conversations, store-then-relay of messages.

The server never holds a chat key or a plaintext message: browsers (or `core.chat`) run
the handshake and seal messages; this relays handshake messages and stores envelopes as
the opaque JSON the clients sent, size-limited, until the recipient acknowledges them.
A conversation is an accepted connection (its id as a string) between two patients who
have not blocked each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from core.chat import PublicIdentity
from core.crypto import NodeKey
from core.encoding import b64d, b64e
from core.errors import CoreError
from core.ledger import sign_transaction
from portal.extensions import db
from portal.models import AuthSession, ChatKey, ChatMessage, ChatSocket, Connection, User, epoch_ms
from portal.services import accounts, ledger
from portal.services.accounts import Actor
from portal.services.errors import Conflict, Forbidden, NotFound, ServiceError, TooLarge, ValidationFailed
from portal.services.matching import (
    MAX_ID,
    MatchingContext,
    RateLimited,
    blocked_between,
    get_connection,
    id_value,
    patient_by_pseudonym,
    peer_of,
    pseudonym_of,
    rate_limit,
)

KINDS = ("handshake", "message")
MAX_HISTORY_PAGE = 100
MAX_BACKLOG = 1000  # items sent per connect or "sync" (at least one whole conversation: see backlog_budget)
CID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
NO_KEY = "No chat key for this pseudonym."
DEVICE_BYTES = 16
DEVICE_CHARS = 22  # unpadded base64url of 16 bytes


@dataclass(frozen=True)
class ChatLimits:
    max_envelope_bytes: int = 64 * 1024
    max_handshake_bytes: int = 4 * 1024
    send_rate_per_minute: int = 120
    max_undelivered: int = 500  # per recipient and conversation

    @property
    def backlog_budget(self) -> int:
        """Items sent per connect or "sync": MAX_BACKLOG, but never less than one conversation's
        whole backlog, so that every round delivers at least one conversation completely."""
        return max(MAX_BACKLOG, self.max_undelivered)


@dataclass(frozen=True)
class PeerKeys:
    """A peer's chat keys: each device's current one, the superseded ones, the revoked ones."""

    devices: list[ChatKey]
    previous: list[ChatKey]
    revoked: list[ChatKey]


class PeerBacklogFull(ServiceError):
    status = 429
    code = "too_many_unread"


@dataclass(frozen=True)
class Stored:
    """A stored item and whether it was one stored earlier (a resent client message id)."""

    message: ChatMessage
    connection: Connection
    duplicate: bool


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


def _parse_device(value: object) -> str:
    """A device id from a client: unpadded base64url of 16 bytes; None (an app from before
    devices had ids) is the empty device id."""
    if value is None:
        return ""
    try:
        if isinstance(value, str) and len(value) == DEVICE_CHARS and len(b64d(value)) == DEVICE_BYTES:
            return value
    except CoreError:
        pass
    raise ValidationFailed("`device` must be a device id: 16 random bytes in base64url.")


def current_key(user: User, device: str = "") -> ChatKey | None:
    """The current key of one device of `user` ("" for a key registered without a device id)."""
    return db.session.scalar(select(ChatKey).where(ChatKey.current_user_id == user.id, ChatKey.device == device))


def current_keys(user: User) -> list[ChatKey]:
    """The current key of each of the user's devices, newest first."""
    return list(
        db.session.scalars(select(ChatKey).where(ChatKey.current_user_id == user.id).order_by(ChatKey.id.desc()))
    )


def subject_of(salt: bytes, pseudonym: str) -> str:
    """What a `chat_key` transaction names instead of an account: SHA-256 hex of salt || pseudonym.
    A peer who knows the pseudonym checks it; the ledger alone links it to no one, and the
    fresh salt of each registration keeps one patient's registrations apart."""
    return hashlib.sha256(salt + pseudonym.encode()).hexdigest()


REMOVED = "This device was removed from your account: it cannot use the chat any more."


def _device_removed(user: User, device: str) -> bool:
    return device != "" and (
        db.session.scalar(
            select(ChatKey.id).where(
                ChatKey.user_id == user.id, ChatKey.device == device, ChatKey.revoked_at.is_not(None)
            )
        )
        is not None
    )


def bind_device(actor: Actor, device: object) -> str:
    """Note which chat device the actor's sign-in runs on (the app names it when it connects or
    registers its key), so that removing the device ends the sign-in. Forbidden for a removed
    device and for a sign-in already bound to another device. The caller commits."""
    user = _patient(actor)
    device_id = _parse_device(device)
    if device_id == "":
        return device_id
    if _device_removed(user, device_id):
        raise Forbidden(REMOVED)
    if actor.session.chat_device not in (None, device_id):
        raise Forbidden("This sign-in belongs to another device.")
    actor.session.chat_device = device_id
    return device_id


def _revoked(user: User, device: str, fingerprint: str) -> bool:
    return (
        db.session.scalar(
            select(ChatKey.id).where(
                ChatKey.user_id == user.id,
                ChatKey.revoked_at.is_not(None),
                (ChatKey.fingerprint == fingerprint) | ((ChatKey.device == device) & (ChatKey.device != "")),
            )
        )
        is not None
    )


def register_key(
    actor: Actor,
    key: object,
    *,
    node_key: NodeKey,
    ctx: MatchingContext,
    now: datetime,
    device: object = None,
) -> ChatKey:
    """Register the chat identity public key of one of the caller's devices (rate-limited): a
    `chat_key` transaction signed by this node, naming only a salted hash of the patient's
    pseudonym and the device id, goes to the ledger. The device's earlier key is kept as
    superseded (peers see the change), and so is a key registered before devices had ids (that
    device now names itself). Registering the device's current key again changes nothing. A
    removed device, or a revoked key, is refused for good."""
    user = _patient(actor)
    rate_limit(user, "chat_key", ctx.rates.chat_key, f"You can register {ctx.rates.chat_key} chat keys an hour.", now)
    identity = _parse_key(key)
    device_id = bind_device(actor, device)
    wire, fingerprint = identity.b64, identity.fingerprint
    current = current_key(user, device_id)
    if current is not None and current.key == wire:
        db.session.commit()
        return current
    if _revoked(user, device_id, fingerprint):
        raise Forbidden(REMOVED)
    taken = db.session.scalar(
        select(ChatKey.id).where(
            ChatKey.current_user_id == user.id, ChatKey.key == wire, ChatKey.device.not_in((device_id, ""))
        )
    )
    if taken is not None and device_id != "":
        raise Conflict("This chat key is already registered for another of your devices.")
    salt = os.urandom(16)
    subject = subject_of(salt, pseudonym_of(user, ctx.keys.pseudonym))
    payload = {"subject": subject, "salt": b64e(salt), "key": wire, "fingerprint": fingerprint}
    if device_id:
        payload["device"] = device_id
    tx = sign_transaction("chat_key", payload, node_key, epoch_ms(now))
    ledger.queue(tx, now)
    replaced = [current] if current is not None else []
    legacy = current_key(user, "") if device_id else None
    if legacy is not None:
        replaced.append(legacy)
    for row in replaced:
        row.superseded_at, row.current_user_id = now, None
    if replaced:
        db.session.flush()  # free the device's "current key" slot before the new row takes it
    row = ChatKey(
        user_id=user.id,
        current_user_id=user.id,
        device=device_id,
        key=wire,
        fingerprint=fingerprint,
        salt=b64e(salt),
        subject=subject,
        tx_hash=tx.hash,
        created_at=now,
    )
    db.session.add(row)
    try:
        db.session.commit()
    except IntegrityError:  # another registration for this device won the race
        db.session.rollback()
        current = current_key(user, device_id)
        if current is not None and current.key == wire:
            return current
        raise Conflict("Your chat key changed at the same time; try again.") from None
    return row


def own_key(actor: Actor, device: object = None) -> ChatKey | None:
    """The caller's current key: of the device named, else the newest of any device."""
    user = _patient(actor)
    if device is not None:
        return current_key(user, _parse_device(device))
    keys = current_keys(user)
    return keys[0] if keys else None


def own_devices(actor: Actor) -> list[ChatKey]:
    """The caller's devices (the current key of each), newest first."""
    return current_keys(_patient(actor))


@dataclass(frozen=True)
class Removed:
    """A removed device's revoked key and the /chat connections the caller must now close."""

    key: ChatKey
    sockets: list[str]


def revoke_device(actor: Actor, device: object, *, node_key: NodeKey, ctx: MatchingContext, now: datetime) -> Removed:
    """Remove one of the caller's devices (a lost phone, from another one): its key is revoked by
    a `chat_key_revoke` transaction this node signs (salted subject, the key's fingerprint and
    the device id), so peers stop sealing for it; every sign-in bound to that device ends (the
    caller closes the returned sockets), and the device can never use the chat again.
    NotFound for a device that is not one of the caller's current ones; Conflict for the device
    the caller is using."""
    user = _patient(actor)
    rate_limit(user, "chat_key", ctx.rates.chat_key, f"You can change {ctx.rates.chat_key} chat keys an hour.", now)
    device_id = _parse_device(device)
    row = current_key(user, device_id) if device_id else None
    if row is None:
        raise NotFound("No such device of yours.")
    if actor.session.chat_device == device_id:
        raise Conflict("This is the device you are using: remove it from another one.")
    salt = os.urandom(16)
    payload = {
        "subject": subject_of(salt, pseudonym_of(user, ctx.keys.pseudonym)),
        "salt": b64e(salt),
        "fingerprint": row.fingerprint,
        "device": device_id,
    }
    tx = sign_transaction("chat_key_revoke", payload, node_key, epoch_ms(now))
    ledger.queue(tx, now)
    row.revoked_at, row.revoke_tx_hash, row.current_user_id = now, tx.hash, None
    bound = select(AuthSession.id).where(AuthSession.user_id == user.id, AuthSession.chat_device == device_id)
    sockets = list(db.session.scalars(select(ChatSocket.sid).where(ChatSocket.session_id.in_(bound))))
    db.session.execute(delete(ChatSocket).where(ChatSocket.sid.in_(sockets)))
    db.session.execute(delete(AuthSession).where(AuthSession.user_id == user.id, AuthSession.chat_device == device_id))
    db.session.commit()
    return Removed(row, sockets)


def peer_keys(actor: Actor, pseudonym: str) -> PeerKeys:
    """A connected peer's chat keys: the current key of each device (newest first), their
    superseded keys and their revoked ones (newest first), only for a patient with an accepted,
    unblocked connection to them; one NotFound for everyone else."""
    user = _patient(actor)
    peer = patient_by_pseudonym(pseudonym, NO_KEY)
    accepted = db.session.scalar(
        select(Connection.id).where(
            Connection.state == "accepted",
            ((Connection.requester_id == user.id) & (Connection.addressee_id == peer.id))
            | ((Connection.requester_id == peer.id) & (Connection.addressee_id == user.id)),
        )
    )
    if accepted is None or blocked_between(user, peer):
        raise NotFound(NO_KEY)
    keys = list(db.session.scalars(select(ChatKey).where(ChatKey.user_id == peer.id).order_by(ChatKey.id.desc())))
    devices = [k for k in keys if k.current_user_id is not None]
    if not devices:
        raise NotFound("This patient has not registered a chat key yet.")
    previous = [k for k in keys if k.current_user_id is None and k.revoked_at is None]
    return PeerKeys(devices, previous, [k for k in keys if k.revoked_at is not None])


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
    """The user's open conversations (accepted, unblocked), in id order."""
    rows = db.session.scalars(
        select(Connection)
        .where(
            Connection.state == "accepted",
            (Connection.requester_id == user.id) | (Connection.addressee_id == user.id),
        )
        .order_by(Connection.id)
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


@dataclass(frozen=True)
class Lane:
    """Where an item goes between two devices: the recipient (the peer, or the sender for a copy
    to their own other device) and the recipient's device ("" for every device of theirs)."""

    recipient_id: int
    device: str


class DeviceRemoved(ServiceError):
    status = 410
    code = "device_removed"


def _lane(user: User, connection: Connection, to_device: object, to_own: object) -> Lane:
    """The lane a client addresses: the peer's device `to_device`, or with `to_own` one of the
    sender's own other devices; no device (None) is every device of the peer, as before devices.
    A removed device is gone for good (410); a device that is no one's current one is refused."""
    if not isinstance(to_own, bool):
        raise ValidationFailed("`to_own` must be true or false.")
    recipient_id = user.id if to_own else peer_of(connection, user)
    device = _parse_device(to_device) if to_device is not None else ""
    if to_own and device == "":
        raise ValidationFailed("A copy for your own device must name `to_device`.")
    if device == "":
        return Lane(recipient_id, "")
    rows = db.session.execute(
        select(ChatKey.current_user_id, ChatKey.revoked_at).where(
            ChatKey.user_id == recipient_id, ChatKey.device == device
        )
    ).all()
    if any(current is not None for current, _ in rows):
        return Lane(recipient_id, device)
    if any(revoked is not None for _, revoked in rows):
        raise DeviceRemoved("That device was removed: nothing is sent to it any more.")
    raise ValidationFailed("`to_device` is not a device of this conversation.")


def _same_cid(connection: Connection, user: User, lane: Lane, cid: str) -> ChatMessage | None:
    return db.session.scalar(
        select(ChatMessage).where(
            ChatMessage.connection_id == connection.id,
            ChatMessage.sender_id == user.id,
            ChatMessage.recipient_id == lane.recipient_id,
            ChatMessage.recipient_device == lane.device,
            ChatMessage.cid == cid,
        )
    )


def _check_cid(cid: object) -> str:
    if not isinstance(cid, str) or not CID_RE.fullmatch(cid):
        raise ValidationFailed("`cid` must be 1-64 characters: letters, digits, _ or -.")
    return cid


def _sent_last_minute(user: User, now: datetime) -> int:
    """Messages the user sent in the last minute: the copies of one message for several devices
    (one client message id) count once."""
    since = (ChatMessage.sender_id == user.id) & (ChatMessage.sent_at > now - timedelta(minutes=1))
    with_cid = db.session.scalar(
        select(func.count(func.distinct(ChatMessage.cid))).where(since, ChatMessage.cid.is_not(None))
    )
    without = db.session.scalar(select(func.count(ChatMessage.id)).where(since, ChatMessage.cid.is_(None)))
    return (with_cid or 0) + (without or 0)


def store(
    user: User,
    conversation_id: object,
    kind: str,
    body: object,
    *,
    limits: ChatLimits,
    now: datetime,
    cid: object = None,
    device: str = "",
    to_device: object = None,
    to_own: object = False,
) -> Stored:
    """Store a handshake message or an envelope from the sender's `device` for one device of the
    peer's, or of the sender's own (`to_device`, `to_own`), or for every device of the peer (no
    `to_device`), to relay now or deliver later. With a client message id `cid`, a second store
    of the same (conversation, sender, recipient device, cid) stores nothing and returns the first
    item, marked duplicate. Refused when that device has `limits.max_undelivered` items waiting in
    this conversation, and (410) for a removed device."""
    connection = conversation(user, conversation_id)
    lane = _lane(user, connection, to_device, to_own)
    if cid is not None:
        earlier = _same_cid(connection, user, lane, _check_cid(cid))
        if earlier is not None:
            return Stored(earlier, connection, True)
    text = _body(kind, body, limits)
    if _sent_last_minute(user, now) >= limits.send_rate_per_minute:
        raise RateLimited(f"You can send {limits.send_rate_per_minute} messages a minute; wait a moment.")
    waiting = db.session.scalar(
        select(func.count(ChatMessage.id)).where(
            ChatMessage.recipient_id == lane.recipient_id,
            ChatMessage.recipient_device == lane.device,
            ChatMessage.delivered_at.is_(None),
            ChatMessage.connection_id == connection.id,
        )
    )
    if (waiting or 0) >= limits.max_undelivered:
        raise PeerBacklogFull("The other patient has too many unread messages; try again once they have read some.")
    message = ChatMessage(
        connection_id=connection.id,
        sender_id=user.id,
        recipient_id=lane.recipient_id,
        sender_device=device,
        recipient_device=lane.device,
        kind=kind,
        body=text,
        cid=cid,
        sent_at=now,
    )
    db.session.add(message)
    try:
        db.session.commit()
    except IntegrityError:  # the same cid, sent twice at once: answer from the first
        db.session.rollback()
        earlier = _same_cid(connection, user, lane, cid) if isinstance(cid, str) else None
        if earlier is None:
            raise
        return Stored(earlier, connection, True)
    return Stored(message, connection, False)


def stored_by_cid(
    user: User, conversation_id: object, cid: object, to_device: object = None, to_own: object = False
) -> ChatMessage | None:
    """The item `user` sent in the conversation to that device with client message id `cid`, or
    None. A client asks before sealing a message again under a new session, so that only one of
    the two envelopes is ever stored."""
    connection = conversation(user, conversation_id)
    cid = _check_cid(cid)
    try:
        lane = _lane(user, connection, to_device, to_own)
    except DeviceRemoved:
        return None
    return _same_cid(connection, user, lane, cid)


def message_id(value: object, name: str) -> int:
    """A message id sent by a client: a JSON integer in 1..2^63-1."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise ValidationFailed(f"`{name}` must be a message id.")
    return value


def _for_device(user: User, device: str) -> Any:
    """Items for this device of the user's: addressed to it, or to every device of theirs."""
    return (ChatMessage.recipient_id == user.id) & ChatMessage.recipient_device.in_(("", device))


def _from_lane(user: User, connection: Connection, from_device: object, own: object) -> Any:
    """Items from one device: the peer's, or with `own` the user's own other device."""
    if not isinstance(own, bool):
        raise ValidationFailed("`own` must be true or false.")
    sender_id = user.id if own else peer_of(connection, user)
    device = "" if from_device == "" else _parse_device(from_device)  # "": a device from before device ids
    return (ChatMessage.sender_id == sender_id) & (ChatMessage.sender_device == device)


def acknowledge(
    user: User,
    conversation_id: object,
    up_to: object,
    *,
    now: datetime,
    device: str = "",
    from_device: object = None,
    own: object = False,
) -> int:
    """Mark everything for this device of `user` in the conversation with id <= up_to delivered
    (only what came from one device, with `from_device`, since each device pair keeps its own
    order); returns how many were newly marked. Delivered items are never sent again."""
    connection = conversation(user, conversation_id)
    up_to = message_id(up_to, "up_to")
    where = [
        ChatMessage.connection_id == connection.id,
        _for_device(user, device),
        ChatMessage.id <= id_value(up_to),
        ChatMessage.delivered_at.is_(None),
    ]
    if from_device is not None or own is not False:
        where.append(_from_lane(user, connection, from_device, own))
    result = db.session.execute(update(ChatMessage).where(*where).values(delivered_at=now))
    db.session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def undelivered(user: User, conversation_id: int, after: int, limit: int, device: str = "") -> list[ChatMessage]:
    """Items for this device of `user` in one conversation (the caller checked it is open) not
    yet acknowledged, with id > `after`, oldest first, at most `limit`."""
    return list(
        db.session.scalars(
            select(ChatMessage)
            .where(
                _for_device(user, device),
                ChatMessage.connection_id == conversation_id,
                ChatMessage.delivered_at.is_(None),
                ChatMessage.id > after,
            )
            .order_by(ChatMessage.id)
            .limit(limit)
        )
    )


def _unread() -> Any:
    """Count of unread messages: the peer's copies of one message for several devices once."""
    return func.count(func.distinct(func.coalesce(ChatMessage.cid, cast(ChatMessage.id, String))))


def _unread_where(user: User) -> Any:
    return (
        (ChatMessage.recipient_id == user.id)
        & (ChatMessage.sender_id != user.id)
        & ChatMessage.delivered_at.is_(None)
        & (ChatMessage.kind == "message")
    )


def unread_count(user: User, connection_id: int) -> int:
    return (
        db.session.scalar(select(_unread()).where(ChatMessage.connection_id == connection_id, _unread_where(user))) or 0
    )


def unread_counts(user: User) -> dict[int, int]:
    """Unacknowledged chat messages per conversation."""
    rows = db.session.execute(
        select(ChatMessage.connection_id, _unread()).where(_unread_where(user)).group_by(ChatMessage.connection_id)
    )
    return {connection_id: count for connection_id, count in rows}


def _optional_id(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise ValidationFailed(f"`{name}` must be a message id or null.")
    return value


def history(
    user: User,
    conversation_id: object,
    before: object,
    limit: object,
    after: object = None,
    *,
    device: str = "",
    from_device: object = None,
    own: object = False,
) -> tuple[list[ChatMessage], bool]:
    """A page of the conversation (both directions, every device's copy), oldest first, and
    whether more remain in the direction paged: with `after`, the first items with a greater id
    (more = newer ones remain); otherwise the last items before message id `before` (None: the
    newest; more = older ones remain). With `from_device` (or `own`), only what that device sent
    to this `device` of the user's."""
    connection = conversation(user, conversation_id)
    before, after = _optional_id(before, "before"), _optional_id(after, "after")
    if before is not None and after is not None:
        raise ValidationFailed("Send `before` or `after`, not both.")
    if limit is None:
        limit = 50
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_HISTORY_PAGE:
        raise ValidationFailed(f"`limit` must be 1-{MAX_HISTORY_PAGE}.")
    query = select(ChatMessage).where(ChatMessage.connection_id == connection.id)
    if from_device is not None or own is not False:
        query = query.where(_for_device(user, device), _from_lane(user, connection, from_device, own))
    if after is not None:
        forward = query.where(ChatMessage.id > id_value(after)).order_by(ChatMessage.id).limit(limit + 1)
        rows = list(db.session.scalars(forward))
        return rows[:limit], len(rows) > limit
    if before is not None:
        query = query.where(ChatMessage.id < id_value(before))
    rows = list(db.session.scalars(query.order_by(ChatMessage.id.desc()).limit(limit + 1)))
    return list(reversed(rows[:limit])), len(rows) > limit


def body_of(message: ChatMessage) -> Any:
    return json.loads(message.body)


def require_patient(actor: Actor) -> User:
    """The actor's account if it is a patient's; Forbidden otherwise."""
    return _patient(actor)


# -- live sockets ---------------------------------------------------------------------------


def socket_opened(sid: str, actor: Actor, *, now: datetime) -> None:
    """Note a /chat connection and the session it was opened with (for `sockets_of_session`)."""
    db.session.add(ChatSocket(sid=sid, session_id=actor.session.id, connected_at=now))
    db.session.commit()


def socket_closed(sid: str) -> None:
    db.session.execute(delete(ChatSocket).where(ChatSocket.sid == sid))
    db.session.commit()


def sockets_of_session(token: str, *, now: datetime) -> list[str]:
    """The sids of every /chat connection opened with `token` (in any process), forgotten here:
    the caller closes them. Empty for a token that resolves to no session."""
    actor = accounts.resolve(token, now)
    if actor is None:
        return []
    return _forget_sockets(ChatSocket.session_id == actor.session.id)


def sockets_of_other_sessions(actor: Actor) -> list[str]:
    """The sids of the actor's /chat connections opened with any session but this one: a password
    change ends those sessions (their rows go with them) and the caller then closes these."""
    others = select(AuthSession.id).where(AuthSession.user_id == actor.user.id, AuthSession.id != actor.session.id)
    return list(db.session.scalars(select(ChatSocket.sid).where(ChatSocket.session_id.in_(others))))


def _forget_sockets(where: Any) -> list[str]:
    sids = list(db.session.scalars(select(ChatSocket.sid).where(where)))
    db.session.execute(delete(ChatSocket).where(where))
    db.session.commit()
    return sids
