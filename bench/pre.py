"""MedLedger proxy re-encryption benchmark.

A. In process: MedLedger's grant, re-encryption and opening calls (core.pre, core.crypto) next
   to the raw umbral-pre calls they wrap, interleaved in the same loop, and the other costs on
   a read's path (unlocking the reader's keys, signing the access transaction).
B. Over HTTP against a real gunicorn node on 127.0.0.1: reads by a doctor under a grant (the
   proxy re-encrypts, the read is logged) next to the patient's own reads (no proxy, no log) and
   the author's (no proxy, logged); grant creation; the patient's access log.

    cd /work/main && .venv/bin/python bench/pre.py [--iterations K] [--records N] [--reads M]
        [--grants G] [--skip-http] [--json]

Progress goes to stderr; the results table (or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so that `core` and `bench` import

import requests
import umbral_pre as umbral
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.harness import (
    CLIENTS,
    FAILURES,
    NOTES,
    WARMUP,
    BenchError,
    Call,
    Job,
    api,
    bearer_session,
    create_doctor,
    free_port,
    gunicorn,
    load_average,
    log,
    machine,
    node_env,
    percentile,
    prepare_node,
    register_patient,
    require_all,
    run_clients,
    sign_in,
    timed,
    upload_jobs,
    warm_up,
)
from core.crypto import (
    Envelope,
    PublicKeys,
    UserKeys,
    aead,
    generate_user_keys,
    open_as_author,
    open_as_patient,
    open_user_keys,
    seal,
    seal_user_keys,
)
from core.crypto.aead import NONCE_BYTES as NONCE
from core.encoding import b64e
from core.ledger import Transaction, decode_transaction, sign_transaction
from core.pre import Threshold, make_key_fragments, open_reencrypted, reencrypt

TS = 1_795_000_000_000
BODY = (NOTES + " ")[:600].encode()  # a record body of about 600 bytes
BODY_AAD = b"medledger/record/v1\n" + str(uuid.uuid4()).encode()
KEYS_AAD = b"medledger/private-keys/v1\nbench"

PASSWORD = "bench-password-1"
AUTHOR, READER = "pre.author", "pre.reader"
PATIENT = {"username": "pre.patient", "password": PASSWORD, "display_name": "Bench Patient"}
ALONE = 30  # reads per reader from a single client, for the latency without queueing
CLI_PARALLEL = 4  # `flask create-user` processes at once (about 2-3 s each, mostly start-up)


# --- statistics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Latencies in milliseconds."""

    samples: tuple[float, ...]

    @classmethod
    def of_seconds(cls, seconds: Sequence[float]) -> Stats:
        return cls(tuple(s * 1000 for s in seconds))

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    def as_dict(self) -> dict[str, float]:
        return {
            "n": len(self.samples),
            "mean_ms": self.mean,
            "p50_ms": self.p50,
            "p95_ms": self.p95,
            "max_ms": max(self.samples),
        }


def interleaved(iterations: int, *calls: Callable[[], object]) -> list[Stats]:
    """Time each call `iterations` times, taking turns, so that they share the machine's load;
    one untimed round first."""
    for call in calls:
        call()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(iterations):
        for call, out in zip(calls, samples, strict=True):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
    return [Stats.of_seconds(s) for s in samples]


# --- A. in process --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One operation: MedLedger's call and, where there is one, the raw umbral-pre call it wraps.
    `parts` are the other raw steps ours also takes (fragment checks, parsing), each shown on a
    row of its own; the raw call and its parts together are ours' floor."""

    key: str
    label: str
    ours: Stats | None
    raw: Stats | None = None
    parts: tuple[Stats, ...] = ()

    @property
    def ratio(self) -> float | None:
        return self.ours.mean / self.raw.mean if self.ours and self.raw else None

    @property
    def ratio_p50(self) -> float | None:
        return self.ours.p50 / self.raw.p50 if self.ours and self.raw else None

    @property
    def over_floor_p50(self) -> float | None:
        if not (self.ours and self.raw and self.parts):
            return None
        return self.ours.p50 / (self.raw.p50 + sum(p.p50 for p in self.parts))

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label.strip(),
            "ours": self.ours.as_dict() if self.ours else None,
            "raw": self.raw.as_dict() if self.raw else None,
            "ours_over_raw_mean": self.ratio,
            "ours_over_raw_p50": self.ratio_p50,
            "ours_over_floor_p50": self.over_floor_p50,
        }


