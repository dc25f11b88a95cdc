"""One node, two servers (docs/ledger.md, *One node, several servers*): two gunicorn servers of
ONE node, each with its own instance folder, over one real PostgreSQL database and one real
Redis. Records are written and chats relayed through both; exactly one block producer and one
archiver lead; the leader's producer is killed with SIGKILL and the other server's takes over
within a bound; no record is lost or doubled and the chain verifies. The follower's /healthz shows
what the leader's producer learnt (chain), from the shared database. A leader's producer stopped
with SIGSTOP (it hangs without dying, keeping its connections) is shown `stalled`, then taken over
once its heartbeat is older than LEADER_STALE_SECONDS; continued, it steps down and follows.

Always PostgreSQL and Redis (also on the SQLite run of the suite): without them it fails, never
skips. The database is created for this test and dropped after it; Redis keys are this node's
own (a node id and a Socket.IO channel of their own, in Redis db 13). Every wait is bounded and
polls; every process started is ended."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import requests

from tests.archive.conftest import run_pyftpdlib
from tests.portal.test_chat_socket import ChatClient, befriend, envelope, register
from tests.test_supervision import free_port, gone, producers

ROOT = Path(__file__).resolve().parent.parent.parent
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"
START_TIMEOUT = 90.0
TAKEOVER_SECONDS = 10.0  # leader retry 1 s + the master's restart of nothing: the follower is already running
STALE_SECONDS = 3.0  # LEADER_STALE_SECONDS of the hung-leader test
# A hung leader is taken over after its heartbeat is STALE_SECONDS old, seen so at two tries of the
# follower (LEADER_RETRY_SECONDS, 1 s, apart), the lock taken at the next: plus slack for a busy machine.
HUNG_TAKEOVER_SECONDS = STALE_SECONDS + 3 * 1.0 + 4.0
PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """These servers make their own keys in their own processes."""


def admin_url() -> str:
    """A PostgreSQL server to create this test's database on: TEST_POSTGRES_URL, else the suite's
    TEST_DATABASE_URL when it is PostgreSQL, else the local server."""
    url = os.environ.get("TEST_POSTGRES_URL") or os.environ.get("TEST_DATABASE_URL") or ""
    if not url.startswith("postgresql"):
        url = POSTGRES_URL
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database for this test (SQLAlchemy URL), dropped afterwards."""
    url = admin_url()
    name = f"medledger_one_node_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:  # fails (never skips) without PostgreSQL
        conn.execute(f'CREATE DATABASE "{name}"')
    base = url.rsplit("/", 1)[0]
    try:
        yield f"postgresql+psycopg://{base.removeprefix('postgresql://')}/{name}"
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_node() -> Iterator[str]:
    """This test's node id: its rate-limit keys in Redis are its own, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # fails (never skips) without Redis
    node_id = f"node-{uuid.uuid4().hex[:8]}"
    yield node_id
    for key in client.scan_iter(match=f"*{node_id}*"):
        client.delete(key)


@dataclass
class Server:
    name: str
    port: int
    folder: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"


def server_env(folder: Path, port: int, name: str, database: str, node_id: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GUNICORN_", "ARCHIVE_", "NODE_", "GENESIS", "SOCKETIO_", "DATABASE_URL", "TEST_DATABASE"))
    }
    env.pop("EMBEDDED_FTP", None)
    env.update(
        MEDLEDGER_CONFIG="development",
        SECRET_KEY="one-node-two-servers-secret-" + "x" * 20,  # the same on every server of the node
        MEDLEDGER_INSTANCE=str(folder),
        MEDLEDGER_SERVER=name,
        DATABASE_URL=database,
        NODE_ID=node_id,
        NODE_KEY_PATH=str(folder / "node.key"),
        EMERGENCY_KEY_PATH=str(folder / "emergency.key"),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        GUNICORN_THREADS="16",
        BLOCK_INTERVAL_SECONDS="0.3",
        ARCHIVE_INTERVAL_SECONDS="0.5",
        MEDLEDGER_PRODUCER="1",
        REDIS_URL=REDIS_URL,
        SOCKETIO_MESSAGE_QUEUE=REDIS_URL,
        SOCKETIO_CHANNEL=f"medledger-{node_id}",
        REGISTER_RATE_LIMIT="4 per hour",
        ARGON2_TIME_COST="1",
        ARGON2_MEMORY_KIB="1024",
        TWO_FACTOR_REQUIRED_ROLES="",
        LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


def flask(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def start(server: Server) -> None:
    with server.log.open("ab") as out:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=server.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stop(server: Server) -> None:
    """End the server's whole process group (master, worker, producer), bounded in time."""
    process = server.process
    if process is None:
        return
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for(check: Callable[[], Any], timeout: float, what: str, *logs: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


def healthz(server: Server) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())
    except OSError:
        return None


