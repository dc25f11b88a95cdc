"""The embedded FTP archive of `make run`: a pyftpdlib server on 127.0.0.1 with its files under
instance/ftp/archive/. Production points ARCHIVE_FTP_URL at a real FTP/FTPS server instead.

Each run of the server (`flask --app wsgi medledger archive serve-embedded`, which gunicorn starts
when EMBEDDED_FTP=1) makes a fresh user name, password and self-signed certificate, binds a port
the kernel picks as free (never a fixed one), and requires TLS on the control and data
connections. Only once it listens does it write all of that, with its pid, to
instance/embedded-ftp.json (mode 0600, in the owner-only instance folder); it deletes the file
when it stops. The archiver reads the file of a live server (`url`) and pins the certificate's
SHA-256, so it logs in only to the server this node started: whoever holds a port it expected
(a squatter on the old 2121, or on the port of a server that has died) gets at most the start
of a TLS handshake, never the user name or the password.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"
RECORD = "embedded-ftp.json"
START_TIMEOUT = 30.0  # how long `url` waits for the server to come up (gunicorn starts both at once)

log = logging.getLogger(__name__)


def record_path(instance: Path) -> Path:
    return instance / RECORD


def live_record(instance: Path) -> dict[str, Any] | None:
    """The running server's user, password, port and certificate digest, or None when no server
    of this instance is running (no record, an unreadable one, or one whose process is gone)."""
    try:
        found = json.loads(record_path(instance).read_text())
    except (OSError, ValueError):
        return None
    fields = {"user": str, "password": str, "port": int, "sha256": str, "pid": int}
    if not isinstance(found, dict) or any(not isinstance(found.get(k), t) for k, t in fields.items()):
        return None
    try:
        os.kill(found["pid"], 0)
    except (ProcessLookupError, PermissionError, OverflowError, ValueError):
        return None
    return found


def url(instance: Path, timeout: float = START_TIMEOUT) -> str:
    """The archive URL of the running embedded server, with its certificate pinned (`?sha256=`).
    Waits up to `timeout` seconds for a server that is starting; raises RuntimeError if none runs."""
    deadline = time.monotonic() + timeout
    while (found := live_record(instance)) is None:
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"the embedded FTP archive is not running (no live server in {record_path(instance)}): "
                "`make run` starts it, or run `flask --app wsgi medledger archive serve-embedded`"
            )
        time.sleep(0.1)
    user, password = quote(found["user"], safe=""), quote(found["password"], safe="")
    return f"ftps://{user}:{password}@{HOST}:{found['port']}/archive?sha256={found['sha256']}"


def _certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed P-256 certificate for 127.0.0.1, valid for a year, for this run only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MedLedger embedded archive")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only."""
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(staged, path)


def serve(instance: Path) -> None:
    """Run the embedded server until interrupted (SIGINT or SIGTERM), then forget its record."""
    with warnings.catch_warnings():
        # pyftpdlib is built on asyncore/asynchat, which Python 3.11 marks deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        from OpenSSL import SSL, crypto
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import TLS_FTPHandler
        from pyftpdlib.servers import FTPServer

    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = instance / "ftp"
    root.mkdir(mode=0o700, exist_ok=True)
    (root / "archive").mkdir(mode=0o700, exist_ok=True)
    user, password = f"medledger-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    cert, key = _certificate()
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(TLS_FTPHandler.ssl_options)
    context.use_certificate(crypto.X509.from_cryptography(cert))
    context.use_privatekey(crypto.PKey.from_cryptography_key(key))
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(root), perm="elradfmwMT")
    settings = {
        "authorizer": authorizer,
        "banner": "MedLedger archive",
        "ssl_context": context,
        "tls_control_required": True,
        "tls_data_required": True,
    }
    handler = type("EmbeddedArchiveHandler", (TLS_FTPHandler,), settings)
    server = FTPServer((HOST, 0), handler)  # port 0: the kernel picks one nobody holds
    port = server.address[1]
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    path = record_path(instance)
    record = {"user": user, "password": password, "port": port, "sha256": digest, "pid": os.getpid()}
    _write_private(path, json.dumps(record))
    log.info("embedded FTP archive on ftps://%s:%d (certificate sha256 %s)", HOST, port, digest)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # serve_forever stops cleanly on SystemExit
    try:
        server.serve_forever(handle_exit=True)  # closes every socket when it returns
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(path.read_text()).get("pid") == os.getpid():  # not a newer server's record
                path.unlink()
