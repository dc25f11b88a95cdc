"""MedLedger ledger benchmark.

A. Chain verification in memory (core only): `validate_chain` over a synthetic chain,
   next to the raw cost floor of the hashing and signature checks it must do.
B. Chain verification through the database: the same chain as rows, `verify_chain()`.
C. Record uploads through the HTTP API of a real gunicorn node on 127.0.0.1.

    cd /work/main && .venv/bin/python bench/ledger.py [--blocks N] [--txs-per-block K]
        [--uploads M] [--skip-http] [--json]

Progress goes to stderr; the results table (or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so that `core` and `portal` import

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bench.harness import (
    CLIENTS,
    FAILURES,
    WARMUP,
    BenchError,
    Call,
    Metric,
    Section,
    api,
    bearer_session,
    create_doctor,
    free_port,
    gunicorn,
    log,
    machine,
    node_env,
    percentile,
    prepare_node,
    print_table,
    register_patient,
    require_all,
    run_clients,
    sign_in,
    upload_jobs,
    warm_up,
)
from core.consensus import Params
from core.crypto import NodeKey, UserKeys, generate_user_keys
from core.crypto.signing import PSS
from core.encoding import b64d, b64e
from core.ledger import (
    GENESIS_PREV_HASH,
    Block,
    StoredBlock,
    Transaction,
    make_block,
    sign_transaction,
    validate_chain,
)
from core.ledger.kinds import endorsement_message
from core.ledger.kinds import key_payload as endorsed_key_payload

NODE_ID = "node-1"
DOCTORS = 3
REPEATS = 3
START_MS = 1_795_000_000_000
# A consortium of one: the single delegate owns every slot (as `ensure_genesis` sets it up).
PARAMS = Params(delegates=1, slot_ms=1000, epoch_slots=60, miss_limit=3, genesis_ms=START_MS)
# Ciphertext sizes of a typical record envelope (AES-GCM body, Umbral capsule and
# wrapped key, RSA-3072 OAEP author key).
BODY_BYTES, CAPSULE_BYTES, PKEY_BYTES, AKEY_BYTES = 600, 98, 48, 384

DOCTOR = {"username": "bench.doc", "password": "bench-password-1"}
PATIENT = {"username": "bench.patient", "password": "bench-password-2", "display_name": "Bench Patient"}
COMMIT_DEADLINE = 30.0
POLL_INTERVAL = 0.5
RECORDS_PAGE = 200  # the largest page GET /records gives


@dataclass(frozen=True)
class Check:
    """One signature check: a verify callable and what it is called with."""

    verify: Callable[[bytes, bytes], None]
    signature: bytes
    message: bytes


@dataclass
class Progress:
    """Prints `done/total` to stderr about every tenth of the way."""

    what: str
    total: int
    start: float = field(default_factory=time.perf_counter)

    def update(self, done: int) -> None:
        if done == self.total or done % max(self.total // 10, 1) == 0:
            log(f"{self.what}: {done:,}/{self.total:,} ({time.perf_counter() - self.start:.1f} s)")


def best_of(runs: int, fn: Callable[[], object]) -> float:
    """The shortest wall time of `runs` calls of `fn`, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass(frozen=True)
class Timing:
    """Best wall time and best CPU time (this process) of several runs, in seconds."""

    wall: float
    cpu: float


def interleaved(runs: int, jobs: dict[str, Callable[[], object]]) -> dict[str, Timing]:
    """Run every job once per round, `runs` rounds, so that all of them see the same load; the
    best wall and CPU time of each. CPU time leaves out waiting for a core on a shared machine."""
    walls: dict[str, list[float]] = {name: [] for name in jobs}
    cpus: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(runs):
        for name, fn in jobs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            cpus[name].append(time.process_time() - cpu)
            walls[name].append(time.perf_counter() - wall)
    return {name: Timing(min(walls[name]), min(cpus[name])) for name in jobs}


# --- A. the chain, in memory ---------------------------------------------------------------


def key_payload(keys: UserKeys, home: NodeKey) -> dict[str, Any]:
    """A doctor's key registration, endorsed by its home node (the bench's single node)."""
    public = keys.public
    return endorsed_key_payload(str(uuid.uuid4()), "doctor", public.rsa_der, public.umbral, home, public.sign)


