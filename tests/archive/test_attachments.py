"""Attachments in the archive, against a real FTP server: each block's zip carries the ciphertext
of its records' attachments; restore puts it back so the restored node serves it and the patient
reads the attachment; a tampered or missing blob is pinpointed and restores nothing; a blob this
node lacks is fetched from a peer, and while no peer has it the block fails and waits, in order."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from core.archive import archive_name
from core.crypto import UserKeys
from core.encoding import b64e
from portal import create_app, runtime
from portal.extensions import db
from portal.ftp import ArchiveStore
from portal.models import ArchiveEntry, Attachment, utcnow
from portal.services import archive, ledger
from tests.archive.conftest import FtpServer
from tests.conftest import PDF, PNG, RECORD, Person, make_config, produce, use_key_pool

# Plaintext that would be found if anything but ciphertext reached the archive.
SCAN = PNG + b"patient 4711: lesion on the left knee, 14 mm" * 20


@pytest.fixture(autouse=True)
def fast_keys(monkeypatch: pytest.MonkeyPatch, key_pool: list[UserKeys]) -> None:
    use_key_pool(monkeypatch, key_pool)


def connect(server: FtpServer):  # type: ignore[no-untyped-def]
    return lambda: ArchiveStore(server.target())


def write(client: FlaskClient, doctor: Person, patient: Person, *files: tuple[str, bytes]) -> dict[str, Any]:
    attachments = [{"filename": name, "data": base64.b64encode(data).decode()} for name, data in files]
    answer = client.post(
        f"/api/v1/patients/{patient.id}/records", json={**RECORD, "attachments": attachments}, headers=doctor.headers
    )
    assert answer.status_code == 201, answer.json
    return answer.json


def blob_of(record_id: str, n: int = 0) -> Attachment:
    row = db.session.get(Attachment, (record_id, n))
    assert row is not None and row.ciphertext is not None
    return row


def zip_path(server: FtpServer, height: int) -> Path:
    stored = next(iter(ledger.stored_blocks(height, batch=1)))
    return server.root / "archive" / archive_name(height, stored.hash)


def entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as opened:
        return {name: opened.read(name) for name in opened.namelist()}


def rezip(path: Path, change: dict[str, bytes | None]) -> None:
    """Rewrite an archived file with entries replaced or (None) removed, as a tamperer would."""
    kept = {**entries(path.read_bytes()), **change}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as rewritten:
        for name, data in kept.items():
            if data is not None:
                rewritten.writestr(name, data)
    path.write_bytes(buffer.getvalue())


def cli(app: Flask, server: FtpServer, *args: str) -> Any:
    app.config["ARCHIVE_FTP_URL"] = server.url()
    app.config["ARCHIVE_CA_FILE"] = server.ca_file
    return app.test_cli_runner().invoke(args=["medledger", "archive", *args])


@pytest.fixture
def archived(app: Flask, client: FlaskClient, doctor: Person, patient: Person, ftp_server: FtpServer) -> dict[str, Any]:
    """A chain with a record holding two attachments (then one without), all archived."""
    produce(app)
    record = write(client, doctor, patient, ("knee.png", SCAN), ("report.pdf", PDF))
    height = produce(app)
    write(client, doctor, patient)
    produce(app)
    archive.enqueue_final()
    assert archive.upload_due(connect(ftp_server), utcnow()) == ledger.tip().height + 1  # type: ignore[union-attr]
    return {"record": record["id"], "height": height}


class AppPeers:
    """A peer list whose one node is another app in this process, reached through its test client
    (the same /node/v1 routes a peer answers over HTTP)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.urls = {"node-restored": "http://restored.invalid"}

    def get(self, peer: str, path: str) -> Any:
        answer = self.app.test_client().get(path)
        return answer.json if answer.status_code == 200 else None


