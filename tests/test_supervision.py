"""A real node (gunicorn.conf.py, its master, worker and block producer) in a subprocess: it refuses
to start without what the producer needs, `/healthz` names a producer that is dead until it is
restarted, and the producer dies with a master killed by SIGKILL.

Every node runs on SQLite in its own folder (also on the PostgreSQL run of the suite, whose
tables other tests drop and recreate); every wait is bounded and every process is ended."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.archive.conftest import FtpServer, run_pyftpdlib

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0
SECRET = "supervision-test-secret-key-" + "x" * 20


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """These nodes make their own keys in their own processes."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_env(folder: Path, port: int, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "ARCHIVE_", "NODE_", "GENESIS"))}
    env.pop("EMBEDDED_FTP", None)
    env.update(
        MEDLEDGER_CONFIG="development",
        SECRET_KEY=SECRET,
        MEDLEDGER_INSTANCE=str(folder),
        DATABASE_URL=f"sqlite:///{folder / 'node.db'}",
        NODE_KEY_PATH=str(folder / "node.key"),
        EMERGENCY_KEY_PATH=str(folder / "emergency.key"),
        PORT=str(port),
        WEB_CONCURRENCY="1",
        BLOCK_INTERVAL_SECONDS="0.5",
        ARCHIVE_INTERVAL_SECONDS="0.5",
        MEDLEDGER_PRODUCER="1",
    )
    env.update(settings)
    return env


def flask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def prepared(folder: Path, port: int, **settings: str) -> dict[str, str]:
    """A node's folder with a migrated database, its key and its genesis block."""
    env = node_env(folder, port, **settings)
    for args in (("db", "upgrade"), ("medledger", "node", "init")):
        done = flask(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    return env


@contextlib.contextmanager
def gunicorn(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """gunicorn in its own process group, ended with all it started (bounded in time)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue


def healthz(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return None


def wait_for(check: Callable[[], Any], timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-4000:] if log else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


def health_is(port: int, code: int, state: Callable[[dict[str, Any]], bool] = lambda _: True) -> Callable[[], Any]:
    def check() -> Any:
        found = healthz(port)
        return found[1] if found and found[0] == code and state(found[1]) else None

    return check


def producers(master: int) -> list[int]:
    """The pids of `master`'s children that run the block producer."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == master and b"medledger" in command and b"producer" in command:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """The process has ended (a zombie nobody has reaped yet counts as ended)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_node_without_its_node_key_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    env = node_env(tmp_path, port, MEDLEDGER_CONFIG="production")
    assert flask(env, "db", "upgrade").returncode == 0
    log = tmp_path / "node.log"
    with gunicorn(env, log) as process:
        code = process.wait(timeout=START_TIMEOUT)
    output = log.read_text()
    assert code != 0
    assert f"refusing to start: the block producer cannot start: no node key at {tmp_path / 'node.key'}" in output
    assert "run `flask --app wsgi medledger node init`" in output
    assert "Booting worker" not in output, "no worker may serve a node that cannot seal blocks"
    assert "Traceback" not in output
    assert healthz(port) is None


def test_healthz_names_a_killed_producer_until_it_is_restarted(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "ftp").mkdir()
    with run_pyftpdlib(tmp_path / "ftp") as server:
        env = prepared(tmp_path / "node", port, ARCHIVE_FTP_URL=server.url())
        log = tmp_path / "node.log"
        with gunicorn(env, log) as process:
            healthy = wait_for(health_is(port, 200), START_TIMEOUT, "a healthy node", log)
            assert healthy["failing"] == [] and healthy["status"] == "ok"
            parts = healthy["parts"]
            assert {name: part["state"] for name, part in parts.items()} == {
                "database": "ok", "producer": "ok", "archiver": "ok", "peers": "none", "chain": "ok",
            }  # fmt: skip
            assert parts["database"]["height"] >= 0
            assert_no_secrets(healthz(port), server, env)

            [first] = wait_for(lambda: producers(process.pid), 10, "the producer process", log)
            os.kill(first, signal.SIGKILL)
            failing = wait_for(health_is(port, 503), 10, "503 for the killed producer", log)
            assert failing["failing"] == ["producer", "archiver"]
            assert failing["parts"]["producer"]["state"] == "down"
            assert failing["parts"]["archiver"]["state"] == "down"
            assert failing["parts"]["database"]["state"] == "ok"

            wait_for(health_is(port, 200), 30, "200 once the producer is restarted", log)
            [second] = producers(process.pid)
            assert second != first and gone(first)
            assert "restarted the block producer" in log.read_text()
            assert_archiving(server, port, log)


def assert_no_secrets(found: tuple[int, dict[str, Any]] | None, server: FtpServer, env: dict[str, str]) -> None:
    text = json.dumps(found)
    for secret in (server.password, env["SECRET_KEY"], env["DATABASE_URL"], env["MEDLEDGER_INSTANCE"], "ftp://"):
        assert secret not in text


def assert_archiving(server: FtpServer, port: int, log: Path) -> None:
    """The restarted producer's archiver works: the chain's blocks reach the FTP server."""
    found = healthz(port)
    assert found is not None
    height = found[1]["parts"]["database"]["height"]
    archived = lambda: len(list((server.root / "archive").glob("*.zip"))) >= height + 1  # noqa: E731
    wait_for(lambda: (server.root / "archive").exists() and archived(), 20, "the chain in the archive", log)


def test_the_producer_exits_with_a_master_killed_by_sigkill(tmp_path: Path) -> None:
    port = free_port()
    env = prepared(tmp_path / "node", port)
    log = tmp_path / "node.log"
    with gunicorn(env, log) as process:
        wait_for(health_is(port, 200), START_TIMEOUT, "a healthy node", log)
        [producer] = producers(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        wait_for(lambda: gone(producer), 5, f"the producer (pid {producer}) to exit with its master", log)
    assert "is gone: stopping" in log.read_text()
