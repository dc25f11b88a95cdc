"""MedLedger consensus benchmark: four real nodes (improved DPoS) on 127.0.0.1.

Client threads submit transactions round robin to all four nodes for a fixed window, then the
bench measures:
- throughput: transactions committed per second and blocks per second, checking on one node
  that every submitted transaction landed exactly once, and that all nodes hold the same block
  at a common height;
- latency: from submission (HTTP 201) until the transaction is in a block, and until that block
  is final (at or below `final_height` of GET /api/v1/consensus) on the node it was submitted
  to, polled every 100 ms (--poll-ms); next to what the finality rule predicts for the blocks
  produced;
- cost and trouble: the nodes' CPU (idle, polled, under load, from /proc) and what they logged
  (branch switches, refused blocks, 500s, UNIQUE violations).

Workloads: `records` (default): a doctor made with the CLI on each node writes records for a
patient of that node (`POST /patients/<id>/records`, one `record` transaction each);
`registrations`: patients register (`POST /auth/register`, one `key` transaction each, with an
RSA-3072 key pair made on the server).

    cd /work/main && .venv/bin/python bench/consensus.py [--seconds 60] [--slot-ms 1000]
        [--clients 4] [--workload records|registrations] [--poll-ms 100] [--keep] [--json]

Every node is stopped at the end, also on failure, Ctrl-C or SIGTERM; everything lives in a
temporary folder.

Progress goes to stderr; the results table (or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so that `core` and `portal` import

import requests

from bench.harness import (
    CLIENTS,
    FAILURES,
    BenchError,
    Metric,
    Section,
    api,
    create_doctor,
    load_average,
    log,
    machine,
    percentile,
    print_table,
    record_json,
    register_patient,
    sign_in,
    timed,
)

if TYPE_CHECKING:
    from portal.launcher import LocalNode

NODES = 4
SLOT_MS = 1000
SECONDS = 60.0
POLL_MS = 100  # how often each node's GET /consensus is polled (--poll-ms)
WAIT_STEP = 0.1
PAGE = 100  # the largest page GET /chain/blocks gives
READY_TIMEOUT = 60.0
SETUP_DEADLINE = 40.0  # the set-up accounts' keys final on every node
DRAIN_SLOTS = 20  # after the window: slots to wait for the last transactions to be final
IDLE_SECONDS = 5.0  # the consortium's own CPU use, with no clients and no polling
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
AGREE_DEADLINE = 10.0
PASSWORD = "bench-password-1"
STOPPING = threading.Event()  # set on SIGTERM, so that the client threads end at once


# --- the consortium -------------------------------------------------------------------------


def free_base_port(count: int) -> int:
    """The first of `count` consecutive free loopback ports (the launcher numbers nodes from it)."""
    for base in range(17100, 30000, 10):
        with ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise BenchError("no run of free ports between 17100 and 30000")


@contextmanager
def consortium(folder: Path, slot_ms: int) -> Iterator[list[LocalNode]]:
    """NODES nodes as `portal.launcher` makes them: prepared, started, and once every one answers,
    founded (the shared genesis file, slot 0 shortly after); every node is stopped on the way out
    (LocalNode.stop signals its whole process group), whatever happens."""
    os.environ["MEDLEDGER_INSTANCE"] = str(folder)  # portal.config reads it on import: keep ./instance clean
    from portal.launcher import found, prepare

    log(f"preparing {NODES} nodes (keys, migrations); slots of {slot_ms} ms")
    nodes = prepare(folder, NODES, free_base_port(NODES))
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(READY_TIMEOUT)
        found(nodes, slot_ms=slot_ms)
        wait_for_genesis(nodes)
        log("nodes up: " + ", ".join(n.url for n in nodes))
        yield nodes
    except Exception:
        for node in nodes:
            log(f"--- end of {node.node_id}'s log ---\n{node.log.read_text(errors='replace')[-1500:]}")
        raise
    finally:
        for node in nodes:
            node.stop()
        log("every node stopped")


def wait_for_genesis(nodes: Sequence[LocalNode]) -> None:
    """Until every node has installed block 0 from the genesis file."""
    deadline = time.monotonic() + READY_TIMEOUT
    while min(chain_height(n) for n in nodes) < 0:
        if time.monotonic() > deadline:
            raise BenchError(f"not every node installed the genesis block within {READY_TIMEOUT:.0f} s")
        time.sleep(WAIT_STEP)


def nodes_cpu(nodes: Sequence[LocalNode]) -> float:
    """CPU seconds used so far by the live processes of the nodes' process groups (gunicorn
    master and worker, block producer)."""
    groups = {n.process.pid for n in nodes if n.process is not None}
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) in groups:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def idle_cpu(nodes: Sequence[LocalNode]) -> float:
    """Cores the consortium keeps busy on its own (producers, peer sync), with no clients."""
    before = nodes_cpu(nodes)
    time.sleep(IDLE_SECONDS)
    return (nodes_cpu(nodes) - before) / IDLE_SECONDS


def get(url: str) -> Any:
    with requests.Session() as session:
        return api(session, "GET", url, 200)


def chain_height(node: LocalNode) -> int:
    return get(f"{node.url}/api/v1/chain/blocks?limit=1")["height"]


# --- watching a node: blocks, where transactions landed, finality -----------------------------


@dataclass
class Tracker:
    """Polls one node's GET /consensus every `interval` seconds and fetches each new block, noting
    when (wall clock, seconds) it first saw each height and first saw it final, and the height
    holding each transaction (by hash, and a `key` transaction also by its account)."""

    node: LocalNode
    interval: float
    height: int = -1
    final: int = -1
    seen_at: dict[int, float] = field(default_factory=dict)
    final_at: dict[int, float] = field(default_factory=dict)
    block_hash: dict[int, str] = field(default_factory=dict)
    where: dict[str, int] = field(default_factory=dict)
    poll_latency_ms: list[float] = field(default_factory=list)
    errors: int = 0
    rewinds: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.wait(self.interval):
                try:
                    self.poll(session)
                except (requests.RequestException, BenchError, KeyError, ValueError):
                    self.errors += 1

    def poll(self, session: requests.Session) -> None:
        start = time.perf_counter()
        status = api(session, "GET", f"{self.node.url}/api/v1/consensus", 200)
        self.poll_latency_ms.append((time.perf_counter() - start) * 1000)
        now = time.time()
        if status["height"] > self.height:
            self.fetch_blocks(session, status["height"], now)
        for height in range(self.final + 1, min(status["final_height"], self.height) + 1):
            self.final_at[height] = now
        self.final = max(self.final, min(status["final_height"], self.height))

    def fetch_blocks(self, session: requests.Session, tip: int, now: float) -> None:
        while self.height < tip:
            page = api(session, "GET", f"{self.node.url}/api/v1/chain/blocks?from={self.height + 1}&limit={PAGE}", 200)
            for header in page["blocks"]:
                if header["height"] > 0 and header["prev"] != self.block_hash.get(header["height"] - 1):
                    self.rewind(session, header["height"])
                    return
                if header["tx_count"]:
                    self.index(get_block(session, self.node, header["height"]))
                self.seen_at[header["height"]] = now
                self.block_hash[header["height"]] = header["hash"]
                self.height = header["height"]
            if not page["blocks"]:
                return

    def rewind(self, session: requests.Session, height: int) -> None:
        """The node switched branch under us (block `height` does not follow the block we saw
        below it): find the last height where we saw the block it holds now, forget where
        transactions were above it, and fetch from there at the next poll."""
        self.rewinds += 1
        start = max(height - PAGE, 0)
        page = api(session, "GET", f"{self.node.url}/api/v1/chain/blocks?from={start}&limit={height - start}", 200)
        point = start - 1
        for header in page["blocks"]:
            if self.block_hash.get(header["height"]) != header["hash"]:
                break
            point = header["height"]
        self.height = point
        self.where = {key: h for key, h in self.where.items() if h <= point}

    def index(self, block: dict[str, Any]) -> None:
        height = block["header"]["height"]
        for tx in block["transactions"]:
            self.where[tx["hash"]] = height
            if tx["kind"] == "key":
                self.where[tx["payload"]["account"]] = height

    def is_final(self, key: str) -> bool:
        height = self.where.get(key)
        return height is not None and height <= self.final


def get_block(session: requests.Session, node: LocalNode, height: int) -> dict[str, Any]:
    return api(session, "GET", f"{node.url}/api/v1/chain/blocks/{height}", 200)


@contextmanager
def tracking(nodes: Sequence[LocalNode], poll_ms: int) -> Iterator[list[Tracker]]:
    trackers = [Tracker(node, poll_ms / 1000) for node in nodes]
    threads = [threading.Thread(target=t.run, name=f"track-{t.node.node_id}", daemon=True) for t in trackers]
    for thread in threads:
        thread.start()
    try:
        yield trackers
    finally:
        for tracker in trackers:
            tracker.stop.set()
        for thread in threads:
            thread.join(timeout=30)


def wait_final(trackers: Sequence[Tracker], keys_by_node: Sequence[Sequence[str]], deadline_s: float) -> int:
    """Wait until every key is final on the tracker of the node it was submitted to (or the
    deadline passes); returns how many are not."""
    deadline = time.monotonic() + deadline_s
    while True:
        left = sum(not trackers[i].is_final(k) for i, keys in enumerate(keys_by_node) for k in keys)
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(WAIT_STEP)


# --- workloads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where one node takes this workload's transactions."""

    url: str
    token: str | None


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # the ledger transaction kind each submission makes
    body: Callable[[int], dict[str, Any]]  # request body of submission n
    key: Callable[[dict[str, Any]], str]  # what the tracker finds it by, from the 201 answer
    setup_keys: tuple[list[str], ...]  # per node: transactions the set-up made (final before the window)
    targets: tuple[Target, ...]


