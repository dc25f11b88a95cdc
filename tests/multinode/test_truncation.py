"""A consortium node whose newest blocks were deleted from its database: `medledger verify` and the
node at start compare its tip with the peers' final heights and report the chain as shorter than
what was already final; once it has caught up from the peers its /healthz is 200 again."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from portal.launcher import ROOT, LocalNode, running
from tests.multinode.test_consortium import free_base_port, get, wait_for

SLOT_MS = 500


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """These nodes make their own keys in their own processes."""


def healthz(node: LocalNode) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(node.url + "/healthz", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_node_that_lost_final_blocks_sees_it_against_its_peers(tmp_path: Path) -> None:
    with running(tmp_path, 3, free_base_port(4), slot_ms=SLOT_MS) as nodes:
        first, _, third = nodes
        wait_for(lambda: get(third, "/node/v1/status")["final"] >= 6, 60, "final blocks on node-3")
        third.stop()
        final = get(first, "/node/v1/status")["final"]
        keep = final - 4
        with sqlite3.connect(third.folder / "node.db") as conn:
            conn.execute("DELETE FROM ledger_transactions WHERE block_height > ?", (keep,))
            conn.execute("DELETE FROM ledger_blocks WHERE height > ?", (keep,))

        verify = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", "medledger", "verify"],
            cwd=ROOT, env=third.env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert verify.returncode == 1, verify.stdout + verify.stderr
        assert f"chain SHORTER than what is already final: tip at height {keep}, but " in verify.stdout
        said = verify.stdout.split("but ", 1)[1]
        assert "peer node-1 has final height" in said and "peer node-2 has final height" in said
        assert int(said.split("peer node-1 has final height ", 1)[1].split(";")[0].split()[0]) >= final

        third.start()
        third.wait_ready()
        at_start = f"ERROR portal.producer: chain SHORTER than what is already final: tip at height {keep}, but "
        wait_for(lambda: at_start in third.log.read_text(), 30, "the short chain reported at start")
        wait_for(lambda: healthz(third)[0] == 200, 60, "node-3 caught up from its peers")
        _, found = healthz(third)
        assert found["parts"]["chain"]["state"] == "ok" and found["parts"]["chain"]["height"] >= final
        assert found["parts"]["peers"] == {**found["parts"]["peers"], "state": "ok", "reachable": 2, "of": 2}
