"""Setup guarantees: migrations match the models, production refuses to start unconfigured,
one producer per node."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from portal import create_app, runtime
from portal.config import Config
from portal.extensions import db
from portal.models import utcnow
from portal.services import ledger
from tests.conftest import make_config

ROOT = Path(__file__).resolve().parent.parent


def flask(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def empty_database(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A brand-new empty database of the kind the suite runs on."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        yield f"sqlite:///{tmp_path / 'migrated.db'}"
        return
    name = f"medledger_mig_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migrations_build_the_models_schema(empty_database: str, tmp_path: Path) -> None:
    env = {"MEDLEDGER_CONFIG": "development", "DATABASE_URL": empty_database, "MEDLEDGER_INSTANCE": str(tmp_path)}
    upgrade = flask(["db", "upgrade"], env)
    assert upgrade.returncode == 0, upgrade.stderr
    check = flask(["db", "check"], env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr


def test_production_refuses_to_start_without_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    class Production(Config):
        SECRET_KEY = None

    with pytest.raises(RuntimeError, match="SECRET_KEY is not set"):
        create_app(Production)
    result = subprocess.run(
        [sys.executable, "-c", "import wsgi"],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "MEDLEDGER_CONFIG")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "SECRET_KEY is not set" in result.stderr


def test_demo_data_never_in_production(tmp_path: Path) -> None:
    env = {"MEDLEDGER_CONFIG": "production", "SECRET_KEY": "x" * 40, "MEDLEDGER_INSTANCE": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}", "NODE_KEY_PATH": str(tmp_path / "node.key")}  # fmt: skip
    result = flask(["medledger", "seed-demo"], env)
    assert result.returncode != 0 and "only loaded by `make run`" in result.stderr


def test_producer_runs_once_per_node_and_seals_pending(tmp_path: Path) -> None:
    from portal.producer import run
    from portal.services import accounts

    class Config(make_config(tmp_path)):  # type: ignore[misc]
        BLOCK_INTERVAL_SECONDS = 0.05

    app = create_app(Config)
    app.instance_path = str(tmp_path)
    with app.app_context():
        db.drop_all()
        db.create_all()
        runtime.node_key(create=True)
        runtime.ensure_chain(utcnow())
        accounts.create_user(role="patient", username="pat", password="long-enough-pw", display_name="P",
                             kdf=runtime.kdf(), home=runtime.node_key(), now=utcnow())  # fmt: skip
        stops = [threading.Event(), threading.Event()]

        def producer(stop: threading.Event) -> None:
            with app.app_context():
                run(app, stop)

        threads = [threading.Thread(target=producer, args=(s,)) for s in stops]
        for t in threads:
            t.start()
        try:
            for _ in range(100):
                if ledger.pending_count() == 0:
                    break
                stops[0].wait(0.05)
                db.session.rollback()
            assert ledger.pending_count() == 0
            report = ledger.verify_chain()
            assert report.valid and report.blocks == 2
        finally:
            for s in stops:
                s.set()
            for t in threads:
                t.join(timeout=10)
        assert not any(t.is_alive() for t in threads)
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


def test_demo_data_loads_once_and_verifies(tmp_path: Path) -> None:
    """What `make run` does: migrate, node init, seed (twice: the second run changes nothing)."""
    env = {"MEDLEDGER_CONFIG": "development", "MEDLEDGER_INSTANCE": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}", "NODE_KEY_PATH": str(tmp_path / "node.key"),
           "EMERGENCY_KEY_PATH": str(tmp_path / "emergency.key")}  # fmt: skip
    assert flask(["db", "upgrade"], env).returncode == 0
    assert flask(["medledger", "node", "init"], env).returncode == 0
    first = flask(["medledger", "seed-demo"], env)
    assert first.returncode == 0, first.stderr
    assert "demo data loaded" in first.stdout and "dr.osei" in first.stdout
    second = flask(["medledger", "seed-demo"], env)
    assert "demo data already present" in second.stdout
    verify = flask(["medledger", "verify"], env)
    assert verify.returncode == 0 and "chain valid" in verify.stdout
    with sqlite3.connect(tmp_path / "demo.db") as demo:
        discoverable = demo.execute("SELECT count(*) FROM symptom_profiles WHERE discoverable").fetchone()[0]
    assert discoverable == 3  # Alice, Bob and Carol can find each other in the app's Matches


DATABASE_FIXTURES = {"app", "client", "patient", "other_patient", "doctor", "other_doctor", "admin", "empty_database"}


def test_tests_outside_the_database_tests_never_use_the_suites_database() -> None:
    """`make test` on PostgreSQL runs only the Makefile's DATABASE_TESTS: every other test (and fixture) must
    not use the database of TEST_DATABASE_URL (no fixture of it, no reading of the variable), or
    the PostgreSQL run would miss it."""
    import ast
    import re

    makefile = (ROOT / "Makefile").read_text()
    paths = re.search(r"^DATABASE_TESTS := (.+)$", makefile, re.M)
    assert paths is not None
    included = [ROOT / p for p in paths.group(1).split()]
    definitions = {ROOT / "tests" / "conftest.py", ROOT / "tests" / "__init__.py"}
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if any(path == p or p in path.parents for p in included) or "vendor" in path.parts or path in definitions:
            continue  # tests/conftest.py and tests/__init__.py define the database and its fixtures
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (node.name.startswith("test_") or node.decorator_list):
                used = {a.arg for a in node.args.args} & DATABASE_FIXTURES
                if used:
                    offenders.append(f"{path.relative_to(ROOT)}::{node.name} uses {sorted(used)}")
            if isinstance(node, ast.Constant) and node.value == "TEST_DATABASE_URL":
                offenders.append(f"{path.relative_to(ROOT)} reads TEST_DATABASE_URL")
    allowed = {"tests/multinode/test_one_node_two_servers.py reads TEST_DATABASE_URL"}  # its own PostgreSQL database
    assert sorted(set(offenders) - allowed) == []