def record_target(node: LocalNode) -> tuple[Target, list[str]]:
    """A doctor made with the CLI (as an administrator would) and a patient registered over the
    API, on `node`; returns where the doctor writes the patient's records, and both accounts."""
    start = time.perf_counter()
    doctor = create_doctor(node.env(), f"bench.doc.{node.node_id}", PASSWORD)
    made = time.perf_counter()
    account = {"username": f"bench.patient.{node.node_id}", "password": PASSWORD, "display_name": "Bench Patient"}
    patient = register_patient(node.url, account)
    registered = time.perf_counter()
    token = sign_in(node.url, f"bench.doc.{node.node_id}", PASSWORD)
    log(
        f"{node.node_id}: doctor (CLI) {made - start:.1f} s, patient registered {registered - made:.1f} s, "
        f"doctor signed in {time.perf_counter() - registered:.1f} s"
    )
    return Target(f"{node.url}/api/v1/patients/{patient}/records", token), [doctor, patient]


def record_workload(nodes: Sequence[LocalNode]) -> Workload:
    """Each node's doctor writes records for the patient of its node."""
    log("records: a doctor (CLI) and a patient (API) on each node")
    with ThreadPoolExecutor(len(nodes)) as pool:
        targets, setup = zip(*pool.map(record_target, nodes), strict=True)
    return Workload("records", "record", record_json, lambda body: body["tx_hash"], setup, targets)


