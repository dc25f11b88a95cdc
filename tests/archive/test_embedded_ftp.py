"""The embedded FTP archive of `make run` (portal/embedded_ftp.py) as gunicorn starts it: the real
`medledger archive serve-embedded` command in its own process. It binds a free port with fresh
credentials and a fresh certificate per run, and the archiver logs in only to it: never to a
process holding the old fixed port 2121, nor to one that took the port of a server that died.
Also the certificate pin (`?sha256=`) of the FTPS client, against a real pyftpdlib server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient

from portal import embedded_ftp, runtime
from portal.config import ROOT
from portal.ftp import ArchiveStore, FtpTarget, TransportError
from portal.models import utcnow
from portal.services import archive
from tests.archive.conftest import HOST, Certificate, FtpServer
from tests.archive.test_archiver import chain_of
from tests.conftest import Person

OLD_FIXED_PORT = 2121


@contextlib.contextmanager
def embedded_server(instance: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`flask --app wsgi medledger archive serve-embedded` for `instance`, as gunicorn.conf.py
    starts it, until it has recorded where it listens; stopped with SIGTERM, as gunicorn does."""
    env = {**os.environ, "MEDLEDGER_CONFIG": "testing", "MEDLEDGER_INSTANCE": str(instance), "EMBEDDED_FTP": "1"}
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "medledger", "archive", "serve-embedded"]
    log = instance.parent / f"{instance.name}-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            embedded_ftp.url(instance, timeout=60)
        except RuntimeError:
            raise RuntimeError(f"the embedded server did not start: {log.read_text(errors='replace')}") from None
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Squatter:
    """An FTPS server that is not ours, with its own valid certificate, accepting any login:
    what it would learn is what it records."""

    port: int
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def squatter_on(port: int, certificate: Certificate) -> Iterator[Squatter]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import TLS_FTPHandler
        from pyftpdlib.ioloop import IOLoop
        from pyftpdlib.servers import FTPServer

    seen = Squatter(port)

    class Harvester(DummyAuthorizer):
        def validate_authentication(self, username: str, password: str, handler: object) -> None:
            seen.logins.append((username, password))

    class Handler(TLS_FTPHandler):
        authorizer = Harvester()
        certfile, keyfile, ssl_context = str(certificate.cert), str(certificate.key), None

        def on_connect(self) -> None:
            seen.connections += 1

        def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
            seen.commands.append(cmd)
            super().pre_process_command(line, cmd, arg)

    server = FTPServer((HOST, port), Handler, ioloop=IOLoop())
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                server.ioloop.loop(timeout=0.05, blocking=False)
        finally:
            server.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=5)


