"""Socket.IO namespace /chat: authenticated at connect, store-then-relay, delivery until acked.

Rooms: every connection of a user is in `user:<id>` (requests, unread counts); a member's
connections that joined a conversation are in `conversation:<cid>:user:<id>`, where the
peer's handshake messages and envelopes are relayed. Order: a connection is sent a
conversation's stored, unacknowledged items (in id order) before it joins that
conversation's live room, then whatever was stored meanwhile; so live items follow the
backlog. This happens on connect for every open conversation (at most a budget of items per
round: the "backlog" event says more wait), on "join" of one not joined yet, and again on
"sync"; an item is never sent after its "ack". Every client event is answered through its
ack callback with {"ok": true, ...} or {"error": {"code", "message"}}.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import request, session
from flask_socketio import ConnectionRefusedError, disconnect, emit, join_room

from portal import runtime
from portal.api import iso
from portal.api.social import connection_json
from portal.errors import log_busy
from portal.extensions import db, socketio
from portal.models import ChatMessage, Connection, User, utcnow
from portal.services import accounts, chat, matching
from portal.services.errors import DATABASE_BUSY, Busy, ServiceError, Unauthorized, ValidationFailed
from portal.services.inputs import check_json

log = logging.getLogger(__name__)

NAMESPACE = "/chat"


@dataclass
class Client:
    """One Socket.IO connection of this process: whose it is and what it was sent."""

    token: str
    user_id: int
    device: str = ""  # the chat device the app named at connect ("" for none)
    sent_up_to: dict[int, int] = field(default_factory=dict)  # per conversation: highest id sent here
    joined: set[int] = field(default_factory=set)


_clients: dict[str, Client] = {}
_clients_lock = threading.Lock()


def user_room(user_id: int) -> str:
    return f"user:{user_id}"


def conversation_room(conversation_id: int, user_id: int, device: str = "") -> str:
    """Every connection of the user in the conversation (device ""), or those of one device."""
    room = f"conversation:{conversation_id}:user:{user_id}"
    return f"{room}:device:{device}" if device else room


def _error(exc: ServiceError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message}}


def _item(message: ChatMessage, sender: str) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {
        "conversation": str(message.connection_id),
        "id": message.id,
        "from": sender,
        "from_device": message.sender_device,
        "to_device": message.recipient_device,
        "own": message.sender_id == message.recipient_id,
        "sent_at": iso(message.sent_at),
    }
    data["message" if message.kind == "handshake" else "envelope"] = chat.body_of(message)
    return message.kind, data


def _deliver(client: Client, messages: list[ChatMessage]) -> None:
    """Send stored items to this connection, in id order."""
    names: dict[int, str] = {}
    for message in messages:
        if message.sender_id not in names:
            sender = db.session.get(User, message.sender_id)
            names[message.sender_id] = matching.pseudonym_of(sender, runtime.pseudonym_key()) if sender else "?"
        event, data = _item(message, names[message.sender_id])
        emit(event, data, to=request.sid)
        cid = message.connection_id
        client.sent_up_to[cid] = max(client.sent_up_to.get(cid, 0), message.id)


def _send_backlog(client: Client, user: User, connection_id: int, budget: int, resend: bool) -> tuple[int, bool]:
    """Send one conversation's unacknowledged items (all of them with `resend`, else those
    after what this connection was sent), at most `budget`; once the whole backlog went out,
    join the live room and send what was stored in between. Returns (items sent, more wait)."""
    after = 0 if resend else client.sent_up_to.get(connection_id, 0)
    items = chat.undelivered(user, connection_id, after, budget + 1, client.device)
    _deliver(client, items[:budget])
    if len(items) > budget:
        return budget, True
    if connection_id not in client.joined:
        join_room(conversation_room(connection_id, user.id))
        if client.device:
            join_room(conversation_room(connection_id, user.id, client.device))
        client.joined.add(connection_id)
        # Stored after the query above and relayed before the join: not seen live, so sent now.
        late = chat.undelivered(user, connection_id, client.sent_up_to.get(connection_id, 0), budget, client.device)
        _deliver(client, late)
        return len(items) + len(late), False
    return len(items), False


def _pump(client: Client, user: User, resend: bool) -> tuple[int, bool]:
    """The backlog of every open conversation, one conversation after another in id order,
    within one round's budget. Returns (items sent, more wait for a later "sync")."""
    budget = runtime.chat_limits().backlog_budget
    sent = 0
    for connection in chat.conversations(user):
        left = budget - sent
        if left <= 0:
            return sent, True
        count, more = _send_backlog(client, user, connection.id, left, resend)
        sent += count
        if more:
            return sent, True
    return sent, False