def registration_workload(nodes: Sequence[LocalNode]) -> Workload:
    def body(n: int) -> dict[str, Any]:
        return {
            "username": f"bench.reg.{n}",
            "password": PASSWORD,
            "display_name": f"Bench Patient {n}",
            "date_of_birth": "1980-01-01",
        }

    targets = tuple(Target(f"{node.url}/api/v1/auth/register", None) for node in nodes)
    return Workload("registrations", "key", body, lambda b: b["user"]["id"], tuple([] for _ in nodes), targets)


WORKLOADS = {"records": record_workload, "registrations": registration_workload}


def warm_up(workload: Workload, numbers: Iterator[int]) -> list[str]:
    """One untimed submission per node, all at once: a worker's first record loads the clinical
    vocabularies (ICD-10, HPO), which takes seconds."""

    def submit(target: Target) -> str:
        start = time.perf_counter()
        with requests.Session() as session:
            if target.token:
                session.headers["Authorization"] = f"Bearer {target.token}"
            key = workload.key(api(session, "POST", target.url, 201, json=workload.body(next(numbers))))
        log(f"warm-up {target.url.split('/api/')[0]}: {time.perf_counter() - start:.1f} s")
        return key

    with ThreadPoolExecutor(len(workload.targets)) as pool:
        return list(pool.map(submit, workload.targets))


# --- the measured window ------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    node: int  # index of the node it was submitted to
    key: str
    done_at: float  # wall clock when the 201 arrived, seconds
    latency: float  # seconds