Part = tuple[str, str, Callable[[], object]]  # key, label, the raw step


def compare(
    iterations: int, key: str, label: str, ours: Callable[[], object], raw: Callable[[], object], parts: Sequence[Part]
) -> list[Row]:
    """Ours, the raw call and the raw parts, interleaved: the operation's row, then a row per part."""
    ours_t, raw_t, *part_t = interleaved(iterations, ours, raw, *(step for _, _, step in parts))
    rows = [Row(key, label, ours_t, raw_t, tuple(part_t))]
    return rows + [Row(k, f"  {lab}", None, t) for (k, lab, _), t in zip(parts, part_t, strict=True)]


@dataclass(frozen=True)
class Fixture:
    """A patient, a doctor granted access and a record sealed for the patient by an author, as
    bytes (what MedLedger's calls take) and as umbral-pre objects (what the raw calls take)."""

    patient: UserKeys
    doctor: UserKeys
    author: UserKeys
    patient_public: PublicKeys
    author_public: PublicKeys
    patient_pk: umbral.PublicKey
    doctor_pk: umbral.PublicKey
    signer: umbral.Signer
    envelope: Envelope
    capsule: umbral.Capsule
    kfrag: bytes
    verified_kfrag: umbral.VerifiedKeyFrag
    verified_kfrags: list[umbral.VerifiedKeyFrag]  # three, for timing their serialisation
    cfrag: bytes
    verified_cfrag: umbral.VerifiedCapsuleFrag
    record_tx: Transaction
    sealed_keys: bytes
    user_key: bytes
    data_key: bytes


def make_fixture() -> Fixture:
    patient, doctor, author = generate_user_keys(), generate_user_keys(), generate_user_keys()
    patient_pk, doctor_pk = patient.umbral_secret.public_key(), doctor.umbral_secret.public_key()
    envelope, _ = seal(BODY, BODY_AAD, patient.public, author.public)
    capsule = umbral.Capsule.from_bytes(envelope.capsule)
    signer = umbral.Signer(patient.umbral_secret)
    verified_kfrags = umbral.generate_kfrags(patient.umbral_secret, doctor_pk, signer, 1, 3, True, True)
    verified_kfrag = verified_kfrags[0]
    verified_cfrag = umbral.reencrypt(capsule, verified_kfrag)
    record = {"record": str(uuid.uuid4()), "body": b64e(envelope.body), "capsule": b64e(envelope.capsule)}
    record |= {"pkey": b64e(envelope.patient_key), "akey": b64e(envelope.author_key), "attachments": []}
    user_key = aead.random_key()
    return Fixture(
        patient=patient,
        doctor=doctor,
        author=author,
        patient_public=patient.public,
        author_public=author.public,
        patient_pk=patient_pk,
        doctor_pk=doctor_pk,
        signer=signer,
        envelope=envelope,
        capsule=capsule,
        kfrag=bytes(verified_kfrag),
        verified_kfrag=verified_kfrag,
        verified_kfrags=verified_kfrags,
        cfrag=bytes(verified_cfrag),
        verified_cfrag=verified_cfrag,
        record_tx=sign_transaction("record", record, author, TS),
        sealed_keys=seal_user_keys(doctor, user_key, KEYS_AAD),
        user_key=user_key,
        data_key=umbral.decrypt_original(patient.umbral_secret, capsule, envelope.patient_key),
    )