def record_payload() -> dict[str, Any]:
    return {
        "record": str(uuid.uuid4()),
        "patient": str(uuid.uuid4()),
        "ctag": os.urandom(16).hex(),
        "body": b64e(os.urandom(BODY_BYTES)),
        "capsule": b64e(os.urandom(CAPSULE_BYTES)),
        "pkey": b64e(os.urandom(PKEY_BYTES)),
        "akey": b64e(os.urandom(AKEY_BYTES)),
        "attachments": [],
    }


def slot_time(height: int) -> int:
    """Block `height`'s timestamp: the start of slot `height`, so every block has a slot of its own."""
    return PARAMS.slot_start(height)


def genesis(node: NodeKey) -> Block:
    """Block 0 of a consortium of one, as `portal.services.ledger.genesis_block` makes it (which
    is not imported here: importing `portal` before part B would create ./instance)."""
    payload = {"chain": "bench", "nodes": [{"id": NODE_ID, "key": b64e(node.public_raw)}], "params": PARAMS.to_dict()}
    tx = sign_transaction("genesis", payload, node, PARAMS.genesis_ms)
    return make_block(0, GENESIS_PREV_HASH, [tx], NODE_ID, node, PARAMS.genesis_ms)


def build_chain(blocks: int, txs_per_block: int) -> list[Block]:
    """Genesis, one block of doctor key registrations, then blocks of record transactions,
    one block per slot (with K = 1 the single node is scheduled in every slot)."""
    node = NodeKey.generate(NODE_ID)
    doctors = [generate_user_keys() for _ in range(DOCTORS)]
    chain = [genesis(node)]
    keys = [sign_transaction("key", key_payload(d, node), d, slot_time(1)) for d in doctors]
    chain.append(make_block(1, chain[0].header.hash, keys, NODE_ID, node, slot_time(1)))
    authors = itertools.cycle(doctors)
    progress = Progress("signing blocks", blocks)
    for height in range(2, blocks):
        ts = slot_time(height)
        txs = [sign_transaction("record", record_payload(), next(authors), ts) for _ in range(txs_per_block)]
        chain.append(make_block(height, chain[-1].header.hash, txs, NODE_ID, node, ts))
        progress.update(height + 1)
    return chain


def to_stored(chain: Sequence[Block]) -> list[StoredBlock]:
    return [
        StoredBlock(b.header.height, b.header.hash, b.header.encoded, [t.encoded for t in b.transactions])
        for b in chain
    ]


def transactions(chain: Sequence[Block]) -> Iterator[Transaction]:
    return (tx for block in chain for tx in block.transactions)


def ed25519_check(public_raw: bytes) -> Callable[[bytes, bytes], None]:
    return ed25519.Ed25519PublicKey.from_public_bytes(public_raw).verify


def rsa_check(public_der: bytes) -> Callable[[bytes, bytes], None]:
    key = serialization.load_der_public_key(public_der)
    assert isinstance(key, rsa.RSAPublicKey)
    return lambda signature, message: key.verify(signature, message, PSS, hashes.SHA256())


def signature_checks(chain: Sequence[Block]) -> tuple[list[Check], list[Check]]:
    """Every Ed25519 check (block headers, genesis, endorsements, transactions of accounts with an
    Ed25519 signing key) and every RSA-PSS check (transactions of accounts without one), with keys
    parsed and signed messages encoded up front so that only verification is timed."""
    node_key = b64d(chain[0].transactions[0].payload["nodes"][0]["key"])
    node_verify = ed25519_check(node_key)
    accounts: dict[str, tuple[bool, Callable[[bytes, bytes], None]]] = {}
    for tx in transactions(chain):
        if tx.kind == "key":
            rsa_der, sign = b64d(tx.payload["rsa"]), tx.payload.get("sign")
            signer = hashlib.sha256(rsa_der).hexdigest()
            accounts[signer] = (True, ed25519_check(b64d(sign))) if sign else (False, rsa_check(rsa_der))
    ed = [Check(node_verify, b.header.signature, b.header.signing_bytes()) for b in chain]
    rsa_checks = []
    for tx in transactions(chain):
        if tx.kind == "genesis":
            ed.append(Check(node_verify, tx.signature, tx.signing_bytes()))
            continue
        if tx.kind == "key":  # the home node's endorsement of the account's keys
            ed.append(Check(node_verify, b64d(tx.payload["endorsement"]), endorsement_message(tx.payload)))
        is_ed25519, verify = accounts[tx.signer]
        (ed if is_ed25519 else rsa_checks).append(Check(verify, tx.signature, tx.signing_bytes()))
    return ed, rsa_checks