def leader(server: Server, part: str = "producer") -> str | None:
    """The server that leads `part`, as `server`'s /healthz says (None: nobody, or no answer)."""
    found = healthz(server)
    state = found["parts"][part] if found else {}
    return state.get("leader") if state.get("state") == "ok" else None


def tip(server: Server) -> int:
    answer = requests.get(server.url + "/api/v1/chain/blocks?limit=1", timeout=10)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["height"])


def sign_in(server: Server, username: str) -> dict[str, str]:
    answer = requests.post(
        server.url + "/api/v1/auth/token", json={"username": username, "password": PASSWORD}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def write_record(server: Server, doctor: dict[str, str], patient_id: str, n: int) -> str:
    """One record through `server`, retried with one Idempotency-Key until stored (a doctor's key
    is usable once its endorsement is sealed); its id."""
    body = {"title": f"Review {n}", "category": "respiratory", "notes": f"Follow-up number {n}: stable."}
    headers = {**doctor, "Idempotency-Key": f"record-{n}-{uuid.uuid4().hex}"}
    last = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = requests.post(
            f"{server.url}/api/v1/patients/{patient_id}/records", json=body, headers=headers, timeout=30
        )
        if answer.status_code == 201:
            return str(answer.json()["id"])
        last = (answer.status_code, answer.text[:300])
        time.sleep(0.25)
    raise AssertionError(f"record {n} through {server.name} not stored within 30 s: {last}")


def query(database: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://", 1), connect_timeout=5) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def one_node(tmp_path: Path, database: str, node_id: str, running: contextlib.ExitStack, **extra: str) -> list[Server]:
    """Two servers of one node, answering: one database, one node key (copied to each server's
    folder, as a deployment would), a doctor `dr.one`. Each is stopped when `running` closes."""
    servers = []
    for name in ("server-1", "server-2"):
        folder, port = tmp_path / name, free_port()
        folder.mkdir()
        servers.append(Server(name, port, folder, server_env(folder, port, name, database, node_id, **extra)))
    first, second = servers
    flask(first.env, "db", "upgrade")
    flask(first.env, "medledger", "node", "init")
    for key in ("node.key", "emergency.key"):
        shutil.copy2(first.folder / key, second.folder / key)
    flask(
        first.env, "medledger", "create-user", "--role", "doctor", "--username", "dr.one",
        "--password", PASSWORD, "--display-name", "Dr. One", "--hospital", "Hospital One",
        "--licence-number", "L-one",
    )  # fmt: skip
    for server in servers:
        start(server)
        running.callback(stop, server)
    logs = [s.log for s in servers]
    for server in servers:
        wait_for(lambda s=server: healthz(s) is not None, START_TIMEOUT, f"{server.name} answering", *logs)
    return servers


def assert_every_record_once(database: str, written: list[str]) -> int:
    """Every record written is stored once and sealed in exactly one block; the heights run
    without a gap. The tip height."""

    def all_sealed() -> bool:
        rows = query(database, "SELECT count(*) FROM ledger_transactions WHERE status <> 'committed'")
        return rows[0][0] == 0

    wait_for(all_sealed, 20, "every transaction sealed")
    stored = query(database, "SELECT id, tx_hash FROM records ORDER BY id")
    assert sorted(str(r[0]) for r in stored) == sorted(written)
    kinds = query(
        database,
        "SELECT count(*), count(DISTINCT hash) FROM ledger_transactions WHERE kind = 'record' "
        "AND status = 'committed' AND block_height IS NOT NULL",
    )
    assert kinds[0] == (len(written), len(written))
    sealed = {row[0] for row in query(database, "SELECT hash FROM ledger_transactions WHERE kind = 'record'")}
    assert {str(r[1]) for r in stored} == sealed
    heights = [row[0] for row in query(database, "SELECT height FROM ledger_blocks ORDER BY height")]
    assert heights == list(range(len(heights)))
    return heights[-1]


def test_one_node_two_servers(tmp_path: Path, database: str, redis_node: str) -> None:
    node_id = redis_node
    (tmp_path / "ftp").mkdir()
    with run_pyftpdlib(tmp_path / "ftp") as ftp, contextlib.ExitStack() as running:
        servers = one_node(tmp_path, database, node_id, running, ARCHIVE_FTP_URL=ftp.url())
        first, second = servers
        logs = [s.log for s in servers]

        # Exactly one leads, and both servers' reports name the same one.
        names = {s.name: s for s in servers}
        leading = wait_for(lambda: leader(first), 30, "a leader of the producer", *logs)
        assert leading in names
        assert wait_for(lambda: leader(second) == leading, 10, "server-2 naming the same leader", *logs)
        assert healthz(names[leading])["parts"]["producer"]["here"] is True  # type: ignore[index]
        follower = next(s for s in servers if s.name != leading)
        assert healthz(follower)["parts"]["producer"]["here"] is False  # type: ignore[index]
        archiving = wait_for(lambda: leader(first, "archiver"), 30, "a leader of the archiver", *logs)
        assert archiving == leading  # the archiver runs beside the leading producer only
        said = [s.log.read_text() for s in servers]
        assert sum("block producer for node" in text for text in said) == 1
        assert sum("archiver started" in text for text in said) == 1
        assert "following" in follower.log.read_text()

        # Sessions and limits are the node's, whatever the server: a token from one works on the
        # other, and registrations through both count against one limit (REGISTER_RATE_LIMIT, 4).
        alice, bob = register(first.url, "alice"), register(second.url, "bob")
        me = requests.get(second.url + "/api/v1/me", headers=alice.headers, timeout=10)
        assert me.status_code == 200, me.text
        patient_id = me.json()["user"]["id"]
        register(first.url, "carol")
        register(second.url, "dave")
        refused = requests.post(
            second.url + "/api/v1/auth/register",
            json={"username": "erin", "password": PASSWORD, "display_name": "Erin", "date_of_birth": "1990-01-01"},
            timeout=30,
        )
        assert refused.status_code == 429, refused.text

        # Records through both servers, half before and half after the leader dies.
        doctor = sign_in(first, "dr.one")
        written = [write_record(servers[n % 2], doctor, patient_id, n) for n in range(6)]

        # A chat across servers: alice on server 1, bob on server 2, relayed through Redis.
        a = b = None
        try:
            conversation, alice_name, _ = befriend(first.url, second.url, alice, bob)
            a, b = ChatClient(first.url, alice.token), ChatClient(second.url, bob.token)
            a.call("join", {"conversation": conversation})
            b.call("join", {"conversation": conversation})
            sent = a.call("send", {"conversation": conversation, "envelope": envelope(1)})
            got = b.next("message", timeout=10)
            assert (got["id"], got["from"], got["envelope"]) == (sent["id"], alice_name, envelope(1))
            reply = b.call("send", {"conversation": conversation, "envelope": envelope(2)})
            assert a.next("message", timeout=10)["id"] == reply["id"]
        finally:
            for client in (a, b):
                if client is not None:
                    client.close()

        # Kill the leader's producer with SIGKILL: the follower's producer takes over.
        leader_server = names[leading]
        [victim] = wait_for(lambda: producers(leader_server.process.pid), 10, "the leader's producer", *logs)  # type: ignore[union-attr]
        before = tip(first)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: gone(victim), 5, "the killed producer gone", *logs)
        wait_for(lambda: leader(first) == follower.name, TAKEOVER_SECONDS, "the follower leading", *logs)
        took = time.monotonic() - killed_at
        assert took <= TAKEOVER_SECONDS
        assert "this server now leads the producer" in follower.log.read_text()
        written += [write_record(servers[n % 2], doctor, patient_id, n) for n in range(6, 12)]
        wait_for(lambda: tip(second) > before, 15, "blocks after the takeover", *logs)
        # The killed leader's server restarts its producer, which now follows.
        wait_for(
            lambda: "another server or process of this node leads the producer" in leader_server.log.read_text(),
            15, "the restarted producer following", *logs,
        )  # fmt: skip
        assert leader(second) == follower.name

        # Nothing lost, nothing doubled: every record once, each in exactly one block.
        assert len(set(written)) == 12
        top = assert_every_record_once(database, written)

        # The new leader archives too, and the whole chain verifies.
        wait_for(lambda: leader(first, "archiver") == follower.name, 15, "the archiver on the new leader", *logs)
        verified = flask(first.env, "medledger", "verify")
        assert f"chain valid: {top + 1} blocks" in verified and "INVALID" not in verified, verified
        print(f"takeover in {took:.1f} s; blocks {before} -> {top}; load {os.getloadavg()}")


def health_code(server: Server) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return None


def test_a_leader_that_hangs_is_taken_over(tmp_path: Path, database: str, redis_node: str) -> None:
    """The leading producer is stopped with SIGSTOP: it keeps its connections, so PostgreSQL keeps
    its locks. Its heartbeat ages; /healthz says `stalled` (503); the follower ends the hung
    process's connections and leads within HUNG_TAKEOVER_SECONDS; blocks keep coming, nothing is
    lost or doubled. Continued with SIGCONT, the old leader finds its lock gone, steps down and
    follows."""
    (tmp_path / "ftp").mkdir()
    with run_pyftpdlib(tmp_path / "ftp") as ftp, contextlib.ExitStack() as running:
        servers = one_node(
            tmp_path, database, redis_node, running,
            ARCHIVE_FTP_URL=ftp.url(), LEADER_STALE_SECONDS=str(STALE_SECONDS), CHAIN_CHECK_SECONDS="1",
        )  # fmt: skip
        first, _ = servers
        logs = [s.log for s in servers]
        names = {s.name: s for s in servers}
        leading = wait_for(lambda: leader(first), 30, "a leader of the producer", *logs)
        hung_server = names[leading]
        follower = next(s for s in servers if s.name != leading)
        wait_for(lambda: leader(first, "archiver") == leading, 30, "the archiver beside the producer", *logs)

        # The follower's /healthz shows what the leader's producer checked, from the database.
        found = wait_for(
            lambda: (f := healthz(follower)) and f["parts"]["chain"]["state"] == "ok" and f, 15,
            "the follower showing the leader's chain check", *logs,
        )  # fmt: skip
        assert found["status"] == "ok" and found["failing"] == []
        assert found["parts"]["chain"]["height"] >= 0 and found["parts"]["chain"]["checked_seconds_ago"] < 5
        assert found["parts"]["peers"] == {"state": "none"}  # a node alone (a consortium's peers: the same row)
        assert found["parts"]["producer"]["here"] is False and found["parts"]["producer"]["leader"] == leading
        assert found["parts"]["producer"]["beat_seconds_ago"] < STALE_SECONDS

        alice = register(first.url, "alice")
        patient_id = requests.get(first.url + "/api/v1/me", headers=alice.headers, timeout=10).json()["user"]["id"]
        doctor = sign_in(first, "dr.one")
        written = [write_record(servers[n % 2], doctor, patient_id, n) for n in range(4)]

        # Hang the leader's producer: SIGSTOP (continued at the end whatever happens).
        [victim] = wait_for(lambda: producers(hung_server.process.pid), 10, "the leader's producer", *logs)  # type: ignore[union-attr]

        def resume() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)

        running.callback(resume)  # before the servers are stopped: a stopped process ignores SIGTERM
        seen: list[tuple[int, str, str | None]] = []
        before = tip(first)
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        # Records are still taken through both servers while the producer hangs (sealed later).
        written += [write_record(servers[n % 2], doctor, patient_id, n) for n in range(4, 6)]

        def taken_over() -> bool:
            found = health_code(follower)
            if found is None:
                return False
            part = found[1]["parts"]["producer"]
            seen.append((found[0], part["state"], part.get("leader")))
            return part["state"] == "ok" and part.get("leader") == follower.name

        wait_for(taken_over, HUNG_TAKEOVER_SECONDS + 5, "the follower leading", *logs)
        took = time.monotonic() - stopped_at
        assert took <= HUNG_TAKEOVER_SECONDS, f"took {took:.1f} s"
        assert took >= STALE_SECONDS  # not before the heartbeat was stale
        assert (503, "stalled", leading) in seen, seen
        assert all(state in ("ok", "stalled", "down") for _, state, _ in seen), seen
        said = follower.log.read_text()
        assert f"the producer's leader (server {leading}, pid {victim}) hangs" in said
        assert "this server now leads the producer" in said

        # Blocks keep coming from the new leader, which archives too.
        written += [write_record(servers[n % 2], doctor, patient_id, n) for n in range(6, 8)]
        wait_for(lambda: tip(follower) > before, 15, "blocks after the takeover", *logs)
        wait_for(lambda: leader(follower, "archiver") == follower.name, 15, "the archiver on the new leader", *logs)

        # Continued, the hung producer finds its lock connection gone and steps down; its master
        # starts it again, and it follows.
        following = hung_server.log.read_text().count("another server or process of this node leads the producer")
        os.kill(victim, signal.SIGCONT)
        wait_for(lambda: gone(victim), 30, "the continued producer stepping down", *logs)
        assert "this server no longer leads the block producer" in hung_server.log.read_text()
        wait_for(
            lambda: hung_server.log.read_text().count("another server or process of this node leads the producer")
            > following,
            30, "the restarted producer following", *logs,
        )  # fmt: skip
        assert leader(hung_server) == follower.name and leader(follower) == follower.name
        written += [write_record(servers[n % 2], doctor, patient_id, n) for n in range(8, 10)]
        top = assert_every_record_once(database, written)
        verified = flask(first.env, "medledger", "verify")
        assert f"chain valid: {top + 1} blocks" in verified and "INVALID" not in verified, verified
        print(f"hung leader taken over in {took:.1f} s; blocks {before} -> {top}; load {os.getloadavg()}")