def grant_rows(f: Fixture, iterations: int) -> list[Row]:
    receiver = f.doctor.public.umbral
    secret = f.patient.umbral_secret
    rows = []
    for m, n in ((1, 1), (2, 3)):
        rows += compare(
            iterations,
            f"grant_{m}_of_{n}",
            f"grant {m}-of-{n}: make_key_fragments | generate_kfrags",
            lambda m=m, n=n: make_key_fragments(f.patient, receiver, Threshold(m, n)),
            lambda m=m, n=n: umbral.generate_kfrags(secret, f.doctor_pk, f.signer, m, n, True, True),
            [
                (
                    f"grant_{m}_of_{n}_setup",
                    "raw Signer(secret) + PublicKey parse + bytes()",
                    lambda n=n: (
                        umbral.Signer(secret),
                        umbral.PublicKey.from_compressed_bytes(receiver),
                        [bytes(k) for k in f.verified_kfrags[:n]],
                    ),
                ),
            ],
        )
    return rows


def reencrypt_rows(f: Fixture, iterations: int) -> list[Row]:
    patient, receiver = f.patient.public.umbral, f.doctor.public.umbral
    kfrag = umbral.KeyFrag.from_bytes(f.kfrag)

    def parse_others() -> object:
        keys = umbral.PublicKey.from_compressed_bytes(patient), umbral.PublicKey.from_compressed_bytes(receiver)
        return umbral.KeyFrag.from_bytes(f.kfrag), keys, bytes(f.verified_cfrag)

    return compare(
        iterations,
        "reencrypt",
        "re-encrypt: core.pre.reencrypt | umbral.reencrypt",
        lambda: reencrypt(f.envelope.capsule, f.kfrag, patient, receiver),
        lambda: umbral.reencrypt(f.capsule, f.verified_kfrag),
        [
            (
                "kfrag_verify",
                "raw kfrag verify (KeyFrag.verify)",
                lambda: kfrag.verify(f.patient_pk, f.patient_pk, f.doctor_pk),
            ),
            (
                "reencrypt_capsule_parse",
                "raw Capsule.from_bytes",
                lambda: umbral.Capsule.from_bytes(f.envelope.capsule),
            ),
            ("reencrypt_other_parse", "raw KeyFrag + 2 PublicKey parse, bytes(cfrag)", parse_others),
        ],
    )


def open_rows(f: Fixture, iterations: int) -> list[Row]:
    patient = f.patient.public.umbral
    secret = f.doctor.umbral_secret
    cfrag = umbral.CapsuleFrag.from_bytes(f.cfrag)
    body = f.envelope.body

    def ours() -> bytes:
        return open_reencrypted(f.envelope, secret, patient, [f.cfrag]).open(body, BODY_AAD)

    def parse_others() -> object:
        keys = umbral.PublicKey.from_compressed_bytes(patient), secret.public_key()
        plain = AESGCM(f.data_key).decrypt(body[:NONCE], body[NONCE:], BODY_AAD)
        return umbral.CapsuleFrag.from_bytes(f.cfrag), keys, plain

    return compare(
        iterations,
        "open_reencrypted",
        "open: open_reencrypted + DataKey.open | decrypt_reencrypted",
        ours,
        lambda: umbral.decrypt_reencrypted(secret, f.patient_pk, f.capsule, [f.verified_cfrag], f.envelope.patient_key),
        [
            (
                "cfrag_verify",
                "raw cfrag verify (CapsuleFrag.verify)",
                lambda: cfrag.verify(f.capsule, f.patient_pk, f.patient_pk, f.doctor_pk),
            ),
            ("open_capsule_parse", "raw Capsule.from_bytes", lambda: umbral.Capsule.from_bytes(f.envelope.capsule)),
            ("open_other_parse", "raw CapsuleFrag + PublicKey parse, public_key(), AES-GCM body", parse_others),
        ],
    )


