"""The archiver end to end against real FTP servers: outbox, upload, verify and restore from the
archive alone, a server that is down, an interrupted upload, and bad files on the server."""

from __future__ import annotations

import zipfile
from datetime import timedelta
from io import BytesIO
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from core.archive import archive_name
from core.crypto import UserKeys
from portal import create_app
from portal.extensions import db
from portal.ftp import ArchiveStore, FtpTarget
from portal.models import ArchiveEntry, utcnow
from portal.services import archive, ledger
from tests.archive.conftest import FtpServer
from tests.conftest import RECORD, Person, make_config, produce, use_key_pool


@pytest.fixture(autouse=True)
def fast_keys(monkeypatch: pytest.MonkeyPatch, key_pool: list[UserKeys]) -> None:
    use_key_pool(monkeypatch, key_pool)


def connect(server: FtpServer):  # type: ignore[no-untyped-def]
    return lambda: ArchiveStore(server.target())


def chain_of(app: Flask, client: FlaskClient, doctor: Person, patient: Person, records: int = 3) -> int:
    produce(app)
    for n in range(records):
        client.post(f"/api/v1/patients/{patient.id}/records", json={**RECORD, "title": f"R{n}"}, headers=doctor.headers)
        produce(app)
    tip = ledger.tip()
    assert tip is not None
    return tip.height


def archived_files(server: FtpServer) -> list[str]:
    return sorted(p.name for p in (server.root / "archive").iterdir())


def point_cli_at(app: Flask, server: FtpServer) -> None:
    app.config["ARCHIVE_FTP_URL"] = server.url()
    app.config["ARCHIVE_CA_FILE"] = server.ca_file


def test_archive_verify_and_restore(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, server: FtpServer, tmp_path: Path
) -> None:
    height = chain_of(app, client, doctor, patient)
    assert archive.enqueue_final() == height + 1
    assert archive.upload_due(connect(server), utcnow()) == height + 1
    expected = sorted(archive_name(s.height, s.hash) for s in ledger.stored_blocks())
    assert archived_files(server) == expected  # nothing else: no temporary upload is left
    assert archive.status(utcnow())["lag"] == 0

    point_cli_at(app, server)
    runner = app.test_cli_runner()
    verified = runner.invoke(args=["medledger", "archive", "verify"])
    assert verified.exit_code == 0, verified.output
    assert f"{height + 1} blocks" in verified.output

    target = f"sqlite:///{tmp_path / 'restored.db'}"
    restored = runner.invoke(args=["medledger", "archive", "restore", "--into", target])
    assert restored.exit_code == 0, restored.output
    assert f"restored {height + 1} blocks" in restored.output
    original_tip = ledger.tip()
    assert original_tip is not None

    class Restored(make_config(tmp_path / "restored")):  # type: ignore[misc]
        SQLALCHEMY_DATABASE_URI = target

    with create_app(Restored).app_context():
        report = ledger.verify_chain()
        assert report.valid and report.blocks == height + 1 and report.tip_hash == original_tip.hash
        db.engine.dispose()
    again = runner.invoke(args=["medledger", "archive", "restore", "--into", target])
    assert again.exit_code != 0 and "already has a ledger" in again.output


def test_server_down_then_every_block_arrives_in_order(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, ftp_server: FtpServer
) -> None:
    height = chain_of(app, client, doctor, patient, records=2)
    archive.enqueue_final()
    down = FtpTarget.from_url(ftp_server.url().replace(f":{ftp_server.port}/", ":1/"))
    now = utcnow()
    assert archive.upload_due(lambda: ArchiveStore(down, timeout=2), now) == 0
    first = db.session.get(ArchiveEntry, 0)
    assert first.status == "failed" and first.attempts == 1 and first.last_error
    assert ftp_server.password not in first.last_error
    # Backing off: not retried before its time, even with the server back.
    assert archive.upload_due(connect(ftp_server), now) == 0
    assert archive.upload_due(lambda: ArchiveStore(down, timeout=2), now + timedelta(seconds=2)) == 0
    assert db.session.get(ArchiveEntry, 0).attempts == 2
    status = archive.status(now)
    assert status["failed"] == 1 and status["lag"] == height + 1 and status["failures"][0]["height"] == 0

    assert archive.upload_due(connect(ftp_server), now + timedelta(minutes=10)) == height + 1
    rows = list(db.session.scalars(select(ArchiveEntry).order_by(ArchiveEntry.height)))
    assert all(r.status == "uploaded" for r in rows)
    times = [r.uploaded_at for r in rows]
    assert times == sorted(times)
    assert len(archived_files(ftp_server)) == height + 1


def test_interrupted_upload_never_counts(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, ftp_server: FtpServer
) -> None:
    """An archiver killed mid-upload leaves at most a temporary file, which is neither counted as
    archived nor taken for a block; the next run uploads the block properly."""
    chain_of(app, client, doctor, patient, records=1)
    archive.enqueue_final()
    stored = next(iter(ledger.stored_blocks()))
    (ftp_server.root / "archive").mkdir(exist_ok=True)
    partial = ftp_server.root / "archive" / f".{archive_name(stored.height, stored.hash)}.0badc0de.part"
    partial.write_bytes(b"PK\x03\x04 truncated by a kill")
    with ArchiveStore(ftp_server.target()) as store:
        report = archive.verify(store)
    assert not report.valid and report.check == "missing block"
    assert db.session.get(ArchiveEntry, 0).status == "pending"
    assert archive.upload_due(connect(ftp_server), utcnow()) >= 1
    with ArchiveStore(ftp_server.target()) as store:
        report = archive.verify(store)
    assert report.valid, report.describe()


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "zip bomb"])
def test_bad_files_on_the_server_are_pinpointed(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, ftp_server: FtpServer, damage: str
) -> None:
    chain_of(app, client, doctor, patient, records=2)
    archive.enqueue_final()
    archive.upload_due(connect(ftp_server), utcnow())
    stored = list(ledger.stored_blocks())[1]
    path = ftp_server.root / "archive" / archive_name(stored.height, stored.hash)
    data = path.read_bytes()
    if damage == "corrupt":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    else:
        bomb = BytesIO()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("header", b"\0" * (300 * 1024 * 1024))
        path.write_bytes(bomb.getvalue())
    point_cli_at(app, ftp_server)
    result = app.test_cli_runner().invoke(args=["medledger", "archive", "verify"])
    assert result.exit_code == 1, result.output
    assert path.name in result.output and "height 1" in result.output