def hash_all(stored: Sequence[StoredBlock]) -> None:
    for block in stored:
        hashlib.sha256(block.header).digest()
        for tx in block.transactions:
            hashlib.sha256(tx).digest()


def verify_all(checks: Sequence[Check]) -> None:
    for check in checks:
        check.verify(check.signature, check.message)


def validate(stored: Sequence[StoredBlock], verify_signatures: bool) -> None:
    report = validate_chain(stored, verify_signatures=verify_signatures)
    if not report.valid:
        raise BenchError(f"the synthetic chain does not validate: {report.describe()}")


def memory_section(chain: Sequence[Block], stored: Sequence[StoredBlock]) -> Section:
    log(f"A: validate_chain and the raw crypto floor, interleaved, {REPEATS} rounds")
    ed, rsa_checks = signature_checks(chain)
    load_before = os.getloadavg()[0]
    t = interleaved(
        REPEATS,
        {
            "validate": lambda: validate(stored, verify_signatures=True),
            "no_sigs": lambda: validate(stored, verify_signatures=False),
            "sha256": lambda: hash_all(stored),
            "ed25519": lambda: verify_all(ed),
            "rsa_pss": lambda: verify_all(rsa_checks),
        },
    )
    load_after = os.getloadavg()[0]
    floor_wall = t["sha256"].wall + t["ed25519"].wall + t["rsa_pss"].wall
    floor_cpu = t["sha256"].cpu + t["ed25519"].cpu + t["rsa_pss"].cpu
    tx_count = sum(len(b.transactions) for b in stored)
    chain_bytes = sum(len(b.header) + sum(map(len, b.transactions)) for b in stored)
    return Section(
        "memory",
        f"A. Chain verification in memory, core only (best of {REPEATS} interleaved rounds; wall / CPU time)",
        [
            Metric("blocks", "blocks", len(stored)),
            Metric("transactions", "transactions", tx_count),
            Metric("chain_mib", "header + transaction bytes", chain_bytes / 2**20, "MiB"),
            Metric("load_before", "load average (1 min) before", load_before),
            Metric("load_after", "load average (1 min) after", load_after),
            Metric("validate_s", "validate_chain, wall", t["validate"].wall, "s"),
            Metric("validate_cpu_s", "validate_chain, CPU", t["validate"].cpu, "s"),
            Metric("validate_blocks_per_s", "  blocks per second (wall)", len(stored) / t["validate"].wall, "blocks/s"),
            Metric("validate_no_signatures_s", "validate_chain(verify_signatures=False), wall", t["no_sigs"].wall, "s"),
            Metric("validate_no_signatures_cpu_s", "  the same, CPU", t["no_sigs"].cpu, "s"),
            Metric("floor_sha256_s", "floor: SHA-256 of all header and tx bytes, wall", t["sha256"].wall, "s"),
            Metric("floor_ed25519_s", f"floor: Ed25519 verify x {len(ed):,}, wall", t["ed25519"].wall, "s"),
            Metric("floor_rsa_pss_s", f"floor: RSA-PSS verify x {len(rsa_checks):,}, wall", t["rsa_pss"].wall, "s"),
            Metric("floor_s", "floor: total, wall", floor_wall, "s"),
            Metric("floor_cpu_s", "floor: total, CPU", floor_cpu, "s"),
            Metric("validate_over_floor", "RATIO validate_chain / floor, wall", t["validate"].wall / floor_wall, "x"),
            Metric("validate_over_floor_cpu", "RATIO validate_chain / floor, CPU", t["validate"].cpu / floor_cpu, "x"),
        ],
    )


# --- B. the chain, through the database -----------------------------------------------------


