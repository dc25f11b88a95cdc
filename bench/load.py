"""MedLedger load test: Locust users against a real node (gunicorn, 2 workers) over HTTP and Socket.IO.

Three kinds of simulated users share the node for the whole run:
- patients list their records, open one and read their access log;
- doctors write records for their patients and list and open them under the patients' grants;
- patients chat in pairs over /chat: a core.chat handshake, then sealed messages, each sent
  (answered by the node once stored), delivered to the peer, opened there and acknowledged.
The accounts, grants, first records and chat connections are made through the API before the
run (doctors with the CLI, as an administrator would). At the end Locust's statistics are
printed (throughput, percentiles per action, errors) with a summary table, and the exit code is
1 on any error: a failed request or chat event, an exception in a user, a 5xx in the node's log.

    cd /work/main && .venv/bin/python bench/load.py [--users 200] [--duration 300]
        [--spawn-rate 10] [--postgres] [--threads N] [--redis URL] [--keep]

Needs locust (requirements-bench.txt; `make bench-load` installs it) and a Redis server: with
two workers the chat relays through it (SOCKETIO_MESSAGE_QUEUE), as in production.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import queue
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so that `core` and `portal` import

# Importing locust patches the standard library for gevent: it must come before requests and socketio.
import locust  # isort: skip

import gevent
import psycopg
import redis
import requests
import socketio
from geventhttpclient.response import HTTPConnectionClosed
from locust import FastHttpUser, User, between, task
from locust.env import Environment
from locust.stats import print_error_report, print_percentile_stats, print_stats

from bench import harness
from bench.harness import (
    FAILURES,
    BenchError,
    api,
    bearer_session,
    create_doctor,
    free_port,
    gunicorn,
    load_average,
    log,
    machine,
    node_env,
    prepare_node,
    record_json,
    register_patient,
    sign_in,
)
from core.chat import IdentityKey, Initiator, PublicIdentity, Responder, Session
from core.errors import ChatError
from core.matching import HpoGraph

PASSWORD = "load-bench-password-7"
NS = "/chat"
# The share of the users of each kind (chatters rounded down to pairs, doctors at least one).
CHAT_SHARE = 0.25
DOCTOR_SHARE = 0.25
USERS_PER_PATIENT = 3  # reading users per patient account
USERS_PER_DOCTOR = 8  # doctor users per doctor account
RECORDS_EACH = 3  # records written for each reading patient before the run
RETRIED = "RETRIED (connection closed before an answer)"
WAIT = (1.0, 3.0)  # seconds each user thinks between two actions
LIST_LIMIT = 20
SETUP_THREADS = 8
REGISTER_THREADS = 4  # each registration is Argon2 (64 MiB) and an RSA-3072 key: CPU-bound on the node
SETUP_TIMEOUT = 180.0  # per set-up request: a registration takes 10 s and more on a busy machine
CALL_TIMEOUT = 30.0  # a chat event unanswered for this long is an error
HANDSHAKE_WAIT = 120.0  # how long one side of a pair waits for the other's handshake message
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
SERVER_START_TIMEOUT = 240.0  # both workers load the vocabularies before they answer: slow on a busy machine
# What the node's log must not hold: an answer 5xx in gunicorn's access log, a traceback, a lock error.
LOG_PROBLEMS = {
    "answered 5xx": re.compile(r'" 5\d\d \d+ '),
    "tracebacks": re.compile(r"^Traceback", re.M),
    "database locked": re.compile(r"database is locked|deadlock detected|could not obtain lock", re.I),
    "worker timeouts": re.compile(r"WORKER TIMEOUT"),
}


# --- what the users share --------------------------------------------------------------------


@dataclass
class Account:
    id: str
    token: str
    record_ids: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class ChatSlot:
    """One side of a chat pair: its account, the conversation, its identity key and the peer's."""

    account: Account
    conversation: str
    key: IdentityKey
    peer_key: PublicIdentity


@dataclass
class World:
    patients: list[Account] = field(default_factory=list)
    doctors: list[Account] = field(default_factory=list)
    chat_slots: list[ChatSlot] = field(default_factory=list)
    sent: int = 0
    delivered: int = 0
    retried: int = 0
    over: bool = False  # the run has ended: sockets closing now are no failure
    chatters: list[ChatUser] = field(default_factory=list)