@dataclass
class Window:
    submissions: list[Submission]
    failures: list[str]
    start: float  # wall clock, seconds
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def client(
    workload: Workload, first_node: int, until: float, numbers: Iterator[int]
) -> tuple[list[Submission], list[str]]:
    """Submit to the nodes in turn, starting at `first_node`, until the wall clock passes `until`;
    returns what was answered 201 and what was not."""
    done: list[Submission] = []
    failures: list[str] = []
    with ExitStack() as stack:
        sessions = [stack.enter_context(requests.Session()) for _ in workload.targets]
        for session, target in zip(sessions, workload.targets, strict=True):
            if target.token:
                session.headers["Authorization"] = f"Bearer {target.token}"
        for turn in itertools.count(first_node):
            if time.time() >= until or STOPPING.is_set():
                break
            i = turn % len(sessions)
            call = timed(sessions[i], "POST", workload.targets[i].url, 201, json=workload.body(next(numbers)))
            if call.error:
                failures.append(f"node {i + 1}: {call.status} {call.error[:200]}")
            else:
                done.append(Submission(i, workload.key(call.body), time.time(), call.latency))
    return done, failures


def run_window(workload: Workload, clients: int, seconds: float, numbers: Iterator[int]) -> Window:
    start = time.time()
    with ThreadPoolExecutor(clients) as pool:
        parts = list(pool.map(lambda c: client(workload, c, start + seconds, numbers), range(clients)))
    submissions = sorted((s for done, _ in parts for s in done), key=lambda s: s.done_at)
    failures = [f for _, failed in parts for f in failed]
    return Window(submissions, failures, start, max([time.time(), *(s.done_at for s in submissions)]))


# --- the chain after the run --------------------------------------------------------------------


@dataclass(frozen=True)
class ChainBlock:
    height: int
    hash: str
    ts: int  # milliseconds
    producer: str
    keys: tuple[str, ...]  # transaction hashes, and accounts of `key` transactions, of the workload's kind


def scan_chain(node: LocalNode, kind: str) -> list[ChainBlock]:
    """Every block of `node`, with the workload's transactions of the blocks that hold any."""
    blocks: list[ChainBlock] = []
    with requests.Session() as session:
        while True:
            start = blocks[-1].height + 1 if blocks else 0
            page = api(session, "GET", f"{node.url}/api/v1/chain/blocks?from={start}&limit={PAGE}", 200)
            for header in page["blocks"]:
                keys: list[str] = []
                if header["tx_count"]:
                    for tx in get_block(session, node, header["height"])["transactions"]:
                        if tx["kind"] == kind:
                            keys.append(tx["payload"]["account"] if kind == "key" else tx["hash"])
                blocks.append(
                    ChainBlock(header["height"], header["hash"], header["ts"], header["producer"], tuple(keys))
                )
            if len(page["blocks"]) < PAGE:
                return blocks


def slot_of(ts: int, params: dict[str, Any]) -> int:
    return (ts - params["genesis_ms"]) // params["slot_ms"]


def slot_start(slot: int, params: dict[str, Any]) -> int:
    return params["genesis_ms"] + slot * params["slot_ms"]


def missed_slots(blocks: Sequence[ChainBlock], params: dict[str, Any]) -> list[int]:
    """The slots with no block, between genesis and the last block."""
    slots = [slot_of(b.ts, params) for b in blocks]
    return [s for before, after in itertools.pairwise(slots) for s in range(before + 1, after)]


def finalised_by(blocks: Sequence[ChainBlock], quorum: int) -> dict[int, int]:
    """For each height, the lowest height whose block makes it final by the rule: blocks from
    `quorum` distinct delegates, its own producer included, from it up to there."""
    result = {}
    for h, block in enumerate(blocks):
        producers = {block.producer}
        for j in range(h, len(blocks)):
            producers.add(blocks[j].producer)
            if len(producers) >= quorum:
                result[h] = j
                break
    return result


def agreement(nodes: Sequence[LocalNode]) -> tuple[int, int]:
    """(height, distinct block hashes there) at the lowest tip among the nodes; retried for a
    while, since a block may be on its way to some of them."""
    deadline = time.monotonic() + AGREE_DEADLINE
    while True:
        low = min(chain_height(n) for n in nodes)
        hashes = [get(f"{n.url}/api/v1/chain/blocks/{low}")["hash"] for n in nodes]
        if len(set(hashes)) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(set(hashes)) > 1:
        log(
            f"nodes disagree at height {low}: "
            + ", ".join(f"{n.node_id} {h[:12]}" for n, h in zip(nodes, hashes, strict=True))
        )
    return low, len(set(hashes))