def database_section(chain: Sequence[Block], workdir: Path) -> Section:
    """Store the chain as portal rows in a SQLite file and time `verify_chain()` over it."""
    # portal.config reads MEDLEDGER_INSTANCE when first imported, so point it at the scratch
    # folder before importing anything from portal (else it creates ./instance).
    os.environ["MEDLEDGER_INSTANCE"] = str(workdir)
    from sqlalchemy import insert

    from portal import create_app
    from portal.config import TestConfig
    from portal.extensions import db
    from portal.models import LedgerBlock, LedgerTransaction, utcnow
    from portal.services.ledger import verify_chain

    class BenchConfig(TestConfig):
        SQLALCHEMY_DATABASE_URI = f"sqlite:///{workdir / 'bench.db'}"
        NODE_KEY_PATH = str(workdir / "node.key")
        LOG_LEVEL = "WARNING"

    def check() -> None:
        report = verify_chain()
        if not report.valid:
            raise BenchError(f"the stored chain does not verify: {report.describe()}")

    app = create_app(BenchConfig)
    with app.app_context():
        db.create_all()
        now = utcnow()
        log("B: inserting rows")
        start = time.perf_counter()
        db.session.execute(
            insert(LedgerBlock),
            [
                {"height": b.header.height, "hash": b.header.hash, "header": b.header.encoded, "created_at": now}
                for b in chain
            ],
        )
        db.session.execute(
            insert(LedgerTransaction),
            [
                {
                    "hash": tx.hash,
                    "kind": tx.kind,
                    "encoded": tx.encoded,
                    "status": "committed",
                    "block_height": b.header.height,
                    "position": position,
                    "received_at": now,
                }
                for b in chain
                for position, tx in enumerate(b.transactions)
            ],
        )
        db.session.commit()
        inserted = time.perf_counter() - start
        log("B: verify_chain through the database")
        verify = best_of(REPEATS, check)
        db.session.remove()
        db.engine.dispose()
    return Section(
        "database",
        f"B. Chain verification through SQLite, portal.services.ledger.verify_chain (best of {REPEATS})",
        [
            Metric("insert_s", "insert blocks and transactions (not part of verify)", inserted, "s"),
            Metric("verify_chain_s", "verify_chain()", verify, "s"),
            Metric("verify_chain_blocks_per_s", "  blocks per second", len(chain) / verify, "blocks/s"),
        ],
    )


# --- C. record uploads over HTTP -------------------------------------------------------------


def create_accounts(base: str, env: dict[str, str]) -> tuple[str, str]:
    """A doctor (CLI) and a patient (API); returns the doctor's token and the patient's id."""
    create_doctor(env, DOCTOR["username"], DOCTOR["password"])
    patient_id = register_patient(base, PATIENT)
    return sign_in(base, DOCTOR["username"], DOCTOR["password"]), patient_id


def upload_records(url: str, token: str, count: int, clients: int) -> tuple[list[Call], float]:
    """`count` record uploads from `clients` client threads, after WARMUP untimed ones."""
    warm_up(token, upload_jobs(url, range(WARMUP)))
    uploads, wall = run_clients(token, upload_jobs(url, range(count)), clients)
    require_all(uploads, count, "uploads")
    return uploads, wall


def all_records(session: requests.Session, base: str) -> list[dict[str, Any]]:
    """Every record GET /records lists, following its pages."""
    records: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        params = {"limit": RECORDS_PAGE, "offset": offset}
        page = api(session, "GET", f"{base}/api/v1/records", 200, params=params)
        records += page["records"]
        offset = page["next_offset"]
    return records


def wait_for_blocks(base: str, token: str, record_ids: set[str]) -> tuple[float, int]:
    """Poll GET /records until every uploaded record has a block; returns (seconds, blocks used)."""
    start = time.perf_counter()
    deadline = time.monotonic() + COMMIT_DEADLINE
    with bearer_session(token) as session:
        while True:
            listed = all_records(session, base)
            heights = {r["id"]: r["block_height"] for r in listed if r["id"] in record_ids}
            if len(heights) == len(record_ids) and None not in heights.values():
                return time.perf_counter() - start, len(set(heights.values()))
            if time.monotonic() > deadline:
                committed = sum(h is not None for h in heights.values())
                raise BenchError(f"only {committed}/{len(record_ids)} records in blocks after {COMMIT_DEADLINE:.0f} s")
            time.sleep(POLL_INTERVAL)


