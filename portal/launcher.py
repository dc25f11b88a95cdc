"""Start a local consortium: one process per node on loopback, each with its own database,
node key and instance folder, all sharing one genesis file. Used by
`flask medledger consortium up` and by the multi-node tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.consensus import Params
from core.crypto import NodeKey, load_node_key
from portal import consortium
from portal.demo import PASSWORD as DEMO_PASSWORD

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LocalNode:
    node_id: str
    port: int
    folder: Path
    genesis: Path
    log: Path = field(init=False)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.log = self.folder / "node.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> dict[str, str]:
        """The settings under which `flask --app wsgi medledger ...` acts as this node (written
        to `node.env` by `prepare`)."""
        return {
            "MEDLEDGER_CONFIG": "development",
            "MEDLEDGER_INSTANCE": str(self.folder),
            "DATABASE_URL": f"sqlite:///{self.folder / 'node.db'}",
            "NODE_ID": self.node_id,
            "NODE_KEY_PATH": str(self.folder / "node.key"),
            "EMERGENCY_KEY_PATH": str(self.folder / "emergency.key"),
            "GENESIS_PATH": str(self.genesis),
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "1",
            "MEDLEDGER_PRODUCER": "1",
            "HOSPITAL_NAME": f"Hospital {self.node_id.removeprefix('node-')}",
            "CATEGORY_TAG_KEY": (self.folder.parent / "category-tag.key").read_text().strip(),
        }

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.settings()}

    def flask(self, *args: str) -> None:
        subprocess.run(  # noqa: S603 (fixed argv)
            [sys.executable, "-m", "flask", "--app", "wsgi", *args],
            cwd=ROOT, env=self.env(), check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        """Start the node's gunicorn (web + block producer) in its own process group."""
        handle = open(self.log, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=self.env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited; see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/api/v1/chain/blocks?limit=1", timeout=2):  # noqa: S310
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.node_id} did not answer within {timeout} s")

    def wait_chain(self, timeout: float = 30) -> None:
        """Wait until the node has installed the consortium's genesis block."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/api/v1/chain/blocks?limit=1", timeout=2) as answer:  # noqa: S310
                    if json.loads(answer.read())["height"] >= 0:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.node_id} did not install the genesis block within {timeout} s")

    def stop(self) -> None:
        """Stop the node and everything it started; bounded in time."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        self.process = None


START_DELAY_MS = 2000  # slot 0 starts this long after every node answers


def prepare(folder: Path, count: int, base_port: int) -> list[LocalNode]:
    """Node folders with keys and migrated databases (kept if present)."""
    folder.mkdir(parents=True, exist_ok=True)
    genesis = folder / "genesis.json"
    tag_key = folder / "category-tag.key"
    if not tag_key.exists():  # the members' shared category tag key, made once at founding
        tag_key.write_text(os.urandom(32).hex() + "\n")
        tag_key.chmod(0o600)
    nodes = [LocalNode(f"node-{i}", base_port + i - 1, folder / f"node-{i}", genesis) for i in range(1, count + 1)]
    for node in nodes:
        node.folder.mkdir(exist_ok=True)
        path = node.folder / "node.key"
        if not path.exists():
            NodeKey.generate(node.node_id).save(path, None)
        (node.folder / "node.env").write_text("".join(f"{k}={v}\n" for k, v in node.settings().items()))
        node.flask("db", "upgrade")
    return nodes


def _write_genesis(
    nodes: list[LocalNode], genesis: Path, slot_ms: int, epoch_slots: int | None, miss_limit: int, chain_id: str
) -> None:
    keys = [load_node_key(node.folder / "node.key", None) for node in nodes]
    start = (int(time.time() * 1000) + START_DELAY_MS) // slot_ms * slot_ms
    params = Params(len(nodes), slot_ms, epoch_slots or 30 * len(nodes), miss_limit, start)
    block, peers = consortium.create(chain_id, [(k, n.url) for k, n in zip(keys, nodes, strict=True)], params)
    partial = genesis.with_suffix(".tmp")
    consortium.write(partial, block, peers)
    partial.replace(genesis)  # nodes wait for the file: it must appear whole


def found(
    nodes: list[LocalNode], slot_ms: int = 1000, epoch_slots: int | None = None, miss_limit: int = 3,
    chain_id: str = "medledger-consortium",
) -> None:  # fmt: skip
    """Write the shared genesis file (unless it exists), with slot 0 shortly after now, and wait
    until every node has installed it. Call it once every node answers, so that no founder is
    counted absent for slots it could not fill."""
    genesis = nodes[0].genesis
    if not genesis.exists():
        _write_genesis(nodes, genesis, slot_ms, epoch_slots, miss_limit, chain_id)
    for node in nodes:
        node.wait_chain()


