"""What the benchmarks share: a real MedLedger node under gunicorn on 127.0.0.1, its accounts,
timed HTTP calls from client threads, and the results table.

The node keeps everything in the instance folder it is given (database, node key, emergency
key, dev secret), so a temporary folder leaves nothing behind.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent

CLIENTS = 4
WARMUP = 4
NOTES = (
    "Patient reports wheeze and shortness of breath on exertion for three weeks, worse at night and "
    "after climbing stairs. No fever, no chest pain. Uses salbutamol about four times a week. On "
    "examination: scattered expiratory wheeze bilaterally, no crackles, saturation 97% on room air, "
    "peak flow 78% of predicted. Inhaler technique reviewed and corrected. Plan: continue reliever, "
    "start low-dose inhaled corticosteroid, written asthma action plan given, review in six weeks or "
    "sooner if symptoms worsen. Smoking cessation advice given to the household."
)
SERVER_START_TIMEOUT = 60.0
CLI_TIMEOUT = 120.0
REQUEST_TIMEOUT = 30.0
RUN_DEADLINE = 180.0
STOP_TIMEOUT = 20.0
LOG_TAIL = 4000
CREATED_RE = re.compile(r"created \w+ \S+ \(([0-9a-f-]{36})\)")
STARTED = time.perf_counter()


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


FAILURES = (BenchError, requests.RequestException, subprocess.TimeoutExpired)  # what ends a run with exit code 1


def log(message: str) -> None:
    """Progress on stderr, with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - STARTED:5.1f} s] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def machine() -> dict[str, Any]:
    """What a run's figures depend on besides its options; other sessions may share the machine."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "load_average": load_average(),
    }


# --- the results table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    value: float
    unit: str = ""


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    metrics: list[Metric]


def fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def print_table(header: str, sections: Sequence[Section]) -> None:
    width = max(len(m.label) for s in sections for m in s.metrics) + 2
    print(header)
    for section in sections:
        print(f"\n{section.title}")
        for m in section.metrics:
            print(f"  {m.label:<{width}}{fmt(m.value):>12} {m.unit}".rstrip())


# --- the node under test --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_env(instance: Path, port: int) -> dict[str, str]:
    """The environment of the node under test: everything it stores lives in `instance`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NODE_KEY_PATH", "GUNICORN_BIND")}
    env.update(
        MEDLEDGER_CONFIG="development",
        MEDLEDGER_INSTANCE=str(instance),
        MEDLEDGER_PRODUCER="1",
        BLOCK_INTERVAL_SECONDS="1",
        PORT=str(port),
        WEB_CONCURRENCY="2",
    )
    return env