def verify_all(nodes: Sequence[LocalNode]) -> list[bool]:
    """Whether each node finds its whole chain valid (GET /chain/verify); logs what fails."""
    valid = []
    for node in nodes:
        report = get(f"{node.url}/api/v1/chain/verify")
        valid.append(bool(report["valid"]))
        if not report["valid"]:
            log(f"{node.node_id}: GET /chain/verify: {report}")
    return valid


LOG_EVENTS = {  # metric key: (label, text in a node's log)
    "branch_switches": ("fork resolved by switching branch", "switching to"),
    "future_blocks": ("synced block refused as from the future", "block from the future"),
    "rejected_synced": ("synced block refused (any reason)", "rejected a synced block"),
    "http_500": ("request answered 500 (unhandled error)", "unhandled error on"),
    "producer_failures": ("producer or sync step failed", "ledger work failed"),
    "unique_violations": ("UNIQUE constraint failed (concurrent writers)", "sqlalchemy.exc.IntegrityError"),
}


def log_events(nodes: Sequence[LocalNode]) -> Counter[str]:
    """How often each of LOG_EVENTS appears in the nodes' logs (gunicorn and producer output)."""
    counts: Counter[str] = Counter()
    for node in nodes:
        text = node.log.read_text(errors="replace")
        for key, (_, needle) in LOG_EVENTS.items():
            counts[key] += text.count(needle)
    return counts


# --- figures -------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a run measured, for the sections below."""

    workload: Workload
    window: Window
    params: dict[str, Any]
    trackers: list[Tracker]
    blocks: list[ChainBlock]
    not_final: int
    agree_height: int
    agree_hashes: int
    valid_chains: list[bool]  # by node
    reference: str  # the node whose chain is counted: the first whose chain verifies
    setup_removals: list[dict[str, Any]]
    end_removals: list[dict[str, Any]]
    startup_late_slots: int
    events: Counter[str]
    cpu: dict[str, float]  # cores busy: idle consortium, nodes and this bench in the window


def ms_stats(prefix: str, label: str, values: Sequence[float]) -> list[Metric]:
    if len(values) < 2:
        return [Metric(f"{prefix}_count", f"{label}: too few values", len(values))]
    return [
        Metric(f"{prefix}_p50_ms", f"{label} p50", percentile(values, 50), "ms"),
        Metric(f"{prefix}_p95_ms", f"{label} p95", percentile(values, 95), "ms"),
        Metric(f"{prefix}_max_ms", f"{label} max", max(values), "ms"),
    ]


def throughput_section(run: Run) -> Section:
    window, blocks = run.window, run.blocks
    submitted = Counter(s.key for s in window.submissions)
    landed = Counter(k for b in blocks for k in b.keys)
    once = sum(landed[k] == 1 for k in submitted)
    in_window = [b for b in blocks if window.start * 1000 <= b.ts <= window.end * 1000]
    missed = missed_slots(blocks, run.params)
    missed_in_window = [m for m in missed if window.start * 1000 <= slot_start(m, run.params) <= window.end * 1000]
    committed = sum(landed[k] >= 1 for k in submitted)
    per_block = [len(b.keys) for b in in_window] or [0]
    latencies = [s.latency * 1000 for s in window.submissions]
    return Section(
        "throughput",
        f"Throughput: {run.workload.name} submitted round robin to {NODES} nodes for {window.seconds:.1f} s",
        [
            Metric("submitted", "submitted (answered 201)", len(window.submissions)),
            Metric("failed", "submissions not answered 201", len(window.failures)),
            Metric("submitted_per_s", "submitted per second", len(window.submissions) / window.seconds, "tx/s"),
            *ms_stats("submit", "POST latency", latencies),
            Metric("committed", f"committed ({run.workload.kind} tx in {run.reference}'s blocks)", committed),
            Metric("exactly_once", "  landed exactly once", once),
            Metric("duplicated", "  landed more than once", sum(landed[k] > 1 for k in submitted)),
            Metric("committed_per_s", "committed per second of the window", committed / window.seconds, "tx/s"),
            Metric("blocks_in_window", "blocks produced in the window", len(in_window)),
            Metric("blocks_per_s", "blocks per second", len(in_window) / window.seconds, "blocks/s"),
            Metric("missed_slots", "slots without a block in the window", len(missed_in_window)),
            Metric("missed_slots_chain", f"  in the whole chain ({len(blocks)} blocks)", len(missed)),
            Metric("tx_per_block_mean", "workload tx per block in the window, mean", sum(per_block) / len(per_block)),
            Metric("tx_per_block_max", "  max", max(per_block)),
            Metric("agree_height", "all nodes hold the same block at height", run.agree_height),
            Metric("agree_hashes", "  distinct hashes there (1 = agree)", run.agree_hashes),
            Metric("valid_chains", f"nodes whose GET /chain/verify is valid (of {NODES})", sum(run.valid_chains)),
        ],
    )