@contextmanager
def running(folder: Path, count: int, base_port: int, **params: Any) -> Iterator[list[LocalNode]]:
    """A founded local consortium of `count` nodes (`params` go to `found`), every node stopped
    on the way out, whatever happened. For tests and scripts that need real nodes."""
    nodes = prepare(folder, count, base_port)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        found(nodes, **params)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def up(folder: Path, count: int, base_port: int, demo: bool = False) -> None:
    """Run a local consortium until interrupted, then stop every node; with `demo` (three or
    more nodes), a new consortium gets the cross-hospital demo data."""
    fresh = not (folder / "genesis.json").exists()
    nodes = prepare(folder, count, base_port)
    signal.signal(signal.SIGTERM, _interrupt)  # stopped by a supervisor: still stop every node
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
            print(f"{node.node_id}: {node.url}  (log: {node.log})", flush=True)
        found(nodes)
        if demo and fresh:
            print("loading the demo data across the hospitals ...", flush=True)
            for line in seed_demo(nodes):
                print("  " + line, flush=True)
        elif demo:
            print("demo data was loaded when this consortium was founded", flush=True)
        print("consortium running; Ctrl-C stops every node", flush=True)
        while all(n.process is not None and n.process.poll() is None for n in nodes):
            time.sleep(1)
        print("a node exited; stopping the others", flush=True)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        for node in nodes:
            node.stop()


# -- talking to a local node's API, and the cross-hospital demo -------------------------------


def api(node: LocalNode, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """One call to a node's /api/v1: (status, decoded JSON or None)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(node.url + "/api/v1" + path, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (loopback nodes)
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def api_until(
    node: LocalNode, method: str, path: str, body: Any, token: str | None, ok: int, what: str, timeout: float = 30
) -> Any:
    """Repeat a call until it answers `ok` (what one node writes reaches the others in seconds);
    raises TimeoutError with the last answer."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            status, answer = api(node, method, path, body, token)
        except OSError as error:
            status, answer = 0, str(error)
        if status == ok:
            return answer
        last = (status, answer)
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last answer {last}")


def sign_in(node: LocalNode, username: str, password: str = DEMO_PASSWORD) -> tuple[str, str]:
    """An API token and the account's consortium id."""
    status, answer = api(node, "POST", "/auth/token", {"username": username, "password": password})
    if status != 200:
        raise RuntimeError(f"{username} could not sign in at {node.node_id}: {answer}")
    return answer["token"], answer["user"]["id"]


def add_doctor(node: LocalNode, username: str, name: str, password: str = DEMO_PASSWORD) -> tuple[str, str]:
    """A doctor of `node`'s hospital (endorsed by its node key), signed in."""
    hospital = node.settings()["HOSPITAL_NAME"]
    node.flask(
        "medledger", "create-user", "--role", "doctor", "--username", username, "--password", password,
        "--display-name", name, "--hospital", hospital, "--licence-number", f"L-{username}",
    )  # fmt: skip
    return sign_in(node, username, password)


def add_patient(
    node: LocalNode, username: str, name: str, born: str = "1984-03-21", password: str = DEMO_PASSWORD
) -> tuple[str, str]:
    """A patient registered (self-service) at `node`, signed in."""
    body = {"username": username, "password": password, "display_name": name, "date_of_birth": born}
    status, answer = api(node, "POST", "/auth/register", body)
    if status != 201:
        raise RuntimeError(f"could not register {username} at {node.node_id}: {answer}")
    return sign_in(node, username, password)


def seed_demo(nodes: list[LocalNode]) -> list[str]:
    """Demo data spread over three hospitals: Alice (hospital 1) with records written at
    hospitals 1 and 2, a grant in force to hospital 2's doctor, and a pending request from
    hospital 3's doctor. Returns the lines that tell who signs in where."""
    first, second, third = nodes[:3]
    alice, alice_id = add_patient(first, "alice", "Alice Moreau")
    dr_first, _ = add_doctor(first, "dr.osei", "Dr. Ama Osei")
    dr_second, second_id = add_doctor(second, "dr.lindqvist", "Dr. Erik Lindqvist")
    dr_third, _ = add_doctor(third, "dr.haddad", "Dr. Leila Haddad")
    for node, token, title, category in (
        (first, dr_first, "Asthma review", "respiratory"),
        (second, dr_second, "Cardiology consultation", "cardiology"),
    ):
        body = {"title": title, "category": category, "notes": f"{title}: stable, follow up in three months."}
        api_until(
            node, "POST", f"/patients/{alice_id}/records", body, token, 201, f"a record written at {node.node_id}"
        )
    api_until(first, "POST", "/grants", {"doctor_id": second_id, "days": 30}, alice, 201, "Alice's grant")
    ask = {"patient_id": alice_id, "reason": "Second opinion before surgery", "days": 14, "scope": {"type": "all"}}
    api_until(third, "POST", "/access-requests", ask, dr_third, 201, "the request from hospital 3")
    return [
        f"Alice Moreau (patient of hospital 1): {first.url}/app/  username alice",
        f"Dr. Ama Osei (hospital 1): {first.url}/  username dr.osei",
        f"Dr. Erik Lindqvist (hospital 2, granted): {second.url}/  username dr.lindqvist",
        f"Dr. Leila Haddad (hospital 3, request pending): {third.url}/  username dr.haddad",
        f"password for all: {DEMO_PASSWORD}; Alice's id: {alice_id}",
    ]
