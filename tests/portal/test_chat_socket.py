"""The chat through a real server: gunicorn (gthread workers, as in production) on a loopback
port, python-socketio clients over WebSocket; two servers relaying through real Redis; and two
`core.chat` clients running the whole protocol through the server."""

from __future__ import annotations

import os
import queue
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import socketio

from core.chat import IdentityKey, Initiator, PublicIdentity, Responder
from core.errors import ReplayedMessage

ROOT = Path(__file__).resolve().parent.parent.parent
HEADACHE = "HP:0002315"
REDIS_URL = "redis://127.0.0.1:6379/0"
PASSWORD = "correct-horse-battery"
NS = "/chat"
QUIET = 0.7  # how long "nothing more arrives" is watched for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One gunicorn server of the app (a process this test started)."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOCKETIO_", "DATABASE_URL", "TEST_DATABASE"))}
    env.update(
        MEDLEDGER_CONFIG="development",
        SECRET_KEY="chat-socket-test-secret-" + "x" * 24,
        DATABASE_URL=f"sqlite:///{tmp / 'chat.db'}",
        NODE_KEY_PATH=str(tmp / "node.key"),
        EMERGENCY_KEY_PATH=str(tmp / "emergency.key"),
        ARGON2_TIME_COST="1",
        ARGON2_MEMORY_KIB="1024",
        MEDLEDGER_PRODUCER="0",
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def prepare(tmp: Path) -> None:
    env = base_env(tmp, MEDLEDGER_INSTANCE=str(tmp))
    for args in (["db", "upgrade"], ["medledger", "node", "init"]):
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


def start(tmp: Path, name: str, **extra: str) -> Node:
    port = free_port()
    instance = tmp / name
    instance.mkdir()
    log = instance / "server.log"
    env = base_env(
        tmp,
        MEDLEDGER_INSTANCE=str(instance),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        GUNICORN_THREADS="16",
        **extra,
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    node = Node(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server {name} exited: {log.read_text()[-3000:]}")
        try:
            if requests.get(f"{node.url}/api/v1/chain/blocks?limit=1", timeout=5).status_code == 200:
                return node
        except requests.RequestException:  # not listening yet, or busy loading the vocabularies
            pass
        time.sleep(0.2)
    stop(node)
    raise AssertionError(f"server {name} did not come up: {log.read_text()[-3000:]}")


def stop(node: Node) -> None:
    node.process.terminate()
    try:
        node.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        node.process.kill()
        node.process.wait(timeout=10)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    prepare(tmp_path)
    return tmp_path


@pytest.fixture
def server(tmp: Path) -> Iterator[Node]:
    node = start(tmp, "web")
    yield node
    stop(node)


# -- HTTP helpers ---------------------------------------------------------------------------


@dataclass
class Patient:
    username: str
    token: str
    headers: dict[str, str]


def register(url: str, username: str) -> Patient:
    created = requests.post(
        f"{url}/api/v1/auth/register",
        json={
            "username": username,
            "password": PASSWORD,
            "display_name": username.title(),
            "date_of_birth": "1990-01-01",
        },
        timeout=30,
    )
    assert created.status_code == 201, created.text
    answer = requests.post(f"{url}/api/v1/auth/token", json={"username": username, "password": PASSWORD}, timeout=30)
    token = answer.json()["token"]
    return Patient(username, token, {"Authorization": f"Bearer {token}"})


def api(method: str, url: str, who: Patient, path: str, **kwargs: Any) -> Any:
    answer = requests.request(method, f"{url}/api/v1{path}", headers=who.headers, timeout=30, **kwargs)
    assert answer.status_code < 300, answer.text
    return answer.json() if answer.content else None


def befriend(asker_url: str, asked_url: str, asker: Patient, asked: Patient) -> tuple[str, str, str]:
    """Profiles, a match, a request and its acceptance: (conversation, asker's and asked's pseudonyms)."""
    for url, who in ((asker_url, asker), (asked_url, asked)):
        api("PUT", url, who, "/profile", json={"terms": [HEADACHE], "discoverable": True})
    (match,) = api("GET", asker_url, asker, "/matches?mode=exact")["matches"]
    connection = api("POST", asker_url, asker, f"/matches/{match['pseudonym']}/connect")["connection"]
    accepted = api("POST", asked_url, asked, f"/connections/{connection['id']}/accept")["connection"]
    return connection["id"], accepted["peer"], match["pseudonym"]


# -- a Socket.IO client ---------------------------------------------------------------------


class ChatClient:
    """A python-socketio client on /chat over WebSocket only, recording every server event."""

    def __init__(self, url: str, token: str) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.refusal: Any = None
        for name in ("handshake", "message", "unread", "connection"):
            self.sio.on(name, handler=self._recorder(name), namespace=NS)
        self.sio.on("connect_error", handler=self._refused, namespace=NS)
        self.sio.connect(url, namespaces=[NS], auth={"token": token}, transports=["websocket"], wait_timeout=10)

    def _recorder(self, name: str) -> Any:
        return lambda data: self.events.put((name, data))

    def _refused(self, data: Any) -> None:
        self.refusal = data

    def call(self, event: str, data: dict[str, Any]) -> Any:
        return self.sio.call(event, data, namespace=NS, timeout=10)

    def next(self, *names: str, timeout: float = 10) -> dict[str, Any]:
        """The next event with one of `names` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            name, data = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if name in names:
                return data

    def drain(self, *names: str, quiet: float = QUIET) -> list[dict[str, Any]]:
        """Every event with one of `names` until nothing arrives for `quiet` seconds."""
        found = []
        while True:
            try:
                name, data = self.events.get(timeout=quiet)
            except queue.Empty:
                return found
            if name in names:
                found.append(data)

    def close(self) -> None:
        if self.sio.connected:
            self.sio.disconnect()


def envelope(n: int) -> dict[str, Any]:
    return {"v": 1, "seq": n, "ct": f"opaque-ciphertext-{n}-" + "Q" * 40}


# -- tests ----------------------------------------------------------------------------------


def test_two_clients_over_a_real_server(server: Node, tmp: Path) -> None:
    url = server.url
    alice, bob, carol = register(url, "alice"), register(url, "bob"), register(url, "carol")
    conversation, alice_name, bob_name = befriend(url, url, alice, bob)

    a, b = ChatClient(url, alice.token), ChatClient(url, bob.token)
    try:
        assert a.call("join", {"conversation": conversation}) == {
            "ok": True, "conversation": conversation, "peer": bob_name, "self": alice_name, "role": "initiator",
            "more": False,
        }  # fmt: skip
        assert b.call("join", {"conversation": conversation})["role"] == "responder"

        hello = {"type": "hello", "v": 1, "eph": "E" * 87}
        sent = a.call("handshake", {"conversation": conversation, "message": hello})
        relayed = b.next("handshake")
        assert (relayed["id"], relayed["from"], relayed["message"]) == (sent["id"], alice_name, hello)
        ids = [a.call("send", {"conversation": conversation, "envelope": envelope(n)})["id"] for n in range(3)]
        live = [b.next("message") for _ in ids]
        assert [(m["id"], m["envelope"], m["from"]) for m in live] == [
            (i, envelope(n), alice_name) for n, i in enumerate(ids)
        ]
        assert b.call("ack", {"conversation": conversation, "up_to": ids[-1]}) == {"ok": True}
        b.close()

        # Bob is offline: stored, then delivered on reconnect, in order, exactly once.
        offline = [a.call("send", {"conversation": conversation, "envelope": envelope(n)})["id"] for n in range(3, 6)]
        b = ChatClient(url, bob.token)
        delivered = b.drain("message", "handshake")
        assert [(m["id"], m["envelope"]) for m in delivered] == [(i, envelope(n + 3)) for n, i in enumerate(offline)]
        assert b.call("ack", {"conversation": conversation, "up_to": offline[-1]}) == {"ok": True}
        b.close()
        b = ChatClient(url, bob.token)
        assert b.drain("message", "handshake") == []  # acknowledged items never come again
        assert b.call("sync", {}) == {"ok": True, "count": 0, "more": False}

        page = b.call("history", {"conversation": conversation, "limit": 4})
        assert [m["id"] for m in page["messages"]] == ids[-1:] + offline and page["more"] is True
        older = b.call("history", {"conversation": conversation, "before": page["messages"][0]["id"], "limit": 4})
        assert [m["id"] for m in older["messages"]] == [sent["id"], *ids[:-1]] and older["more"] is False
        assert older["messages"][0]["kind"] == "handshake"

        # A third patient is refused the conversation; a bad token is refused at connect.
        c = ChatClient(url, carol.token)
        refused = {"error": {"code": "forbidden", "message": "You are not a member of this conversation."}}
        assert c.call("join", {"conversation": conversation}) == refused
        assert c.call("send", {"conversation": conversation, "envelope": envelope(9)}) == refused
        assert a.drain("message") == [] and b.drain("message") == []
        c.close()
        with pytest.raises(socketio.exceptions.ConnectionError):
            ChatClient(url, "not-a-token")
    finally:
        a.close()
        b.close()

    with sqlite3.connect(tmp / "chat.db") as db:
        rows = db.execute("SELECT kind, body, delivered_at FROM chat_messages ORDER BY id").fetchall()
    assert len(rows) == 7 and all(delivered is not None for _, _, delivered in rows)
    assert [kind for kind, _, _ in rows] == ["handshake"] + ["message"] * 6


def test_refused_connect_says_why(server: Node) -> None:
    client = socketio.Client(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", handler=refusals.append, namespace=NS)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(server.url, namespaces=[NS], auth={"token": "nope"}, transports=["websocket"], wait_timeout=5)
    assert refusals == [{"message": "Sign in first: connect with a valid token."}]


def test_redis_message_queue_relays_between_server_processes(tmp: Path) -> None:
    redis.Redis.from_url(REDIS_URL).ping()  # fails (never skips) without Redis
    channel = f"medledger-test-{uuid.uuid4().hex[:12]}"
    with ExitStack() as servers:  # every server started is stopped, also when the next fails to start
        first = start(tmp, "web1", SOCKETIO_MESSAGE_QUEUE=REDIS_URL, SOCKETIO_CHANNEL=channel)
        servers.callback(stop, first)
        second = start(tmp, "web2", SOCKETIO_MESSAGE_QUEUE=REDIS_URL, SOCKETIO_CHANNEL=channel)
        servers.callback(stop, second)
        relay_between(first, second)


def relay_between(first: Node, second: Node) -> None:
    a = b = None
    try:
        alice, bob = register(first.url, "alice"), register(second.url, "bob")
        api("PUT", first.url, alice, "/profile", json={"terms": [HEADACHE], "discoverable": True})
        b = ChatClient(second.url, bob.token)  # bob is on the second server only
        conversation, alice_name, _ = befriend(first.url, second.url, alice, bob)
        told = b.next("connection")  # emitted by the first server's REST view
        assert told["connection"]["id"] == conversation and told["connection"]["direction"] == "in"
        a = ChatClient(first.url, alice.token)
        b.call("join", {"conversation": conversation})
        a.call("join", {"conversation": conversation})
        sent = a.call("send", {"conversation": conversation, "envelope": envelope(1)})
        got = b.next("message", timeout=10)
        assert (got["id"], got["from"], got["envelope"]) == (sent["id"], alice_name, envelope(1))
        assert b.next("unread") == {"conversation": conversation, "count": 1}
        reply = b.call("send", {"conversation": conversation, "envelope": envelope(2)})
        assert a.next("message")["id"] == reply["id"]

        # Signing out through the first server closes bob's socket held by the second one.
        assert requests.delete(f"{first.url}/api/v1/auth/token", headers=bob.headers, timeout=30).status_code == 204
        deadline = time.monotonic() + 10
        while b.sio.connected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not b.sio.connected
        assert a.sio.connected
    finally:
        for client in (a, b):
            if client is not None:
                client.close()


def test_core_chat_clients_handshake_and_talk_through_the_server(server: Node, tmp: Path) -> None:
    url = server.url
    alice, bob = register(url, "alice"), register(url, "bob")
    conversation, alice_name, bob_name = befriend(url, url, alice, bob)
    alice_key, bob_key = IdentityKey.generate(), IdentityKey.generate()
    api("PUT", url, alice, "/chat/key", json={"key": alice_key.public.b64})
    api("PUT", url, bob, "/chat/key", json={"key": bob_key.public.b64})
    # Each side takes the other's identity key from the node (registered on the ledger).
    bob_public = PublicIdentity.from_b64(api("GET", url, alice, f"/chat/keys/{bob_name}")["key"]["key"])
    alice_public = PublicIdentity.from_b64(api("GET", url, bob, f"/chat/keys/{alice_name}")["key"]["key"])

    a, b = ChatClient(url, alice.token), ChatClient(url, bob.token)
    try:
        role_a = a.call("join", {"conversation": conversation})["role"]
        role_b = b.call("join", {"conversation": conversation})["role"]
        assert (role_a, role_b) == ("initiator", "responder")
        initiator = Initiator(alice_key, bob_public, conversation)
        responder = Responder(bob_key, alice_public, conversation)

        a.call("handshake", {"conversation": conversation, "message": initiator.hello()})
        reply = responder.on_hello(b.next("handshake")["message"])
        b.call("handshake", {"conversation": conversation, "message": reply})
        confirm, alice_session = initiator.on_reply(a.next("handshake")["message"])
        a.call("handshake", {"conversation": conversation, "message": confirm})
        bob_session = responder.on_confirm(b.next("handshake")["message"])

        secrets = [b"I get migraines on Tuesdays", b"Me too, always after 3pm"]
        a.call("send", {"conversation": conversation, "envelope": alice_session.seal(secrets[0])})
        first = b.next("message")
        assert bob_session.open(first["envelope"]) == secrets[0]
        b.call("send", {"conversation": conversation, "envelope": bob_session.seal(secrets[1])})
        assert alice_session.open(a.next("message")["envelope"]) == secrets[1]
        with pytest.raises(ReplayedMessage):
            bob_session.open(first["envelope"])  # the relay cannot replay a stored envelope

        # Alice sealed two more; the first reached the node but its answer was lost, the
        # second never left. Then Bob resets the session (he starts the new handshake).
        late = [(f"late-{n}", text) for n, text in enumerate([b"Sealed before the reset", b"Also before"])]
        sealed = {cid: alice_session.seal(text) for cid, text in late}
        a.call("send", {"conversation": conversation, "envelope": sealed["late-0"], "cid": "late-0"})
        arrived = [b.next("message")]  # Bob has not read it yet when he resets
        restart = Initiator(bob_key, alice_public, conversation)
        b.call("handshake", {"conversation": conversation, "message": restart.hello()})
        answer = Responder(alice_key, bob_public, conversation)
        a.call("handshake", {"conversation": conversation, "message": answer.on_hello(a.next("handshake")["message"])})
        confirm, new_bob = restart.on_reply(b.next("handshake")["message"])
        b.call("handshake", {"conversation": conversation, "message": confirm})
        new_alice = answer.on_confirm(a.next("handshake")["message"])
        new_alice.replaces(alice_session)
        new_bob.replaces(bob_session)
        # Alice's outbox: each item of the old session is asked for by its cid first.
        for cid, text in late:
            found = a.call("stored", {"conversation": conversation, "cid": cid})
            if not found["stored"]:
                a.call("send", {"conversation": conversation, "envelope": new_alice.seal(text), "cid": cid})
        again = a.call("send", {"conversation": conversation, "envelope": sealed["late-0"], "cid": "late-0"})
        assert again["duplicate"] is True
        arrived.append(b.next("message"))
        assert b.drain("message") == []  # the resent late-0 is not relayed again
        assert [new_bob.open(m["envelope"]) for m in arrived] == [text for _, text in late]
        assert [m["envelope"]["sid"] for m in arrived] == [bob_session.sid, new_bob.sid]
        assert a.call("stored", {"conversation": conversation, "cid": "never"}) == {"ok": True, "stored": False}
        bad = a.call("stored", {"conversation": conversation, "cid": "no spaces"})
        assert bad["error"]["code"] == "validation_failed"
    finally:
        a.close()
        b.close()

    with sqlite3.connect(tmp / "chat.db") as db:
        stored = b"".join(row[0].encode() for row in db.execute("SELECT body FROM chat_messages"))
        late_rows = db.execute("SELECT count(*) FROM chat_messages WHERE cid LIKE 'late-%'").fetchone()[0]
    assert late_rows == 2
    assert stored and not any(s in stored for s in secrets)
    assert b"migraine" not in stored.lower()