@dataclass
class Delays:
    """Per submission, in ms: until the submitting node showed it in a block and final (polled),
    and until the timestamps of its block and of the block that made it final (the rule)."""

    seen: list[float] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    block_ts: list[float] = field(default_factory=list)
    final_ts: list[float] = field(default_factory=list)


def submission_delays(run: Run, final_by: dict[int, int]) -> Delays:
    index = {b.height: b for b in run.blocks}
    height_of = {k: b.height for b in run.blocks for k in b.keys}
    delays = Delays()
    for s in run.window.submissions:
        tracker, height = run.trackers[s.node], height_of.get(s.key)
        if height is None:
            continue
        if height in tracker.seen_at:
            delays.seen.append(max(tracker.seen_at[height] - s.done_at, 0.0) * 1000)
        if height in tracker.final_at:
            delays.final.append(max(tracker.final_at[height] - s.done_at, 0.0) * 1000)
        delays.block_ts.append(index[height].ts - s.done_at * 1000)
        if height in final_by:
            delays.final_ts.append(index[final_by[height]].ts - s.done_at * 1000)
    return delays


def rule_lags(run: Run, final_by: dict[int, int]) -> list[float]:
    """For each block holding a submission: slots from it to the block that made it final."""
    index = {b.height: b for b in run.blocks}
    submitted = {s.key for s in run.window.submissions}
    holding = sorted({b.height for b in run.blocks if submitted.intersection(b.keys)} & final_by.keys())
    return [(index[final_by[h]].ts - index[h].ts) / run.params["slot_ms"] for h in holding]


def latency_section(run: Run) -> Section:
    """Submission -> in a block -> final, as the submitting node showed it (polled), and as the
    blocks' own timestamps and the finality rule put it (same clock: one machine)."""
    quorum, slot_ms = run.params["quorum"], run.params["slot_ms"]
    final_by = finalised_by(run.blocks, quorum)
    delays = submission_delays(run, final_by)
    lag_slots = rule_lags(run, final_by)
    polls = [ms for t in run.trackers for ms in t.poll_latency_ms]
    window_blocks = [b for b in run.blocks if run.window.start * 1000 <= b.ts <= run.window.end * 1000]
    spread = [t.seen_at[b.height] * 1000 - b.ts for t in run.trackers for b in window_blocks if b.height in t.seen_at]
    mean_lag = sum(lag_slots) / len(lag_slots) if lag_slots else 0.0
    return Section(
        "latency",
        f"Latency: every submission of the window, on the node it was submitted to (polled every "
        f"{run.params['poll_ms']} ms); K = {run.params['delegates']}, quorum = {quorum}, slot {slot_ms} ms",
        [
            Metric("tracked", "submissions tracked", len(delays.final)),
            Metric("not_final", "  not final when the drain ended", run.not_final),
            *ms_stats("included", "submitted -> seen in a block", delays.seen),
            *ms_stats("final", "submitted -> seen final", delays.final),
            *ms_stats("chain_included", "submitted -> block timestamp", delays.block_ts),
            *ms_stats("chain_final", "submitted -> timestamp of the block making it final", delays.final_ts),
            Metric(
                "rule_min_lag_ms", "rule: block -> final, at least (quorum - 1) slots", (quorum - 1) * slot_ms, "ms"
            ),
            Metric("rule_lag_slots_mean", "rule, this run's schedule: block -> final, mean", mean_lag, "slots"),
            Metric("rule_lag_slots_max", "  max", max(lag_slots, default=0.0), "slots"),
            Metric(
                "rule_expected_final_ms",
                "rule: expected submitted -> final (1/2 slot + mean lag)",
                (0.5 + mean_lag) * slot_ms,
                "ms",
            ),
            *ms_stats("block_seen", "block timestamp -> seen on a node (each node, polled)", spread),
            *ms_stats("consensus_poll", "GET /consensus latency", polls),
            Metric("poll_errors", "polls that failed", sum(t.errors for t in run.trackers)),
            Metric("tracker_rewinds", "branch switches the polls ran into", sum(t.rewinds for t in run.trackers)),
        ],
    )


