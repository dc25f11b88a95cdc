"""`flask medledger consortium up`: starts the nodes, prints their URLs, stops them all on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.multinode.test_consortium import free_base_port

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """The nodes make their own keys."""


def node_pids(folder: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"MEDLEDGER_INSTANCE={folder}".encode() in environ:
                pids.append(int(entry.name))
    return pids


def test_consortium_up_runs_and_stops_every_node(tmp_path: Path) -> None:
    """As `make consortium` runs it: the data folder given relative to the project."""
    base = free_base_port(2)
    env = {**os.environ, "MEDLEDGER_CONFIG": "development", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "medledger", "consortium", "up",
         "--nodes", "2", "--base-port", str(base), "--data-dir", os.path.relpath(tmp_path, ROOT)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("consortium running" in line for line in lines):
            line = process.stdout.readline() if process.stdout else ""
            if not line and process.poll() is not None:
                break
            lines.append(line)
        output = "".join(lines)
        assert f"node-1: http://127.0.0.1:{base}" in output and f"node-2: http://127.0.0.1:{base + 1}" in output, output
        for port in (base, base + 1):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/consensus", timeout=5) as answer:
                assert answer.status == 200
        assert node_pids(tmp_path / "node-1") and node_pids(tmp_path / "node-2")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=40)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (node_pids(tmp_path / "node-1") or node_pids(tmp_path / "node-2")):
            time.sleep(0.25)
        assert not node_pids(tmp_path / "node-1") and not node_pids(tmp_path / "node-2"), "nodes left running"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for pid in node_pids(tmp_path / "node-1") + node_pids(tmp_path / "node-2"):
            os.kill(pid, signal.SIGKILL)
