"""A granted read on another hospital's node vs on the patient's home node, with 3 and 5 nodes.

For each consortium size: real node processes on 127.0.0.1 (portal.launcher), a patient at
hospital 1 with records written there, one doctor at hospital 1 and one at hospital 2, both
granted. Each doctor opens the records over and over through the HTTP API on their own node;
the table gives client-side latency p50/p95 per read. A read on hospital 1 gathers the
capsule fragments it holds itself and asks the other holders too (m = n // 2 + 1 of n); a
read on hospital 2 does the same from there, so the difference is what being away from home
costs, and the change from 3 to 5 nodes what more holders cost.

    .venv/bin/python bench/federation.py [--reads 60] [--sizes 3 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import LOG_TAIL, Metric, Section, machine, percentile, print_table
from portal.launcher import LocalNode, add_doctor, add_patient, api, api_until, running
from tests.multinode.test_consortium import free_base_port

RECORDS = 5


def _reads(node: LocalNode, token: str, record_ids: list[str], count: int) -> list[float]:
    """Milliseconds per granted read, after one untimed read per record (warm caches)."""
    for record_id in record_ids:
        api_until(node, "GET", f"/records/{record_id}", None, token, 200, f"a granted read at {node.node_id}")
    times = []
    for i in range(count):
        started = time.perf_counter()
        status, answer = api(node, "GET", f"/records/{record_ids[i % len(record_ids)]}", token=token)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            tail = node.log.read_text(errors="replace")[-LOG_TAIL:]
            raise RuntimeError(f"read at {node.node_id} answered {status}: {answer}\n{node.log}:\n{tail}")
    return times


def run(size: int, reads: int) -> Section:
    with (
        tempfile.TemporaryDirectory() as folder,
        running(
            Path(folder), size, free_base_port(size + 1), slot_ms=500, epoch_slots=30 * size, miss_limit=3
        ) as nodes,
    ):
        home, away = nodes[0], nodes[1]
        alice, alice_id = add_patient(home, "alice", "Alice Moreau")
        author, _ = add_doctor(home, "dr.home", "Dr. Home")
        visitor, visitor_id = add_doctor(away, "dr.away", "Dr. Away")
        record_ids = [
            api_until(home, "POST", f"/patients/{alice_id}/records", {"title": f"Visit {n}", "category": "general",
                      "notes": "Stable."}, author, 201, "a record")["id"]
            for n in range(RECORDS)
        ]  # fmt: skip
        # A second doctor at home, so that both reads go through the proxies (not as the author).
        colleague, colleague_id = add_doctor(home, "dr.colleague", "Dr. Colleague")
        for doctor_id in (colleague_id, visitor_id):
            api_until(home, "POST", "/grants", {"doctor_id": doctor_id, "days": 1}, alice, 201, "a grant")
        at_home = _reads(home, colleague, record_ids, reads)
        away_reads = _reads(away, visitor, record_ids, reads)
    m = size // 2 + 1
    return Section(
        f"n{size}",
        f"{size} nodes (m = {m}), {reads} granted reads each, ms per read",
        [
            Metric("home_p50", "on the home node: p50", percentile(at_home, 50), "ms"),
            Metric("home_p95", "on the home node: p95", percentile(at_home, 95), "ms"),
            Metric("away_p50", "on another hospital's node: p50", percentile(away_reads, 50), "ms"),
            Metric("away_p95", "on another hospital's node: p95", percentile(away_reads, 95), "ms"),
            Metric("ratio", "away / home (p50)", percentile(away_reads, 50) / percentile(at_home, 50), "x"),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=60)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 5])
    options = parser.parse_args()
    sections = [run(size, options.reads) for size in options.sizes]
    print_table(f"federation bench {machine()}", sections)


if __name__ == "__main__":
    main()