def test_a_leader_whose_connection_drops_gives_way(tmp_path: Path, database: str) -> None:
    """Two processes' leaderships, in one test process: one leads, the other follows; when the
    leader's connection is cut by the server (as when its host vanishes), it sees that it no
    longer leads and the other takes over at its next try. /healthz names the leader."""
    from sqlalchemy import text

    from portal import create_app
    from portal.config import TestConfig
    from portal.extensions import db
    from portal.services import locks

    class Config(TestConfig):
        SQLALCHEMY_DATABASE_URI = database
        NODE_ID = "node-lead"
        NODE_KEY_PATH = str(tmp_path / "node.key")
        EMERGENCY_KEY_PATH = str(tmp_path / "emergency.key")

    app = create_app(Config)
    with app.app_context():
        db.create_all()
        first, second = locks.Lead(tmp_path / "one", "producer"), locks.Lead(tmp_path / "two", "producer")
        try:
            assert first.take() and first.held()
            assert not second.take() and not second.held()
            me = locks.Process(locks.server_name(), os.getpid())
            assert locks.holder(tmp_path, "producer") == {"server": me.server, "here": True, "process": me}
            pid = first._conn.execute(text("SELECT pg_backend_pid()")).scalar()  # type: ignore[union-attr]
            db.session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            db.session.commit()
            wait_for(lambda: not first.held(), 5, "the cut leader seeing it")
            assert wait_for(second.take, 5, "the follower taking over") and second.held()
        finally:
            first.release()
            second.release()
        assert locks.holder(tmp_path, "producer") is None
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


def test_rate_limits_count_where_every_server_sees_them() -> None:
    from portal.limits import shared_storage

    assert shared_storage({"REDIS_URL": "redis://r:6379/1", "SOCKETIO_MESSAGE_QUEUE": "redis://q:6379/2"}) == (
        "redis://r:6379/1"
    )
    assert shared_storage({"REDIS_URL": "", "SOCKETIO_MESSAGE_QUEUE": "redis://q:6379/2"}) == "redis://q:6379/2"
    assert shared_storage({"REDIS_URL": "", "SOCKETIO_MESSAGE_QUEUE": ""}) is None