def context_rows(f: Fixture, iterations: int) -> list[Row]:
    """The patient's and the author's own ways in, and the rest of a read's path."""
    access = {"entry": str(uuid.uuid4()), "record": str(uuid.uuid4()), "part": -1, "mode": "grant"}
    access["grant"] = str(uuid.uuid4())
    timings = interleaved(
        iterations,
        lambda: seal(BODY, BODY_AAD, f.patient_public, f.author_public),
        lambda: open_as_patient(f.envelope, f.patient).open(f.envelope.body, BODY_AAD),
        lambda: open_as_author(f.envelope, f.author).open(f.envelope.body, BODY_AAD),
        lambda: open_user_keys(f.sealed_keys, f.user_key, KEYS_AAD),
        lambda: sign_transaction("access", access, f.doctor, TS),
        lambda: decode_transaction(f.record_tx.encoded),
    )
    labels = [
        ("seal", "seal a record (core.crypto.seal, 600 B body)"),
        ("open_as_patient", "open as patient (open_as_patient + DataKey.open)"),
        ("open_as_author", "open as author (open_as_author + DataKey.open)"),
        ("unlock_keys", "read path: unlock the reader's keys (open_user_keys)"),
        ("sign_access_tx", "read path: sign the access transaction (RSA-PSS-3072)"),
        ("decode_record_tx", "read path: decode the record's transaction"),
    ]
    return [Row(key, label, stats) for (key, label), stats in zip(labels, timings, strict=True)]


def core_rows(iterations: int) -> list[Row]:
    log("A: generating keys")
    fixture = make_fixture()
    rows = []
    for name, part in (
        ("grants", grant_rows),
        ("re-encryption", reencrypt_rows),
        ("opening", open_rows),
        ("context", context_rows),
    ):
        log(f"A: {name} ({iterations} iterations)")
        rows += part(fixture, iterations)
    return rows


def crypto_per_read(rows: Sequence[Row]) -> dict[str, float]:
    """The in-process cost of the crypto each kind of read does: the sum of part A's p50s, in ms."""
    p50 = {r.key: r.ours.p50 for r in rows if r.ours}
    common = p50["unlock_keys"] + p50["decode_record_tx"]
    return {
        "grant": common + p50["reencrypt"] + p50["open_reencrypted"] + p50["sign_access_tx"],
        "patient": common + p50["open_as_patient"],
        "author": common + p50["open_as_author"] + p50["sign_access_tx"],
    }


# --- B. over HTTP ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reads:
    who: str
    mode: str  # the access mode the reads answered: grant, patient or author
    stats: Stats
    wall: float
    alone: Stats | None = None  # ALONE reads from one client, before the timed ones

    @property
    def per_second(self) -> float:
        return len(self.stats.samples) / self.wall

    def as_dict(self) -> dict[str, Any]:
        alone = self.alone.as_dict() if self.alone else None
        return {"wall_s": self.wall, "reads_per_s": self.per_second, **self.stats.as_dict(), "one_client": alone}

    def __add__(self, other: Reads) -> Reads:
        return Reads(self.who, self.mode, Stats(self.stats.samples + other.stats.samples), self.wall + other.wall)


@dataclass(frozen=True)
class AccessLog:
    latency_ms: float
    returned: Counter[str]
    stored: Counter[str]
    expected: Counter[str]
    access_txs: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "get_ms": self.latency_ms,
            "returned": dict(self.returned),
            "stored": dict(self.stored),
            "expected": dict(self.expected),
            "access_transactions": self.access_txs,
        }


@dataclass(frozen=True)
class HttpResults:
    records: int
    upload_wall: float
    reads: list[Reads]
    grants: Stats
    access_log: AccessLog
    load: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "upload_wall_s": self.upload_wall,
            "reads": {r.mode: r.as_dict() for r in self.reads},
            "grant_create": self.grants.as_dict(),
            "access_log": self.access_log.as_dict(),
            "load_average_after": self.load,
        }


@dataclass(frozen=True)
class Doctors:
    author: str
    reader: str
    grantees: list[str]


def create_doctors(env: dict[str, str], grantees: int) -> Doctors:
    """The author, the reader and `grantees` fresh doctors, with the CLI, a few at a time."""
    names = [AUTHOR, READER, *(f"pre.grantee{n}" for n in range(grantees))]
    with ThreadPoolExecutor(CLI_PARALLEL) as pool:
        ids = list(pool.map(lambda name: create_doctor(env, name, PASSWORD), names))
    return Doctors(author=ids[0], reader=ids[1], grantees=ids[2:])