WORLD = World()
_patients = itertools.count()
_doctors = itertools.count()
_slots = itertools.count()
_records = itertools.count(10_000)


def fire(user: User, name: str, start: float, exc: BaseException | None = None, length: int = 0) -> None:
    """Report one Socket.IO action to Locust's statistics (type SIO), timed from `start`."""
    user.environment.events.request.fire(
        request_type="SIO",
        name=name,
        response_time=(time.perf_counter() - start) * 1000,
        response_length=length,
        exception=exc,
        context={},
    )


class ChatFailure(Exception):
    """A chat event answered with an error, or not in time."""


# --- the users -------------------------------------------------------------------------------


class NodeUser(FastHttpUser):
    """An HTTP user whose request is sent once more when the connection closed before any answer.

    gunicorn closes a connection after 2 s idle (its `keepalive`), and users think 1-3 s: a request
    sent on a pooled connection the node has just closed gets no answer. The HTTP client sends an
    idempotent GET again by itself; a write is sent again here, with the same Idempotency-Key, as the
    app does (docs/api.md, *Retries*). Such a first attempt shows in the statistics under the
    action's name plus RETRIED, and the run counts them; the second attempt counts as usual."""

    abstract = True
    wait_time = between(*WAIT)
    me: Account

    def call(self, method: str, path: str, name: str, **kwargs: Any) -> Any:
        headers = dict(self.me.headers)
        if method == "POST":
            headers["Idempotency-Key"] = str(uuid.uuid4())
        with self.client.request(method, path, name=name, headers=headers, catch_response=True, **kwargs) as first:
            if first.status_code or not isinstance(first.error, HTTPConnectionClosed):
                return first.json() if 200 <= first.status_code < 300 else None
            first.request_meta["name"] = f"{name} {RETRIED}"
            first.success()
        WORLD.retried += 1
        with self.client.request(method, path, name=name, headers=headers, catch_response=True, **kwargs) as again:
            return again.json() if 200 <= again.status_code < 300 else None


class PatientUser(NodeUser):
    """A patient reading: the records list, one record, the access log."""

    def on_start(self) -> None:
        self.me = WORLD.patients[next(_patients) % len(WORLD.patients)]

    @task(3)
    def list_records(self) -> None:
        listed = self.call("GET", f"/api/v1/records?limit={LIST_LIMIT}", "patient: list records")
        if listed is not None:
            self.me.record_ids = sorted(set(self.me.record_ids) | {r["id"] for r in listed["records"]})

    @task(3)
    def read_record(self) -> None:
        self.call("GET", f"/api/v1/records/{random.choice(self.me.record_ids)}", "patient: read a record")

    @task(2)
    def access_log(self) -> None:
        self.call("GET", "/api/v1/access-log?limit=50", "patient: access log")


class DoctorUser(NodeUser):
    """A doctor: writes records for granted patients, lists and opens what others wrote under the grant."""

    def on_start(self) -> None:
        self.me = WORLD.doctors[next(_doctors) % len(WORLD.doctors)]
        self.granted: dict[str, list[str]] = {}  # patient id -> ids of records by other doctors

    def patient(self) -> Account:
        return random.choice(WORLD.patients)

    @task(1)
    def write_record(self) -> None:
        url = f"/api/v1/patients/{self.patient().id}/records"
        self.call("POST", url, "doctor: write a record", json=record_json(next(_records)))

    @task(2)
    def list_records(self) -> None:
        patient = self.patient()
        url = f"/api/v1/patients/{patient.id}/records?limit={LIST_LIMIT}"
        listed = self.call("GET", url, "doctor: list a patient's records (grant)")
        if listed is not None:
            self.granted[patient.id] = [r["id"] for r in listed["records"] if r["author"]["id"] != self.me.id]

    @task(3)
    def read_record(self) -> None:
        known = [ids for ids in self.granted.values() if ids]
        if not known:
            self.list_records()
            return
        self.call("GET", f"/api/v1/records/{random.choice(random.choice(known))}", "doctor: read a record (grant)")