def _unread(user: User, connection_id: int) -> None:
    socketio.emit(
        "unread",
        {"conversation": str(connection_id), "count": chat.unread_count(user, connection_id)},
        to=user_room(user.id),
        namespace=NAMESPACE,
    )


def notify_connection(connection: Connection, user_id: int) -> None:
    """Tell a user's open connections about a request to them or an answer to theirs."""
    user = db.session.get(User, user_id)
    if user is not None:
        socketio.emit(
            "connection", {"connection": connection_json(connection, user)}, to=user_room(user_id), namespace=NAMESPACE
        )


def _authenticate(auth: object) -> accounts.Actor:
    token = auth.get("token") if isinstance(auth, dict) else None
    if token is None:
        token = session.get("_user_id")  # the portal's cookie: Flask-Login keeps the session token here
    actor = accounts.resolve(token, utcnow()) if isinstance(token, str) else None
    if actor is None:
        raise ConnectionRefusedError("Sign in first: connect with a valid token.")
    if actor.user.role != "patient":
        raise ConnectionRefusedError("Only patients use the chat.")
    return actor


def _bind_device(actor: accounts.Actor, auth: object) -> str:
    """The app names its device when it connects: a removed device, or a sign-in of another
    device, is refused. Answers the device id ("" when none was named)."""
    try:
        device = chat.bind_device(actor, auth.get("device") if isinstance(auth, dict) else None)
        db.session.commit()
        return device
    except ServiceError as exc:
        db.session.rollback()
        raise ConnectionRefusedError(exc.message) from None


@socketio.on("connect", namespace=NAMESPACE)
def on_connect(auth: object = None) -> None:
    actor = _authenticate(auth)
    device = _bind_device(actor, auth)
    try:
        _welcome(actor, device)
    except Exception:
        db.session.rollback()
        with _clients_lock:
            _clients.pop(request.sid, None)
        log.exception("chat connect failed")
        chat.socket_closed(request.sid)
        raise ConnectionRefusedError("The chat is unavailable right now; try again.") from None


def _welcome(actor: accounts.Actor, device: str) -> None:
    """Register the connection, send what waits for it (each conversation's backlog before
    its live room is joined), then the unread counts."""
    user = actor.user
    client = Client(token=actor.token, user_id=user.id, device=device)
    with _clients_lock:
        _clients[request.sid] = client
    chat.socket_opened(request.sid, actor, now=utcnow())
    join_room(user_room(user.id))
    _, more = _pump(client, user, resend=False)
    for connection_id, count in chat.unread_counts(user).items():
        if connection_id in client.joined:
            emit("unread", {"conversation": str(connection_id), "count": count}, to=request.sid)
    if more:
        emit("backlog", {"more": True}, to=request.sid)
    db.session.commit()


def end_session(token: str) -> int:
    """Close every /chat connection opened with `token`, in this process or (through the
    message queue) any other; called at sign-out, before the session is deleted. Returns how
    many connections were asked to close."""
    return close_sockets(chat.sockets_of_session(token, now=utcnow()))


def close_sockets(sids: list[str]) -> int:
    """Close these /chat connections, in this process or (through the message queue) any other."""
    for sid in sids:
        socketio.server.disconnect(sid, namespace=NAMESPACE)
    return len(sids)


@socketio.on("disconnect", namespace=NAMESPACE)
def on_disconnect(*_reason: object) -> None:
    with _clients_lock:
        _clients.pop(request.sid, None)
    try:
        chat.socket_closed(request.sid)
    except Exception:
        db.session.rollback()
        log.exception("chat disconnect bookkeeping failed")


EventFn = Callable[[User, Client, dict[str, Any]], dict[str, Any]]


def handler(name: str) -> Callable[[EventFn], EventFn]:
    """Register a client event: check the sender's session again, parse the one JSON object
    argument, and turn every failure into an {"error"} answer (never an exception)."""

    def register(fn: EventFn) -> EventFn:
        def run(*args: Any) -> dict[str, Any]:
            try:
                with _clients_lock:
                    client = _clients.get(request.sid)
                actor = accounts.resolve(client.token, utcnow()) if client else None
                if client is None or actor is None:
                    disconnect()
                    raise Unauthorized("Your session has ended; sign in again.")
                if len(args) > 1 or (args and not isinstance(args[0], dict)):
                    raise ValidationFailed(f"`{name}` takes one JSON object.")
                if args:
                    check_json(args[0])  # lone surrogates, numbers beyond 64 bits: refused here
                return {"ok": True, **fn(actor.user, client, args[0] if args else {})}
            except ServiceError as exc:
                db.session.rollback()
                return _error(exc)
            except DATABASE_BUSY as exc:
                db.session.rollback()
                log_busy(exc, f"chat event {name}")
                return _error(Busy())
            except Exception:
                db.session.rollback()
                log.exception("chat event %s failed", name)
                return {
                    "error": {"code": "internal", "message": "Something went wrong on the server; it has been logged."}
                }

        socketio.on_event(name, run, namespace=NAMESPACE)
        return fn

    return register