def setup_section(run: Run) -> Section:
    return Section(
        "setup",
        "Consortium",
        [
            Metric("nodes", "nodes (gunicorn 1 worker x 4 threads + block producer each)", NODES),
            Metric("delegates", "delegates K", run.params["delegates"]),
            Metric("quorum", "finality quorum floor(2K/3) + 1", run.params["quorum"]),
            Metric("slot_ms", "slot", run.params["slot_ms"], "ms"),
            Metric("late_slots", "slots gone by before every node answered", run.startup_late_slots),
            Metric("removals", "delegates removed before the window", len(run.setup_removals)),
            Metric("removals_end", "delegates removed by the end", len(run.end_removals)),
            Metric("chain_blocks", f"blocks on {run.reference} at the end", len(run.blocks)),
            Metric(
                "idle_cpu", f"CPU of the idle consortium (no clients, {IDLE_SECONDS:.0f} s)", run.cpu["idle"], "cores"
            ),
            Metric("idle_polled_cpu", "  the same, polled by this bench's trackers", run.cpu["idle_polled"], "cores"),
            Metric("window_cpu_nodes", "CPU of the nodes in the window", run.cpu["nodes"], "cores"),
            Metric("window_cpu_bench", "CPU of this bench (clients, polling) in the window", run.cpu["bench"], "cores"),
        ],
    )


def events_section(run: Run) -> Section:
    return Section(
        "events",
        f"What the {NODES} nodes logged during the whole run",
        [Metric(key, label, run.events[key]) for key, (label, _) in LOG_EVENTS.items()],
    )


# --- main ----------------------------------------------------------------------------------------


def consensus_status(node: LocalNode) -> dict[str, Any]:
    return get(f"{node.url}/api/v1/consensus")


