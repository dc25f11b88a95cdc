"""The instance folder (0700) and the SQLite database with its -wal and -shm files (0600) are
readable by their owner only, even under a umask that would let everyone read them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

import portal
from portal import create_app
from portal.extensions import db
from tests.conftest import make_config


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def sqlite_app(tmp_path: Path, instance: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(portal, "INSTANCE", instance)
    uri = f"sqlite:///{instance / 'medledger.db'}"
    return create_app(type("SqliteFile", (make_config(tmp_path),), {"SQLALCHEMY_DATABASE_URI": uri}))


def write_something(app) -> None:  # type: ignore[no-untyped-def]
    with app.app_context():
        db.create_all()
        with db.engine.connect() as connection:
            connection.execute(text("CREATE TABLE probe (x INTEGER)"))
            connection.execute(text("INSERT INTO probe VALUES (1)"))
            connection.commit()
            database = Path(db.engine.url.database)
            # The WAL and its index exist while a connection is open.
            assert Path(f"{database}-wal").exists() and Path(f"{database}-shm").exists()
            modes = {p.name: mode(p) for p in database.parent.iterdir() if p.name.startswith("medledger.db")}
        db.engine.dispose()
    return modes


def test_a_new_instance_and_database_are_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None
) -> None:
    instance = tmp_path / "instance"
    app = sqlite_app(tmp_path, instance, monkeypatch)
    assert app.instance_path == str(instance)
    assert mode(instance) == 0o700
    assert mode(instance / "medledger.db") == 0o600
    modes = write_something(app)
    assert modes == {"medledger.db": 0o600, "medledger.db-wal": 0o600, "medledger.db-shm": 0o600}
    assert mode(instance) == 0o700


def test_loose_existing_ones_are_tightened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None) -> None:
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o755)
    for name in ("medledger.db", "medledger.db-wal", "medledger.db-shm"):
        (instance / name).touch(mode=0o644)
    (instance / "medledger.db-wal").unlink()
    (instance / "medledger.db-shm").unlink()
    sqlite_app(tmp_path, instance, monkeypatch)
    assert mode(instance) == 0o700
    assert mode(instance / "medledger.db") == 0o600


def test_postgresql_or_memory_leave_files_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    instance = tmp_path / "absent"
    monkeypatch.setattr(portal, "INSTANCE", instance)
    create_app(type("Memory", (make_config(tmp_path),), {"SQLALCHEMY_DATABASE_URI": "sqlite://"}))
    assert not instance.exists()  # nothing needs it: not created