def verify_over_http(base: str) -> tuple[float, int]:
    with requests.Session() as session:
        start = time.perf_counter()
        report = api(session, "GET", f"{base}/api/v1/chain/verify", 200)
        elapsed = time.perf_counter() - start
    if not report.get("valid"):
        raise BenchError(f"GET /chain/verify says the chain is invalid: {report}")
    return elapsed, report["blocks"]


def http_section(uploads: int, clients: int, workdir: Path) -> Section:
    env = node_env(workdir, free_port())
    log("C: preparing the node (db upgrade, node init)")
    prepare_node(env)
    with gunicorn(env, workdir / "gunicorn.log") as base:
        log(f"C: gunicorn up at {base}; creating accounts")
        token, patient_id = create_accounts(base, env)
        url = f"{base}/api/v1/patients/{patient_id}/records"
        log(f"C: {WARMUP} warm-up uploads, then {uploads} timed uploads with {clients} client threads")
        done, wall = upload_records(url, token, uploads, clients)
        log("C: waiting for the records to be sealed into blocks")
        commit, blocks_used = wait_for_blocks(base, token, {u.body["id"] for u in done})
        verify, chain_blocks = verify_over_http(base)
    latencies = [u.latency * 1000 for u in done]
    return Section(
        "http",
        f"C. Record uploads over HTTP (gunicorn, 2 workers x 4 threads, {clients} client threads)",
        [
            Metric("uploads", f"uploads after {WARMUP} warm-up ones (all answered 201)", len(done)),
            Metric("uploads_wall_s", "wall time", wall, "s"),
            Metric("uploads_per_s", "uploads per second", len(done) / wall, "uploads/s"),
            Metric("latency_p50_ms", "latency p50", percentile(latencies, 50), "ms"),
            Metric("latency_p95_ms", "latency p95", percentile(latencies, 95), "ms"),
            Metric("latency_max_ms", "latency max", max(latencies), "ms"),
            Metric("commit_s", f"last upload -> all in blocks (polled every {POLL_INTERVAL} s)", commit, "s"),
            Metric("commit_blocks", "blocks holding the uploads", blocks_used),
            Metric("http_verify_s", f"GET /chain/verify ({chain_blocks} blocks, valid)", verify, "s"),
        ],
    )


# --- output and main --------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=10_000, help="chain length, genesis included (default 10000)")
    parser.add_argument("--txs-per-block", type=int, default=1, help="record transactions per block (default 1)")
    parser.add_argument("--uploads", type=int, default=200, help="records to POST over HTTP (default 200)")
    parser.add_argument(
        "--clients", type=int, default=CLIENTS, help=f"client threads uploading at once (default {CLIENTS})"
    )
    parser.add_argument("--skip-http", action="store_true", help="skip part C (gunicorn and HTTP uploads)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    if args.blocks < 3 or args.txs_per_block < 1 or args.uploads < 2 or args.clients < 1:
        parser.error("need --blocks >= 3, --txs-per-block >= 1, --uploads >= 2 and --clients >= 1")
    return args


def main() -> int:
    args = parse_args()
    params = {
        "blocks": args.blocks,
        "txs_per_block": args.txs_per_block,
        "uploads": None if args.skip_http else args.uploads,
        "clients": None if args.skip_http else args.clients,
        **machine(),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="medledger-bench-") as tmp:
            chain = build_chain(args.blocks, args.txs_per_block)
            stored = to_stored(chain)
            sections = [memory_section(chain, stored), database_section(chain, Path(tmp) / "app")]
            if not args.skip_http:
                sections.append(http_section(args.uploads, args.clients, Path(tmp) / "node"))
    except FAILURES as exc:
        log(f"benchmark failed: {exc}")
        return 1
    if args.json:
        results = {"params": params, **{s.key: {m.key: m.value for m in s.metrics} for s in sections}}
        print(json.dumps(results, indent=2))
    else:
        print_table(f"MedLedger ledger benchmark ({', '.join(f'{k} {v}' for k, v in params.items())})", sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