def expect_access(call: Call, access: dict[str, Any]) -> Call:
    if call.error or call.body.get("access") == access:
        return call
    return replace(call, error=f"answered access {call.body.get('access')!r}, expected {access!r}")


def read_jobs(base: str, record_ids: Sequence[str], count: int, access: dict[str, Any]) -> list[Job]:
    """`count` reads of the records in turn, each checked for 200 and the `access` it answers."""

    def job(record_id: str) -> Job:
        url = f"{base}/api/v1/records/{record_id}"
        return lambda session: expect_access(timed(session, "GET", url, 200), access)

    return [job(record_ids[n % len(record_ids)]) for n in range(count)]


def timed_reads(who: str, token: str, jobs: Sequence[Job], mode: str) -> Reads:
    log(f"B: {len(jobs)} reads by the {who} with {CLIENTS} client threads")
    calls, wall = run_clients(token, jobs)
    require_all(calls, len(jobs), f"reads by the {who}")
    return Reads(who, mode, Stats.of_seconds([c.latency for c in calls]), wall)


Reader = tuple[str, str, dict[str, Any]]  # who, token, the access their reads answer


def one_client(base: str, record_ids: Sequence[str], reader: Reader) -> Stats:
    who, token, access = reader
    log(f"B: {ALONE} reads by the {who} from one client")
    calls, _ = run_clients(token, read_jobs(base, record_ids, ALONE, access), clients=1)
    require_all(calls, ALONE, f"reads by the {who}")
    return Stats.of_seconds([c.latency for c in calls])