class ChatUser(User):
    """One patient of a chat pair, on its own Socket.IO connection: handshake, then each round opens
    and acknowledges what arrived and sends one sealed message."""

    wait_time = between(*WAIT)

    def on_start(self) -> None:
        self.slot = WORLD.chat_slots[next(_slots) % len(WORLD.chat_slots)]
        self.inbox: queue.Queue[tuple[str, dict[str, Any], float]] = queue.Queue()
        self.session: Session | None = None
        self.early: list[tuple[str, dict[str, Any], float]] = []  # arrived while a handshake was awaited
        self.processed: set[int] = set()  # an item may arrive twice (docs/api.md): each id is handled once
        self.sio = socketio.Client(reconnection=False)
        for name in ("handshake", "message"):
            self.sio.on(name, handler=self._arrived(name), namespace=NS)
        self.sio.on("disconnect", handler=self._disconnected, namespace=NS)
        self.stopping = False
        WORLD.chatters.append(self)
        role = self.connect("chat: connect")
        start = time.perf_counter()
        try:
            self.session = self.handshake(role)
        except Exception as exc:
            fire(self, f"chat: handshake ({role})", start, exc)
            raise
        fire(self, f"chat: handshake ({role})", start)

    def connect(self, name: str) -> str:
        """Connect and join the pair's conversation; returns this side's role."""
        start = time.perf_counter()
        try:
            self.sio.connect(
                self.host, namespaces=[NS], auth={"token": self.slot.account.token}, transports=["websocket"],
                wait_timeout=CALL_TIMEOUT,
            )  # fmt: skip
        except Exception as exc:
            fire(self, name, start, exc)
            raise
        fire(self, name, start)
        return self.call("chat: join", "join", {"conversation": self.slot.conversation})["role"]

    def _arrived(self, name: str) -> Callable[[dict[str, Any]], None]:
        return lambda data: self.inbox.put((name, data, time.time()))

    def _disconnected(self, *_reason: object) -> None:
        if not self.stopping and not WORLD.over:
            fire(self, "chat: connection lost", time.perf_counter(), ChatFailure("the node closed the socket"))

    def call(self, name: str, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """A timed event with its answer; an error answer or no answer in time is a failure."""
        start = time.perf_counter()
        try:
            answer = self.sio.call(event, data, namespace=NS, timeout=CALL_TIMEOUT)
            if not isinstance(answer, dict) or "error" in answer:
                raise ChatFailure(f"{event} answered {answer!r}"[:300])
        except Exception as exc:
            fire(self, name, start, exc)
            raise
        fire(self, name, start, length=len(json.dumps(data)))
        return answer

    def next_handshake(self) -> dict[str, Any]:
        """The peer's next handshake message; whatever else arrived meanwhile is kept, in order, for receive()."""
        deadline = time.monotonic() + HANDSHAKE_WAIT
        while True:
            try:
                item = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise ChatFailure(f"no handshake message from the peer within {HANDSHAKE_WAIT:.0f} s") from None
            name, data, _ = item
            if data["id"] in self.processed:
                continue
            if name == "handshake" and data["conversation"] == self.slot.conversation:
                self.processed.add(data["id"])
                return data["message"]
            self.early.append(item)

    def handshake(self, role: str) -> Session:
        conversation = self.slot.conversation
        send = {"conversation": conversation}
        if role == "initiator":
            initiator = Initiator(self.slot.key, self.slot.peer_key, conversation)
            self.call("chat: handshake message", "handshake", {**send, "message": initiator.hello()})
            confirm, session = initiator.on_reply(self.next_handshake())
            self.call("chat: handshake message", "handshake", {**send, "message": confirm})
            return session
        responder = Responder(self.slot.key, self.slot.peer_key, conversation)
        reply = responder.on_hello(self.next_handshake())
        self.call("chat: handshake message", "handshake", {**send, "message": reply})
        return responder.on_confirm(self.next_handshake())

    @task
    def chat(self) -> None:
        if not self.sio.connected:  # the loss was counted as an error; the app connects again, so does this
            self.sio = socketio.Client(reconnection=False)
            for name in ("handshake", "message"):
                self.sio.on(name, handler=self._arrived(name), namespace=NS)
            self.sio.on("disconnect", handler=self._disconnected, namespace=NS)
            self.connect("chat: reconnect")
        self.receive()
        plaintext = json.dumps({"t": time.time(), "text": f"How is the new inhaler {uuid.uuid4().hex[:8]}?"})
        envelope = self.session.seal(plaintext.encode())
        self.call("chat: send (stored)", "send", {"conversation": self.slot.conversation, "envelope": envelope})
        WORLD.sent += 1

    def receive(self) -> None:
        """Open what arrived (timing each message from its sealing to its arrival here), then ack it."""
        up_to = 0
        while True:
            try:
                name, data, arrived = self.early.pop(0) if self.early else self.inbox.get_nowait()
            except queue.Empty:
                break
            if name != "message" or data["id"] in self.processed:
                continue
            self.processed.add(data["id"])
            start = time.perf_counter()
            try:
                sent_at = json.loads(self.session.open(data["envelope"]))["t"]
            except (ChatError, ValueError, KeyError) as exc:
                fire(self, "chat: open a message", start, exc)
                continue
            self.environment.events.request.fire(
                request_type="SIO", name="chat: delivered (sealed -> arrived)",
                response_time=(arrived - sent_at) * 1000, response_length=0, exception=None, context={},
            )  # fmt: skip
            WORLD.delivered += 1
            up_to = max(up_to, data["id"])
        if up_to:
            self.call("chat: ack", "ack", {"conversation": self.slot.conversation, "up_to": up_to})

    def on_stop(self) -> None:
        self.stopping = True
        sio = getattr(self, "sio", None)
        if sio is not None and sio.connected:
            sio.disconnect()


# --- setting up the accounts through the API -----------------------------------------------------


@dataclass(frozen=True)
class Mix:
    patients: int
    doctors: int
    chatters: int

    @classmethod
    def of(cls, users: int) -> Mix:
        chatters = 2 * int(users * CHAT_SHARE // 2)
        doctors = max(1, round(users * DOCTOR_SHARE))
        return cls(users - chatters - doctors, doctors, chatters)


def parallel(fn: Callable[[Any], Any], items: Iterable[Any], threads: int = SETUP_THREADS) -> list[Any]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def new_patient(base: str, name: str) -> Account:
    account = {"username": name, "password": PASSWORD, "display_name": name.replace(".", " ").title()}
    return Account(register_patient(base, account), sign_in(base, name, PASSWORD))


def make_doctors(base: str, env: dict[str, str], count: int) -> list[Account]:
    names = [f"load.doctor{n}" for n in range(count)]
    with ThreadPoolExecutor(2) as pool:  # each CLI call loads the app: two at a time on 2 cores
        ids = list(pool.map(lambda name: create_doctor(env, name, PASSWORD), names))
    return [Account(i, sign_in(base, name, PASSWORD)) for i, name in zip(ids, names, strict=True)]


def grant_and_fill(base: str, patient: Account, doctors: list[Account], first: int) -> None:
    """The patient grants every doctor; the doctors write RECORDS_EACH records for the patient."""
    with bearer_session(patient.token) as session:
        for doctor in doctors:
            api(session, "POST", f"{base}/api/v1/grants", 201, json={"doctor_id": doctor.id, "days": 7})
    for n in range(RECORDS_EACH):
        author = doctors[(first + n) % len(doctors)]
        with bearer_session(author.token) as session:
            url = f"{base}/api/v1/patients/{patient.id}/records"
            patient.record_ids.append(api(session, "POST", url, 201, json=record_json(first + n))["id"])


def pair_up(base: str, term: str, pair: tuple[Account, Account]) -> tuple[ChatSlot, ChatSlot]:
    """Both save a profile of the same single symptom (unique to the pair), the first finds the
    second in exact mode and connects, the second accepts; both register a chat key and read the other's."""
    asker, asked = pair
    sessions = []
    for who in pair:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {who.token}"
        sessions.append(session)
    a, b = sessions
    try:
        for session in sessions:
            api(session, "PUT", f"{base}/api/v1/profile", 200, json={"terms": [term], "discoverable": True})
        matches = api(a, "GET", f"{base}/api/v1/matches?mode=exact", 200)["matches"]
        if len(matches) != 1:
            raise BenchError(f"a chat pair expected one exact match, found {len(matches)}")
        connection = api(a, "POST", f"{base}/api/v1/matches/{matches[0]['pseudonym']}/connect", 201)["connection"]
        accepted = api(b, "POST", f"{base}/api/v1/connections/{connection['id']}/accept", 200)["connection"]
        keys = IdentityKey.generate(), IdentityKey.generate()
        for session, key in zip(sessions, keys, strict=True):
            api(session, "PUT", f"{base}/api/v1/chat/key", 200, json={"key": key.public.b64})
        # The match names the asked patient; the accepted connection, seen by the asked one, names the asker.
        a_sees = api(a, "GET", f"{base}/api/v1/chat/keys/{matches[0]['pseudonym']}", 200)["key"]["key"]
        b_sees = api(b, "GET", f"{base}/api/v1/chat/keys/{accepted['peer']}", 200)["key"]["key"]
        conversation = str(connection["id"])
        return (
            ChatSlot(asker, conversation, keys[0], PublicIdentity.from_b64(a_sees)),
            ChatSlot(asked, conversation, keys[1], PublicIdentity.from_b64(b_sees)),
        )
    finally:
        for session in sessions:
            session.close()


def set_up(base: str, env: dict[str, str], mix: Mix) -> None:
    doctor_accounts = max(2, math.ceil(mix.doctors / USERS_PER_DOCTOR))
    patient_accounts = max(1, math.ceil(mix.patients / USERS_PER_PATIENT))
    log(f"set-up: {doctor_accounts} doctors (CLI)")
    WORLD.doctors = make_doctors(base, env, doctor_accounts)
    log(f"set-up: {patient_accounts} reading patients and {mix.chatters} chatting patients (API)")
    names = [f"load.patient{n}" for n in range(patient_accounts)] + [f"load.chat{n}" for n in range(mix.chatters)]
    accounts = parallel(lambda name: new_patient(base, name), names, REGISTER_THREADS)
    WORLD.patients, chatters = accounts[:patient_accounts], accounts[patient_accounts:]
    log(f"set-up: {patient_accounts * doctor_accounts} grants and {patient_accounts * RECORDS_EACH} records")
    parallel(lambda n: grant_and_fill(base, WORLD.patients[n], WORLD.doctors, n), range(patient_accounts))
    if chatters:
        log(f"set-up: {mix.chatters // 2} chat pairs (profile, exact match, connect, accept, chat keys)")
        every = sorted(HpoGraph.load())
        terms = every[:: max(1, len(every) // (mix.chatters + 1))]
        pairs = list(zip(chatters[::2], chatters[1::2], strict=True))
        slots = parallel(lambda n: pair_up(base, terms[n], pairs[n]), range(len(pairs)))
        WORLD.chat_slots = [slot for pair in slots for slot in pair]


# --- the node, the run and the report --------------------------------------------------------------


def create_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_locust(base: str, mix: Mix, args: argparse.Namespace) -> Environment:
    PatientUser.fixed_count, DoctorUser.fixed_count, ChatUser.fixed_count = mix.patients, mix.doctors, mix.chatters
    classes = [cls for cls, count in ((PatientUser, mix.patients), (DoctorUser, mix.doctors), (ChatUser, mix.chatters))
               if count]  # fmt: skip
    environment = Environment(user_classes=classes, host=base)
    runner = environment.create_local_runner()
    log(f"run: {args.users} users ({mix.patients} patients, {mix.doctors} doctors, {mix.chatters} chatting), "
        f"spawn rate {args.spawn_rate}/s, {args.duration:.0f} s; load average {load_average()}")  # fmt: skip
    runner.start(args.users, spawn_rate=args.spawn_rate)
    gevent.spawn_later(args.duration, runner.quit)
    progress = gevent.spawn(report_progress, environment)
    runner.greenlet.join()
    WORLD.over = True
    progress.kill()
    for user in WORLD.chatters:
        user.on_stop()
    return environment


def report_progress(environment: Environment) -> None:
    while True:
        gevent.sleep(30)
        total = environment.stats.total
        log(f"  {total.num_requests} actions, {total.num_failures} failed, {total.current_rps:.1f}/s now, "
            f"users {environment.runner.user_count}; load average {load_average()}")  # fmt: skip


def scan_log(path: Path) -> dict[str, int]:
    text = path.read_text(errors="replace")
    return {what: len(pattern.findall(text)) for what, pattern in LOG_PROBLEMS.items()}


def summary(environment: Environment, elapsed: float) -> None:
    stats = environment.stats
    rows = sorted(stats.entries.values(), key=lambda s: (s.method, s.name))
    width = max(len(f"{s.method} {s.name}") for s in [*rows, stats.total]) + 2
    print(f"\n{'action':<{width}}{'count':>8}{'errors':>8}{'per s':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8} (ms)")
    for s in [*rows, stats.total]:
        label = f"{s.method} {s.name}" if s is not stats.total else "all"
        pct = [s.get_response_time_percentile(p) if s.num_requests else 0 for p in (0.5, 0.95, 0.99)]
        print(f"{label:<{width}}{s.num_requests:>8}{s.num_failures:>8}{s.num_requests / elapsed:>8.1f}"
              f"{pct[0]:>8.0f}{pct[1]:>8.0f}{pct[2]:>8.0f}{s.max_response_time or 0:>8.0f}")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200, help="simulated users (default 200)")
    parser.add_argument("--duration", type=float, default=300, help="seconds of load, ramp-up included (default 300)")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second (default 10)")
    parser.add_argument("--postgres", action="store_true", help=f"a fresh PostgreSQL database at {PG_ADMIN_URL}")
    parser.add_argument("--threads", type=int, help="gunicorn threads per worker (default: chatting users + 8)")
    parser.add_argument("--redis", default=REDIS_URL, help=f"the Socket.IO message queue (default {REDIS_URL})")
    parser.add_argument("--keep", action="store_true", help="keep the node's folder (database, log) and say where")
    args = parser.parse_args()
    if args.users < 4 or args.duration <= 0 or args.spawn_rate <= 0:
        parser.error("need --users >= 4, --duration > 0 and --spawn-rate > 0")
    return args


def main() -> int:
    args = parse_args()
    harness.SERVER_START_TIMEOUT = max(harness.SERVER_START_TIMEOUT, SERVER_START_TIMEOUT)
    harness.REQUEST_TIMEOUT = max(harness.REQUEST_TIMEOUT, SETUP_TIMEOUT)  # the set-up's calls, not the run's
    mix = Mix.of(args.users)
    threads = args.threads or mix.chatters + 8
    redis.Redis.from_url(args.redis).ping()  # fails at once without the message queue
    print(f"machine: {json.dumps(machine())}, locust {locust.__version__}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="medledger-load-"))
    database = f"medledger_load_{os.getpid()}"
    env = node_env(workdir, free_port())
    env.update(
        GUNICORN_THREADS=str(threads),
        SOCKETIO_MESSAGE_QUEUE=args.redis,
        SOCKETIO_CHANNEL=f"medledger-load-{os.getpid()}",
        REGISTER_RATE_LIMIT="10000 per hour",  # the set-up registers every patient from one address
        LOG_LEVEL="WARNING",
    )
    if args.postgres:
        create_database(database)
        env["DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    db_name = "PostgreSQL" if args.postgres else "SQLite"
    log_path = workdir / "gunicorn.log"
    try:
        log(f"node: {db_name}, gunicorn 2 workers x {threads} threads, chat relayed through {args.redis}")
        prepare_node(env)
        with gunicorn(env, log_path) as base:
            set_up(base, env, mix)
            start = time.perf_counter()
            environment = run_locust(base, mix, args)
            elapsed = time.perf_counter() - start
    except FAILURES as exc:
        log(f"load test failed: {exc}")
        return 1
    finally:
        if args.postgres:
            drop_database(database)
    problems = scan_log(log_path)
    table = logging.getLogger("locust.stats_logger")  # where Locust prints its tables
    table.addHandler(logging.StreamHandler(sys.stdout))
    table.setLevel(logging.INFO)
    table.propagate = False
    print(f"\nMedLedger load test: {args.users} users for {args.duration:.0f} s, {db_name}, gunicorn 2 workers x "
          f"{threads} threads; load average at the end {load_average()}")  # fmt: skip
    print_stats(environment.stats, current=False)
    print_percentile_stats(environment.stats)
    print_error_report(environment.stats)
    summary(environment, elapsed)
    exceptions = sum(e["count"] for e in environment.runner.exceptions.values())
    print(f"\nchat messages sent {WORLD.sent}, delivered and opened {WORLD.delivered}")
    print(f"HTTP requests sent again after the node closed the connection before answering: {WORLD.retried}")
    print(f"exceptions in users: {exceptions}; node log: " + ", ".join(f"{k} {v}" for k, v in problems.items()))
    for error in environment.runner.exceptions.values():
        print(f"  {error['count']} x {error['msg']}\n{error['traceback']}")
    if args.keep:
        print(f"node folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    failed = environment.stats.total.num_failures + exceptions + sum(problems.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