def use_embedded(app: Flask, instance: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This app archives as under `make run`: EMBEDDED_FTP=1, no ARCHIVE_FTP_URL, `instance`."""
    monkeypatch.setenv("EMBEDDED_FTP", "1")
    monkeypatch.setattr(app, "instance_path", str(instance))
    app.config["ARCHIVE_FTP_URL"] = None


def test_a_taken_old_port_is_left_alone_and_blocks_are_archived(
    app: Flask, client: FlaskClient, doctor: Person, patient: Person, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind((HOST, OLD_FIXED_PORT))
    except OSError:
        squatter.close()
        pytest.skip(f"{HOST}:{OLD_FIXED_PORT} is held by another process: cannot watch it")
    squatter.listen(8)
    squatter.setblocking(False)
    instance = tmp_path / "instance"
    use_embedded(app, instance, monkeypatch)
    with squatter, embedded_server(instance):
        record = json.loads((instance / embedded_ftp.RECORD).read_text())
        assert record["port"] != OLD_FIXED_PORT
        target_text = runtime.archive_target_text()
        assert target_text == f"ftps://{record['user']}:***@{HOST}:{record['port']}/archive"
        assert record["password"] not in target_text
        connect = runtime.archive_store()
        assert connect is not None
        height = chain_of(app, client, doctor, patient)
        assert archive.enqueue_final() == height + 1
        assert archive.upload_due(connect, utcnow()) == height + 1
        with connect() as store:
            report = archive.verify(store)
        assert report.valid, report.describe()
        assert report.blocks == height + 1
        with pytest.raises(BlockingIOError):
            squatter.accept()  # nobody ever knocked at the old port
    assert len(list((instance / "ftp" / "archive").glob("*.zip"))) == height + 1


def test_each_run_has_its_own_port_credentials_and_certificate(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    runs = []
    for _ in range(2):
        with embedded_server(instance):
            path = instance / embedded_ftp.RECORD
            assert path.stat().st_mode & 0o777 == 0o600
            runs.append(json.loads(path.read_text()))
        assert not path.exists()  # stopped: the record goes with the server
        with pytest.raises(RuntimeError, match="embedded FTP archive is not running"):
            embedded_ftp.url(instance, timeout=0.2)
    first, second = runs
    for name in ("user", "password", "sha256", "pid"):
        assert first[name] != second[name], name


def test_a_dead_servers_record_is_never_used(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    with embedded_server(instance) as process:
        process.send_signal(signal.SIGKILL)  # no chance to clean up
        process.wait(timeout=10)
        assert (instance / embedded_ftp.RECORD).exists()
        with pytest.raises(RuntimeError, match="embedded FTP archive is not running"):
            embedded_ftp.url(instance, timeout=0.2)


def test_the_archiver_never_logs_in_to_a_server_it_did_not_start(
    app: Flask,
    client: FlaskClient,
    doctor: Person,
    patient: Person,
    stranger_certificate: Certificate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = tmp_path / "instance"
    use_embedded(app, instance, monkeypatch)
    height = chain_of(app, client, doctor, patient, records=1)
    archive.enqueue_final()
    with embedded_server(instance):
        record = json.loads((instance / embedded_ftp.RECORD).read_text())
        connect = runtime.archive_store()  # the producer builds this once, at its start
        assert connect is not None
        with connect() as store:
            store.upload("probe.bin", b"ours")
    # The server died; another process takes its port, with a certificate of its own.
    with squatter_on(record["port"], stranger_certificate) as squatter:
        with pytest.raises(TransportError, match="starting TLS failed: the server's certificate is not the pinned"):
            connect().__enter__()
        assert archive.upload_due(connect, utcnow()) == 0
        state = archive.status(utcnow())
    assert squatter.connections >= 2  # the archiver did knock ...
    assert squatter.logins == []  # ... and never tried to log in
    assert "USER" not in squatter.commands and "PASS" not in squatter.commands
    assert (state["uploaded"], state["failed"], state["pending"]) == (0, 1, height)  # retried later, in order
    assert record["password"] not in json.dumps(state)
    assert "the server's certificate is not the pinned one" in state["failures"][0]["error"]


# ---- the certificate pin of the FTPS client


def fingerprint(certificate: Certificate) -> str:
    cert = x509.load_pem_x509_certificate(certificate.cert.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_a_pinned_certificate_is_enough(ftps_server: FtpServer, certificate: Certificate) -> None:
    target = FtpTarget.from_url(f"{ftps_server.url()}?sha256={fingerprint(certificate)}")
    assert target.ca_file is None and target.sha256 == bytes.fromhex(fingerprint(certificate))
    with ArchiveStore(target) as store:
        store.upload("pinned.bin", b"pinned bytes")
        assert store.download("pinned.bin", 100) == b"pinned bytes"


def test_another_certificate_than_the_pinned_one_gets_no_login(
    ftps_server: FtpServer, stranger_certificate: Certificate
) -> None:
    target = FtpTarget.from_url(f"{ftps_server.url()}?sha256={fingerprint(stranger_certificate)}")
    with pytest.raises(TransportError, match="starting TLS failed") as failure:
        ArchiveStore(target).__enter__()
    assert ftps_server.password not in str(failure.value)


def test_a_pin_is_checked_on_data_connections_too(ftps_server: FtpServer, certificate: Certificate) -> None:
    target = FtpTarget.from_url(f"{ftps_server.url()}?sha256={fingerprint(certificate)}")
    with ArchiveStore(target) as store:
        store._session().pin = bytes(32)  # type: ignore[attr-defined]  # as if the data channel were another server
        with pytest.raises(TransportError, match="not the pinned one"):
            store.list()


@pytest.mark.parametrize(
    ("url", "ca_file", "message"),
    [
        ("ftp://u:p@host/a?sha256=" + "ab" * 32, None, "applies only to ftps://"),
        ("ftps://u:p@host/a?sha256=" + "ab" * 32, "/ca.pem", "takes no CA file"),
        ("ftps://u:p@host/a?sha256=abc", None, "64 hex digits"),
        ("ftps://u:p@host/a?sha256=" + "zz" * 32, None, "64 hex digits"),
        ("ftps://u:p@host/a?sha256=" + "ab" * 32 + "&sha256=" + "ab" * 32, None, "query must be sha256="),
        ("ftps://u:p@host/a?pin=" + "ab" * 32, None, "query must be sha256="),
        ("ftps://u:p@host/a?x", None, "query must be sha256="),
        ("ftps://u:p@host/a?sha256=" + "ab" * 32 + "%0A", None, "64 hex digits"),
        ("ftps://u:p@host/a#frag", None, "must not have a fragment"),
    ],
)
def test_invalid_pinned_url(url: str, ca_file: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FtpTarget.from_url(url, ca_file)


def test_pin_accepts_colons_and_capitals() -> None:
    spaced = ":".join(["AB"] * 32)
    assert FtpTarget.from_url(f"ftps://u:p@host/a?sha256={spaced}").sha256 == bytes.fromhex("ab" * 32)
    assert FtpTarget.from_url("ftps://u:p@host/a").sha256 is None