@handler("join")
def on_join(user: User, client: Client, data: dict[str, Any]) -> dict[str, Any]:
    connection = chat.conversation(user, data.get("conversation"))
    peer = db.session.get(User, matching.peer_of(connection, user))
    more = False
    if connection.id not in client.joined:
        _, more = _send_backlog(client, user, connection.id, runtime.chat_limits().backlog_budget, resend=False)
    return {
        "conversation": str(connection.id),
        "peer": matching.pseudonym_of(peer, runtime.pseudonym_key()) if peer else None,
        "self": matching.pseudonym_of(user, runtime.pseudonym_key()),
        "role": "initiator" if connection.requester_id == user.id else "responder",
        "more": more,
    }


def _relay(
    user: User, client: Client, data: dict[str, Any], kind: str, field_name: str, cid: object = None
) -> dict[str, Any]:
    stored = chat.store(
        user,
        data.get("conversation"),
        kind,
        data.get(field_name),
        limits=runtime.chat_limits(),
        now=utcnow(),
        cid=cid,
        device=client.device,
        to_device=data.get("to_device"),
        to_own=data.get("to_own", False),
    )
    message, connection = stored.message, stored.connection
    if not stored.duplicate:
        event, payload = _item(message, matching.pseudonym_of(user, runtime.pseudonym_key()))
        room = conversation_room(connection.id, message.recipient_id, message.recipient_device)
        socketio.emit(event, payload, to=room, namespace=NAMESPACE)
        recipient = db.session.get(User, message.recipient_id)
        if recipient is not None and kind == "message":
            _unread(recipient, connection.id)
    return {"id": message.id, "sent_at": iso(message.sent_at), "duplicate": stored.duplicate}


@handler("handshake")
def on_handshake(user: User, client: Client, data: dict[str, Any]) -> dict[str, Any]:
    answer = _relay(user, client, data, "handshake", "message")
    del answer["duplicate"]
    return answer


@handler("send")
def on_send(user: User, client: Client, data: dict[str, Any]) -> dict[str, Any]:
    return _relay(user, client, data, "message", "envelope", data.get("cid"))


@handler("stored")
def on_stored(user: User, client: Client, data: dict[str, Any]) -> dict[str, Any]:
    """Whether the node holds the caller's message with this `cid` (and its id): asked before
    an outbox item is sealed again under a new session."""
    message = chat.stored_by_cid(
        user, data.get("conversation"), data.get("cid"), data.get("to_device"), data.get("to_own", False)
    )
    if message is None:
        return {"stored": False}
    return {"stored": True, "id": message.id, "sent_at": iso(message.sent_at)}


@handler("ack")
def on_ack(user: User, client: Client, data: dict[str, Any]) -> dict[str, Any]:
    chat.acknowledge(
        user,
        data.get("conversation"),
        data.get("up_to"),
        now=utcnow(),
        device=client.device,
        from_device=data.get("from_device"),
        own=data.get("own", False),
    )
    connection = chat.conversation(user, data.get("conversation"))
    _unread(user, connection.id)
    return {}


@handler("history")
def on_history(user: User, client: Client, data: dict[str, Any]) -> dict[str, Any]:
    messages, more = chat.history(
        user,
        data.get("conversation"),
        data.get("before"),
        data.get("limit"),
        data.get("after"),
        device=client.device,
        from_device=data.get("from_device"),
        own=data.get("own", False),
    )
    names = {user.id: matching.pseudonym_of(user, runtime.pseudonym_key())}
    for message in messages:
        if message.sender_id not in names:
            sender = db.session.get(User, message.sender_id)
            names[message.sender_id] = matching.pseudonym_of(sender, runtime.pseudonym_key()) if sender else "?"
    return {
        "messages": [
            {
                "id": m.id,
                "from": names[m.sender_id],
                "from_device": m.sender_device,
                "to_device": m.recipient_device,
                "own": m.sender_id == m.recipient_id,
                "kind": m.kind,
                "body": chat.body_of(m),
                "sent_at": iso(m.sent_at),
                "delivered": m.delivered_at is not None,
            }
            for m in messages
        ],
        "more": more,
    }


@handler("sync")
def on_sync(user: User, client: Client, data: dict[str, Any]) -> dict[str, Any]:
    """Send every unacknowledged item again (a round's budget at most: with "more", ack what
    arrived and call "sync" again), and join the conversations whose backlog is complete."""
    count, more = _pump(client, user, resend=True)
    return {"count": count, "more": more}
