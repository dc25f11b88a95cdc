"""MedLedger server time of one read: the app in process, no network, one request at a time.

What the node itself spends on a request, from the WSGI call to the last byte of the answer
(Flask's test client), on a SQLite file in WAL mode as `make run` uses, or on PostgreSQL:
- a patient's own read (`GET /api/v1/records/<id>`: Umbral unwrap, not logged);
- a doctor's read under a grant (proxy re-encryption on this node, access entry signed, logged);
- the author's read (RSA-OAEP unwrap, logged);
- the patient's list of 200 records in one request (`GET /api/v1/records?limit=200`).
The kinds are taken in turns in one loop, so all see the same load. Each row gives p50/p95 and the
SQL statements the request issued (counted on the engine); the issue's targets are printed beside.

    cd /work/main && .venv/bin/python bench/reads.py [--reads 200] [--records 200] [--postgres URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so that `core` and `portal` import

from sqlalchemy import create_engine, event, text

from bench.harness import log, machine, percentile
from portal import create_app, runtime
from portal.config import TestConfig
from portal.extensions import db
from portal.models import utcnow
from portal.services import accounts, ledger

PASSWORD = "bench-password-1"
RECORD = {
    "title": "Asthma review", "category": "respiratory", "diagnoses": ["J45.909"], "symptoms": ["HP:0002094"],
    "notes": "Wheeze on exertion.\nPeak flow 420 L/min. " + "x" * 400,
    "prescriptions": [{"drug": "Salbutamol", "dose": "100 mcg", "frequency": "as needed", "duration": "30 days"}],
}  # fmt: skip
TARGETS = {"own read": 5.0, "granted read": 10.0, "list of 200": 100.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=200, help="timed requests of each kind")
    parser.add_argument("--records", type=int, default=200, help="records of the patient")
    parser.add_argument("--postgres", help="a PostgreSQL server URL: a fresh database is made on it and dropped")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *args: Any) -> None:
        self.count += 1


def run(workdir: Path, database: str, reads: int, records: int) -> dict[str, dict[str, float]]:
    class Config(TestConfig):
        SQLALCHEMY_DATABASE_URI = database
        NODE_KEY_PATH = str(workdir / "node.key")
        EMERGENCY_KEY_PATH = str(workdir / "emergency.key")
        RATELIMIT_ENABLED = False

    app = create_app(Config)
    with app.app_context():
        db.create_all()
        runtime.node_key(create=True)
        runtime.ensure_chain(utcnow())
        people = {}
        for role, name in (("patient", "alice"), ("doctor", "dr.author"), ("doctor", "dr.reader")):
            people[name] = accounts.create_user(
                role=role, username=name, password=PASSWORD, display_name=name, hospital="Bench Hospital",
                licence_number="LIC-1" if role == "doctor" else None,
                date_of_birth="1984-03-21" if role == "patient" else None, kdf=runtime.kdf(),
                home=runtime.node_key(), now=utcnow(),
            ).public_id  # fmt: skip
    client = app.test_client()

    def token(username: str) -> dict[str, str]:
        answer = client.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
        return {"Authorization": f"Bearer {answer.json['token']}"}

    patient, author, reader = token("alice"), token("dr.author"), token("dr.reader")
    log(f"writing {records} records")
    ids = []
    for _ in range(records):
        answer = client.post(f"/api/v1/patients/{people['alice']}/records", json=RECORD, headers=author)
        assert answer.status_code == 201, answer.json
        ids.append(answer.json["id"])
    granted = client.post("/api/v1/grants", json={"doctor_id": people["dr.reader"]}, headers=patient)
    assert granted.status_code == 201, granted.json
    with app.app_context():
        ledger.seal_pending(runtime.node_key())
        counter = Counter()
        event.listen(db.engine, "before_cursor_execute", counter)

    kinds: dict[str, Callable[[int], Any]] = {
        "own read": lambda n: client.get(f"/api/v1/records/{ids[n % len(ids)]}", headers=patient),
        "granted read": lambda n: client.get(f"/api/v1/records/{ids[n % len(ids)]}", headers=reader),
        "author read": lambda n: client.get(f"/api/v1/records/{ids[n % len(ids)]}", headers=author),
        "list of 200": lambda n: client.get("/api/v1/records?limit=200", headers=patient),
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    statements: dict[str, int] = {}
    log(f"timing {reads} requests of each kind, in turns")
    for n in range(reads + 5):
        for kind, call in kinds.items():
            counter.count = 0
            started = time.perf_counter()
            answer = call(n)
            elapsed = (time.perf_counter() - started) * 1000
            assert answer.status_code == 200, (kind, answer.json)
            if n >= 5:  # the first few warm caches up
                times[kind].append(elapsed)
                statements[kind] = counter.count
        if n % 50 == 0:
            with app.app_context():
                ledger.seal_pending(runtime.node_key())  # as the producer does, every second or so
    return {
        kind: {
            "p50_ms": round(percentile(t, 50), 2),
            "p95_ms": round(percentile(t, 95), 2),
            "statements": statements[kind],
            "target_p50_ms": TARGETS.get(kind, 0.0),
        }
        for kind, t in times.items()
    }


def main() -> int:
    args = parse_args()
    params = {"reads": args.reads, "records": args.records, "database": "postgresql" if args.postgres else "sqlite",
              **machine()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="medledger-reads-") as tmp:
        workdir = Path(tmp)
        if args.postgres:
            name = f"medledger_bench_reads_{int(time.time())}"
            admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                results = run(workdir, args.postgres.rsplit("/", 1)[0] + "/" + name, args.reads, args.records)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            results = run(workdir, f"sqlite:///{workdir / 'node.db'}", args.reads, args.records)
    params["load_average_after"] = machine()["load_average"]
    if args.json:
        print(json.dumps({"params": params, "results": results}, indent=2))
        return 0
    print(f"MedLedger server time per request ({', '.join(f'{k} {v}' for k, v in params.items())})")
    print("| request | p50 ms | p95 ms | SQL statements | target p50 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, r in results.items():
        target = f"<= {r['target_p50_ms']:g} ms" if r["target_p50_ms"] else "-"
        print(f"| {kind} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['statements']} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