def flask_cli(env: dict[str, str], *args: str) -> str:
    """Run `flask --app wsgi ARGS` for the node; returns its standard output."""
    cmd = [sys.executable, "-m", "flask", "--app", "wsgi", *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
    if done.returncode != 0:
        raise BenchError(f"`flask {' '.join(args[:3])}` failed:\n{done.stderr[-2000:]}")
    return done.stdout


def prepare_node(env: dict[str, str]) -> None:
    """Create the database and the node's identity (key and genesis block)."""
    flask_cli(env, "db", "upgrade")
    flask_cli(env, "medledger", "node", "init")


def create_doctor(env: dict[str, str], username: str, password: str) -> str:
    """A doctor account made with the CLI, as an administrator would; returns its public id."""
    out = flask_cli(
        env,
        "medledger", "create-user", "--role", "doctor", "--username", username, "--password", password,
        "--display-name", username, "--hospital", "H", "--licence-number", "L",
    )  # fmt: skip
    found = CREATED_RE.search(out)
    if found is None:
        raise BenchError(f"`flask medledger create-user` said: {out.strip()!r}")
    return found.group(1)


def wait_until_up(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"gunicorn exited with {server.returncode}")
        try:
            if requests.get(f"{base}/api/v1/chain/blocks", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet, or the workers are still starting
        time.sleep(0.2)
    raise BenchError(f"gunicorn did not answer within {SERVER_START_TIMEOUT:.0f} s")


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM gunicorn's process group (master, workers, block producer); SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            log(f"gunicorn still running after {STOP_TIMEOUT:.0f} s; sending SIGKILL")


@contextmanager
def gunicorn(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """Run `gunicorn -c gunicorn.conf.py wsgi:app` in its own process group; yields its base URL."""
    base = f"http://127.0.0.1:{env['PORT']}"
    with log_path.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_up(base, server)
            yield base
        except BaseException:
            log(f"--- end of the gunicorn log ---\n{log_path.read_text(errors='replace')[-LOG_TAIL:]}")
            raise
        finally:
            stop(server)


# --- HTTP calls -----------------------------------------------------------------------------


def api(session: requests.Session, method: str, url: str, expect: int, **kwargs: Any) -> dict[str, Any]:
    response = session.request(method, url, timeout=REQUEST_TIMEOUT, **kwargs)
    if response.status_code != expect:
        raise BenchError(f"{method} {url} answered {response.status_code}: {response.text[:300]}")
    return response.json()


def register_patient(base: str, account: dict[str, str]) -> str:
    """A patient account made through the API; returns its public id."""
    with requests.Session() as session:
        return api(
            session, "POST", f"{base}/api/v1/auth/register", 201, json={"date_of_birth": "1980-01-01", **account}
        )["user"]["id"]


def sign_in(base: str, username: str, password: str) -> str:
    """An API token for the account."""
    with requests.Session() as session:
        body = api(session, "POST", f"{base}/api/v1/auth/token", 200, json={"username": username, "password": password})
    return body["token"]


@contextmanager
def bearer_session(token: str) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        yield session


@dataclass(frozen=True)
class Call:
    """One timed HTTP request: its latency in seconds, status, and JSON answer when it was expected."""

    latency: float
    status: int
    body: Any = None
    error: str = ""


Job = Callable[[requests.Session], Call]


def timed(session: requests.Session, method: str, url: str, expect: int, **kwargs: Any) -> Call:
    start = time.perf_counter()
    try:
        response = session.request(method, url, timeout=REQUEST_TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        return Call(time.perf_counter() - start, 0, error=str(exc))
    latency = time.perf_counter() - start
    if response.status_code != expect:
        return Call(latency, response.status_code, error=response.text[:300])
    return Call(latency, response.status_code, response.json())


def warm_up(token: str, jobs: Sequence[Job]) -> list[Call]:
    """Untimed calls, one at a time and each on a new connection, so that they reach every worker.

    A worker's first record loads the HPO ontology, which takes a second or more and holds up the
    worker's other first requests; without a warm-up that one-off cost shows as a latency outlier of
    several seconds and skews a short timed run."""
    calls = []
    for job in jobs:
        with bearer_session(token) as session:
            calls.append(job(session))
        if calls[-1].error:
            raise BenchError(f"a warm-up call answered {calls[-1].status}: {calls[-1].error}")
    return calls


def run_clients(token: str, jobs: Sequence[Job], clients: int = CLIENTS) -> tuple[list[Call], float]:
    """`clients` threads, each on its own connection, share out `jobs` (round robin) and run them
    until done or RUN_DEADLINE; returns the calls made and the wall time in seconds."""
    deadline = time.monotonic() + RUN_DEADLINE

    def client(mine: Sequence[Job]) -> list[Call]:
        with bearer_session(token) as session:
            return [job(session) for job in mine if time.monotonic() < deadline]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, jobs[c::clients]) for c in range(clients)]
        calls = [call for future in futures for call in future.result()]
    return calls, time.perf_counter() - start


def require_all(calls: Sequence[Call], count: int, what: str) -> None:
    """Raise unless all `count` calls were made and answered as expected."""
    failed = [c for c in calls if c.error]
    if len(calls) != count or failed:
        first = f"{failed[0].status} {failed[0].error}" if failed else f"deadline of {RUN_DEADLINE:.0f} s reached"
        raise BenchError(f"{len(calls) - len(failed)}/{count} {what} answered as expected; first problem: {first}")


# --- records --------------------------------------------------------------------------------


def record_json(n: int) -> dict[str, Any]:
    """A typical record: about 600 bytes of notes, a diagnosis, a symptom and a prescription."""
    return {
        "title": f"Asthma review {n}",
        "category": "respiratory",
        "diagnoses": ["J45.909"],
        "symptoms": ["HP:0002094"],
        "notes": NOTES,
        "prescriptions": [{"drug": "salbutamol", "dose": "100 mcg", "frequency": "as needed", "duration": "30 days"}],
    }


def upload_jobs(url: str, numbers: range) -> list[Job]:
    """One POST of a record to `url` (a patient's records) per number."""

    def job(n: int) -> Job:
        return lambda session: timed(session, "POST", url, 201, json=record_json(n))

    return [job(n) for n in numbers]