def timed_rounds(base: str, record_ids: Sequence[str], reads: int, readers: Sequence[Reader]) -> list[Reads]:
    """Each reader's ALONE reads from one client, then their timed reads from CLIENTS threads in two
    halves, in the order A B C C B A, so that a drift in the machine's load (other work on it)
    weighs on every reader alike."""
    alone = [one_client(base, record_ids, r) for r in readers]
    halves = (reads // 2, reads - reads // 2)
    first = [timed_reads(w, t, read_jobs(base, record_ids, halves[0], a), a["mode"]) for w, t, a in readers]
    second = [timed_reads(w, t, read_jobs(base, record_ids, halves[1], a), a["mode"]) for w, t, a in readers[::-1]]
    return [replace(a + b, alone=one) for a, b, one in zip(first, second[::-1], alone, strict=True)]


def write_records(base: str, patient_id: str, token: str, count: int) -> tuple[list[str], float]:
    """WARMUP untimed uploads (one per new connection, to load the HPO ontology in the workers),
    then `count` from CLIENTS threads; returns every record id and the timed uploads' wall time."""
    url = f"{base}/api/v1/patients/{patient_id}/records"
    warm = warm_up(token, upload_jobs(url, range(WARMUP)))
    calls, wall = run_clients(token, upload_jobs(url, range(count)))
    require_all(calls, count, "uploads")
    return [c.body["id"] for c in warm + calls], wall


def grant(session: requests.Session, base: str, doctor_id: str) -> Call:
    return timed(session, "POST", f"{base}/api/v1/grants", 201, json={"doctor_id": doctor_id})


def time_grants(base: str, token: str, doctor_ids: Sequence[str]) -> Stats:
    """POST /grants to each doctor, one after the other from one client."""
    log(f"B: {len(doctor_ids)} grants to fresh doctors")
    jobs: list[Job] = [lambda session, d=d: grant(session, base, d) for d in doctor_ids]
    calls, _ = run_clients(token, jobs, clients=1)
    require_all(calls, len(jobs), "grants")
    return Stats.of_seconds([c.latency for c in calls])


def stored_access(db_path: Path) -> tuple[Counter[str], int]:
    """Access entries in the node's database by reader public id and mode, and `access`
    transactions in its ledger (pool and blocks), read directly from the SQLite file."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT u.public_id, e.mode, COUNT(*) FROM access_entries e JOIN users u ON u.id = e.reader_id "
            "GROUP BY u.public_id, e.mode"
        ).fetchall()
        (txs,) = con.execute("SELECT COUNT(*) FROM ledger_transactions WHERE kind = 'access'").fetchone()
    return Counter({f"{reader}/{mode}": count for reader, mode, count in rows}), txs


def check_access_log(base: str, token: str, db_path: Path, expected: Counter[str]) -> AccessLog:
    """The patient's GET /access-log, and the entries the node stored, against the reads made."""
    with bearer_session(token) as session:
        start = time.perf_counter()
        entries = api(session, "GET", f"{base}/api/v1/access-log", 200)["entries"]
        latency = (time.perf_counter() - start) * 1000
    returned = Counter(f"{e['reader']['id']}/{e['mode']}" for e in entries)
    stored, txs = stored_access(db_path)
    if stored != expected or txs != expected.total():
        raise BenchError(f"the node stored access entries {dict(stored)} and {txs} access transactions; "
                         f"expected {dict(expected)}")  # fmt: skip
    if returned - expected:
        raise BenchError(f"GET /access-log lists reads that were not made: {dict(returned - expected)}")
    return AccessLog(latency, returned, stored, expected, txs)


def run_http(records: int, reads: int, grantees: int, workdir: Path) -> HttpResults:
    env = node_env(workdir, free_port())
    log("B: preparing the node (db upgrade, node init) and creating the doctors with the CLI")
    prepare_node(env)
    doctors = create_doctors(env, grantees)
    with gunicorn(env, workdir / "gunicorn.log") as base:
        log(f"B: gunicorn up at {base}; patient, tokens, {WARMUP} warm-up and {records} timed uploads")
        patient_id = register_patient(base, PATIENT)
        patient, author, reader = (sign_in(base, name, PASSWORD) for name in (PATIENT["username"], AUTHOR, READER))
        record_ids, upload_wall = write_records(base, patient_id, author, records)
        with bearer_session(patient) as session:
            grant_id = api(session, "POST", f"{base}/api/v1/grants", 201, json={"doctor_id": doctors.reader})["id"]
        readers: list[Reader] = [
            ("doctor under a grant", reader, {"mode": "grant", "grant": grant_id}),
            ("patient", patient, {"mode": "patient", "grant": None}),
            ("author", author, {"mode": "author", "grant": None}),
        ]
        for _, token, access in readers:  # a worker's first read of each kind fills its caches
            warm_up(token, read_jobs(base, record_ids, WARMUP, access))
        results = timed_rounds(base, record_ids, reads, readers)
        grants = time_grants(base, patient, doctors.grantees)
        logged = WARMUP + ALONE + reads
        expected = Counter({f"{doctors.reader}/grant": logged, f"{doctors.author}/author": logged})
        access_log = check_access_log(base, patient, workdir / "medledger.db", expected)
    return HttpResults(records, upload_wall, results, grants, access_log, load_average())


# --- output and main --------------------------------------------------------------------------


def ms(value: float | None, width: int = 7) -> str:
    return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"


def stats_cells(stats: Stats | None) -> str:
    return " ".join(ms(v) for v in ((stats.mean, stats.p50, stats.p95) if stats else (None, None, None)))


def ratio(value: float | None) -> str:
    return f"{value:>8.2f}x" if value is not None else f"{'':>9}"


def print_core(rows: Sequence[Row], iterations: int) -> None:
    width = max(len(r.label) for r in rows) + 2
    columns = " ".join(f"{h:>7}" for h in ("mean", "p50", "p95"))
    ratios = f"{'mean':>9} {'p50':>9} {'p50':>9}"
    print(f"\nA. In process, {iterations} iterations each, MedLedger's call and the raw call taking turns (ms)")
    print(f"  {'':<{width}}{'MedLedger (ours)':^23}  {'raw umbral-pre':^23}  {'ours/raw':^19} {'ours/floor':>10}")
    print(f"  {'operation: ours | raw':<{width}}{columns}  {columns}  {ratios}")
    for r in rows:
        cells = f"{stats_cells(r.ours)}  {stats_cells(r.raw)}  {ratio(r.ratio)} {ratio(r.ratio_p50)} "
        print(f"  {r.label:<{width}}{cells}{ratio(r.over_floor_p50)}".rstrip())
    print("  floor = the raw call + the raw steps indented under it, which ours takes too (sum of p50s)")


def print_http(http: HttpResults, crypto: dict[str, float], reads: int) -> None:
    print(
        f"\nB. Over HTTP: gunicorn 2 workers x 4 threads on 127.0.0.1, {CLIENTS} client threads, "
        f"{http.records} records (+{WARMUP} warm-up); per reader {WARMUP} warm-up reads, {ALONE} from 1 client,"
        f"\n   then {reads} from {CLIENTS} clients in two halves: grant, patient, author, author, patient, grant (ms)"
    )
    print(f"  {'':<24}{f'{CLIENTS} clients':^40}  {'1 client':^15}")
    columns = "".join(f"{h:>8}" for h in ("reads/s", "mean", "p50", "p95", "max"))
    print(f"  {'reader':<24}{columns}  {'p50':>7} {'mean':>7}  crypto p50 (A)")
    for r in http.reads:
        s = r.stats
        row = f"{r.per_second:>8.1f}{ms(s.mean, 8)}{ms(s.p50, 8)}{ms(s.p95, 8)}{ms(max(s.samples), 8)}"
        one = f"{ms(r.alone.p50)} {ms(r.alone.mean)}" if r.alone else ""
        print(f"  {r.who:<24}{row}  {one}  {crypto[r.mode]:>14.2f}")
    g = http.grants
    spread = f"mean {g.mean:.1f}, p50 {g.p50:.1f}, p95 {g.p95:.1f}, max {max(g.samples):.1f} ms"
    print(f"  POST /grants to {len(g.samples)} fresh doctors, one at a time: {spread}")
    log_ = http.access_log
    shown, logged = log_.returned.total(), log_.expected.total()
    cut = " (truncated: the answer has no paging)" if shown < logged else ""
    print(f"  GET /access-log as the patient: {log_.latency_ms:.0f} ms, {shown} of {logged} logged reads{cut}")
    by_reader = " + ".join(str(n) for n in log_.expected.values())
    print(f"  access entries stored = reads made under the grant + by the author: {by_reader}; "
          f"access transactions: {log_.access_txs}")  # fmt: skip
    print(f"  {http.records} timed uploads: {http.upload_wall:.2f} s; load average after: {http.load}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300, help="iterations per in-process call (default 300)")
    parser.add_argument("--records", type=int, default=50, help="records the author writes over HTTP (default 50)")
    parser.add_argument("--reads", type=int, default=200, help="timed reads per reader over HTTP (default 200)")
    parser.add_argument("--grants", type=int, default=20, help="grants to fresh doctors over HTTP (default 20)")
    parser.add_argument("--skip-http", action="store_true", help="skip part B (gunicorn and HTTP)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    if args.iterations < 2 or args.records < 1 or args.reads < 2 or args.grants < 2:
        parser.error("need --iterations >= 2, --records >= 1, --reads >= 2 and --grants >= 2")
    return args


def main() -> int:
    args = parse_args()
    params = {
        "iterations": args.iterations,
        "records": None if args.skip_http else args.records,
        "reads": None if args.skip_http else args.reads,
        "grants": None if args.skip_http else args.grants,
        **machine(),
    }
    try:
        rows = core_rows(args.iterations)
        http = None
        if not args.skip_http:
            with tempfile.TemporaryDirectory(prefix="medledger-bench-") as tmp:
                http = run_http(args.records, args.reads, args.grants, Path(tmp) / "node")
    except FAILURES as exc:
        log(f"benchmark failed: {exc}")
        return 1
    crypto = crypto_per_read(rows)
    if args.json:
        results = {
            "params": params,
            "core": {r.key: r.as_dict() for r in rows},
            "crypto_per_read_p50_ms": crypto,
            "http": http.as_dict() if http else None,
        }
        print(json.dumps(results, indent=2))
        return 0
    print(f"MedLedger proxy re-encryption benchmark ({', '.join(f'{k} {v}' for k, v in params.items())})")
    print_core(rows, args.iterations)
    if http:
        print_http(http, crypto, args.reads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