def measure(nodes: list[LocalNode], args: argparse.Namespace) -> Run:
    status = consensus_status(nodes[0])
    params = {**status["params"], "quorum": status["params"]["delegates"] * 2 // 3 + 1, "poll_ms": args.poll_ms}
    late = max(int(time.time() * 1000) - params["genesis_ms"], 0) // params["slot_ms"]
    log(f"genesis slot 0 began {late} slots before every node answered")
    numbers = itertools.count()
    cpu = {"idle": idle_cpu(nodes)}
    log(f"idle consortium: {cpu['idle']:.2f} cores over {IDLE_SECONDS:.0f} s")
    with tracking(nodes, args.poll_ms) as trackers:
        cpu["idle_polled"] = idle_cpu(nodes)
        log(f"idle consortium polled every {args.poll_ms} ms: {cpu['idle_polled']:.2f} cores")
        workload = WORKLOADS[args.workload](nodes)
        keys = list(workload.setup_keys)
        for i, key in enumerate(warm_up(workload, numbers)):
            keys[i] = [*keys[i], key]
        log("waiting for the set-up transactions to be final on every node")
        if wait_final(trackers, keys, SETUP_DEADLINE):
            raise BenchError(f"set-up transactions not final within {SETUP_DEADLINE:.0f} s")
        removals = consensus_status(nodes[0])["removals"]
        log(f"window: {args.seconds:.0f} s of {workload.name}, {args.clients} client threads")
        node_start, own_start = nodes_cpu(nodes), own_cpu()
        window = run_window(workload, args.clients, args.seconds, numbers)
        cpu["nodes"] = (nodes_cpu(nodes) - node_start) / window.seconds
        cpu["bench"] = (own_cpu() - own_start) / window.seconds
        log(f"window done: {len(window.submissions)} submitted, {len(window.failures)} failed")
        for failure in window.failures[:3]:
            log(f"  failed: {failure}")
        by_node = [[s.key for s in window.submissions if s.node == i] for i in range(NODES)]
        not_final = wait_final(trackers, by_node, DRAIN_SLOTS * params["slot_ms"] / 1000)
        log(f"drained ({not_final} not final); verifying and comparing the nodes' chains")
    valid = verify_all(nodes)
    reference = next((n for n, ok in zip(nodes, valid, strict=True) if ok), nodes[0])
    blocks = scan_chain(reference, workload.kind)
    producers = Counter(b.producer for b in blocks if window.start * 1000 <= b.ts <= window.end * 1000)
    log(f"{reference.node_id}'s chain: blocks in the window by producer: {dict(sorted(producers.items()))}")
    height, hashes = agreement(nodes)
    end_removals = consensus_status(reference)["removals"]
    for removal in end_removals:
        log(f"removal: {removal}")
    events = log_events(nodes)
    log(f"in the nodes' logs: {dict(events)}")
    return Run(
        workload=workload,
        window=window,
        params=params,
        trackers=trackers,
        blocks=blocks,
        not_final=not_final,
        agree_height=height,
        agree_hashes=hashes,
        valid_chains=valid,
        reference=reference.node_id,
        setup_removals=removals,
        end_removals=end_removals,
        startup_late_slots=late,
        events=events,
        cpu=cpu,
    )


def failed_checks(run: Run) -> list[str]:
    """What went wrong, if anything: the run's figures stand, but the exit code is 1."""
    submitted = {s.key for s in run.window.submissions}
    landed = Counter(k for b in run.blocks for k in b.keys)
    checks = {
        "every submission answered 201": not run.window.failures,
        "every submitted transaction landed exactly once": all(landed[k] == 1 for k in submitted),
        "every submitted transaction final by the end of the drain": run.not_final == 0,
        "all nodes hold the same block at a common height": run.agree_hashes == 1,
        "every node's chain verifies": all(run.valid_chains),
    }
    return [name for name, passed in checks.items() if not passed]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"measured window (default {SECONDS:.0f})")
    parser.add_argument("--slot-ms", type=int, default=SLOT_MS, help=f"slot length (default {SLOT_MS})")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"client threads (default {CLIENTS})")
    parser.add_argument("--poll-ms", type=int, default=POLL_MS, help=f"GET /consensus polling (default {POLL_MS})")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="records", help="default records")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' databases and logs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    if args.seconds < 5 or args.seconds > 600 or args.slot_ms < 100 or args.clients < 1 or args.poll_ms < 10:
        parser.error("need 5 <= --seconds <= 600, --slot-ms >= 100, --clients >= 1 and --poll-ms >= 10")
    return args


def report(run: Run, args: argparse.Namespace, load_before: str) -> None:
    sections = [setup_section(run), throughput_section(run), latency_section(run), events_section(run)]
    params = {"workload": args.workload, "seconds": args.seconds, "slot_ms": args.slot_ms, "clients": args.clients}
    params["poll_ms"] = args.poll_ms
    params["load_average_before"] = load_before
    params |= machine()
    if args.json:
        print(
            json.dumps({"params": params, **{s.key: {m.key: m.value for m in s.metrics} for s in sections}}, indent=2)
        )
    else:
        print_table(f"MedLedger consensus benchmark ({', '.join(f'{k} {v}' for k, v in params.items())})", sections)


def terminate(signum: int, frame: object) -> None:
    """SIGTERM: end the client threads and unwind, so that every node is stopped (finally)."""
    STOPPING.set()
    sys.exit(128 + signum)


@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    """A temporary folder for the nodes, removed afterwards unless `keep`."""
    if keep:
        folder = Path(tempfile.mkdtemp(prefix="medledger-consensus-"))
        log(f"keeping the nodes' folders (databases, logs) in {folder}")
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="medledger-consensus-") as tmp:
        yield Path(tmp)


def main() -> int:
    args = parse_args()
    load_before = load_average()
    signal.signal(signal.SIGTERM, terminate)
    try:
        with workdir(args.keep) as folder, consortium(folder, args.slot_ms) as nodes:
            run = measure(nodes, args)
    except (*FAILURES, subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        log(f"benchmark failed: {exc}")
        return 1
    report(run, args, load_before)
    failed = failed_checks(run)
    for name in failed:
        log(f"check failed: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