class FixedPeers:
    """A peer that answers every blob request with the same bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.urls = {"node-2": "http://node-2.invalid"}

    def get(self, peer: str, path: str) -> Any:
        return {"data": b64e(self.data)}


@pytest.fixture
def restored_app(tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    target = f"sqlite:///{tmp_path / 'restored.db'}"

    class Restored(make_config(tmp_path / "restored")):  # type: ignore[misc]
        SQLALCHEMY_DATABASE_URI = target

    restored = create_app(Restored)
    yield restored, target
    with restored.app_context():
        db.engine.dispose()


def test_zip_holds_the_ciphertext_and_no_plaintext(ftp_server: FtpServer, archived: dict[str, Any]) -> None:
    scan, pdf = blob_of(archived["record"], 0), blob_of(archived["record"], 1)
    data = zip_path(ftp_server, archived["height"]).read_bytes()
    inside = entries(data)
    assert inside[f"blobs/{scan.sha256}"] == scan.ciphertext
    assert inside[f"blobs/{pdf.sha256}"] == pdf.ciphertext
    assert not [name for name in entries(zip_path(ftp_server, archived["height"] + 1).read_bytes()) if "blobs/" in name]
    for plaintext in (SCAN, PDF, b"lesion on the left knee", b"Wheeze on exertion"):
        assert plaintext not in data
        assert not [name for name, body in inside.items() if plaintext in body]


def test_restore_brings_the_attachments_back(
    app: Flask,
    client: FlaskClient,
    patient: Person,
    ftp_server: FtpServer,
    archived: dict[str, Any],
    restored_app: tuple[Flask, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = archived["record"]
    scan = blob_of(record)
    sha256, ciphertext = scan.sha256, scan.ciphertext
    verified = cli(app, ftp_server, "verify")
    assert verified.exit_code == 0, verified.output

    restored, target = restored_app
    result = cli(app, ftp_server, "restore", "--into", target)
    assert result.exit_code == 0, result.output
    assert "and 2 attachments" in result.output
    with restored.app_context():
        assert db.session.get(Attachment, (record, 0)).ciphertext == ciphertext
        assert restored.test_client().get(f"/node/v1/blobs/{sha256}").json == {"data": b64e(ciphertext)}

    # This hospital loses its copy; the patient's download is served by the restored node.
    db.session.get(Attachment, (record, 0)).ciphertext = None
    db.session.commit()
    monkeypatch.setattr(runtime, "peers", lambda: AppPeers(restored))
    answer = client.get(f"/api/v1/records/{record}/attachments/0", headers=patient.headers)
    assert answer.status_code == 200, answer.json
    assert answer.data == SCAN
    assert db.session.get(Attachment, (record, 0)).ciphertext == ciphertext


@pytest.mark.parametrize("damage", ["tampered", "missing", "stray"])
def test_bad_blob_is_pinpointed_and_restores_nothing(
    app: Flask, ftp_server: FtpServer, archived: dict[str, Any], restored_app: tuple[Flask, str], damage: str
) -> None:
    path = zip_path(ftp_server, archived["height"])
    sha256 = blob_of(archived["record"]).sha256
    entry = f"blobs/{sha256}"
    if damage == "tampered":
        ciphertext = bytearray(blob_of(archived["record"]).ciphertext)  # type: ignore[arg-type]
        ciphertext[len(ciphertext) // 2] ^= 0x01
        rezip(path, {entry: bytes(ciphertext)})
        expected = f"blob hash: '{entry}' hashes to {hashlib.sha256(ciphertext).hexdigest()}"
    elif damage == "missing":
        rezip(path, {entry: None})
        expected = f"missing blob: no '{entry}' for an attachment of transaction"
    else:
        stray = b"ciphertext of no attachment of this block"
        rezip(path, {f"blobs/{hashlib.sha256(stray).hexdigest()}": stray})
        expected = "unreferenced blob"
    verified = cli(app, ftp_server, "verify")
    assert verified.exit_code == 1, verified.output
    assert f"archive INVALID at height {archived['height']} in {path.name}: {expected}" in verified.output

    restored, target = restored_app
    result = cli(app, ftp_server, "restore", "--into", target)
    assert result.exit_code != 0
    assert f"{path.name} (height {archived['height']}): {expected}" in result.output
    with restored.app_context():
        assert ledger.tip() is None
        assert db.session.scalars(select(Attachment)).all() == []


def test_blob_no_peer_has_fails_the_block_until_a_peer_gives_it(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, ftp_server: FtpServer
) -> None:
    """A record written at another hospital: this node has the index, not the ciphertext."""
    produce(app)
    record = write(client, doctor, patient, ("knee.png", SCAN))["id"]
    height = produce(app)
    assert height is not None
    write(client, doctor, patient)
    produce(app)
    scan = blob_of(record)
    ciphertext = scan.ciphertext
    scan.ciphertext = None
    db.session.commit()
    archive.enqueue_final()
    now = utcnow()

    assert archive.upload_due(connect(ftp_server), now) == height  # the blocks before it
    failed = db.session.get(ArchiveEntry, height)
    assert failed.status == "failed" and failed.attempts == 1
    assert failed.last_error == (
        f"block {height}: attachment {scan.sha256} is not on this node and no peer gave a copy matching the ledger"
    )
    assert sorted(p.name for p in (ftp_server.root / "archive").iterdir()) == sorted(
        archive_name(s.height, s.hash) for s in ledger.stored_blocks() if s.height < height
    )
    status = archive.status(now)
    assert status["archived_through"] == height - 1 and status["failures"][0]["error"] == failed.last_error

    # Not before its backoff, and a peer's copy that does not match the ledger is refused.
    assert archive.upload_due(connect(ftp_server), now, FixedPeers(ciphertext)) == 0  # type: ignore[arg-type]
    later = now + timedelta(seconds=2)
    assert archive.upload_due(connect(ftp_server), later, FixedPeers(b"forged " + ciphertext)) == 0  # type: ignore[arg-type]
    assert db.session.get(ArchiveEntry, height).attempts == 2
    assert db.session.get(Attachment, (record, 0)).ciphertext is None

    uploaded = archive.upload_due(connect(ftp_server), now + timedelta(minutes=10), FixedPeers(ciphertext))  # type: ignore[arg-type]
    assert uploaded == ledger.tip().height + 1 - height  # type: ignore[union-attr]
    rows = list(db.session.scalars(select(ArchiveEntry).order_by(ArchiveEntry.height)))
    assert all(r.status == "uploaded" for r in rows)
    assert db.session.get(Attachment, (record, 0)).ciphertext == ciphertext  # kept once it matched
    assert entries(zip_path(ftp_server, height).read_bytes())[f"blobs/{scan.sha256}"] == ciphertext
    with ArchiveStore(ftp_server.target()) as store:
        assert archive.verify(store).valid
