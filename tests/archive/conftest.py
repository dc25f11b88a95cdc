"""Real FTP servers on 127.0.0.1 for the archive transport.

- `ftp_server`: pyftpdlib, plain FTP, in a thread.
- `ftps_server`: pyftpdlib with explicit TLS required on the control and data channels.
- `vsftpd_server`: Debian's vsftpd 3 in a subprocess, TLS forced for logins and data, with its
  default `require_ssl_reuse=YES`, logging in a real local user through PAM.
- `server`: each of the three in turn.

Every server gets a fresh folder and a self-signed certificate for 127.0.0.1 (IP SAN) made here
with `cryptography`; the client trusts it through `ca_file`. The context managers and helpers
are plain functions, so other test packages can import them (`from tests.archive.conftest
import run_pyftpdlib`).

vsftpd needs root (it authenticates through PAM and chroots) and the `vsftpd` package, which
`make test` installs. Without them the vsftpd tests skip, and fail under CI. Each pytest process
creates its own local user `medledger-ftp-<pid>` (system user, no home, shell nologin, random
password) and deletes it at the end; users left by a killed run are deleted by the next. Debian's
`vsftpd` PAM service admits only users whose shell is in /etc/shells, so the server uses its own
PAM service, `/etc/pam.d/medledger-ftp-test` (pam_unix password and account checks only), and the
user keeps a shell that cannot log in. vsftpd changes to the user's home before `local_root`,
so the home is `/`, which always exists; `local_root` itself must be reachable by the user, so
it lives in the system's temporary folder, not under pytest's root-only one.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from portal.ftp import FtpTarget

HOST = "127.0.0.1"
USER = "archiver"
VSFTPD = Path("/usr/sbin/vsftpd")
VSFTPD_USER_PREFIX = "medledger-ftp-"
PAM_SERVICE = "medledger-ftp-test"
PAM_FILE = Path("/etc/pam.d") / PAM_SERVICE
PAM_RULES = (
    "# MedLedger's vsftpd test server (tests/archive/conftest.py): password and account checks only.\n"
    "auth\trequired\tpam_unix.so nodelay\n"
    "account\trequired\tpam_unix.so\n"
)
START_TIMEOUT = 10.0
PASSIVE_PORTS = 20


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """These tests make no accounts: skip the suite's pooled RSA/Umbral key generation."""


@dataclass(frozen=True)
class Certificate:
    """A self-signed server certificate (which is also the CA file the client trusts) and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class FtpServer:
    """A running server: where it listens, who may log in, and the folder it serves."""

    kind: str
    port: int
    user: str
    password: str
    root: Path
    ca_file: str | None = None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    def url(self, path: str = "archive", *, scheme: str | None = None, password: str | None = None) -> str:
        scheme = scheme or ("ftps" if self.tls else "ftp")
        secret = quote(self.password if password is None else password, safe="")
        return f"{scheme}://{quote(self.user, safe='')}:{secret}@{HOST}:{self.port}/{path}"

    def target(self, **changes: object) -> FtpTarget:
        """The FtpTarget of this server's /archive (trusting its certificate), with `changes` applied."""
        return replace(FtpTarget.from_url(self.url(), self.ca_file), **changes)  # type: ignore[arg-type]


def make_certificate(directory: Path, name: str = "server") -> Certificate:
    """A fresh RSA-2048 self-signed certificate for 127.0.0.1 (CN and IP SAN), valid for a day."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    unused = dict.fromkeys(
        ("content_commitment", "data_encipherment", "key_agreement", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=True, **unused), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    found = Certificate(directory / f"{name}.crt", directory / f"{name}.key")
    found.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    found.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    found.key.chmod(0o600)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def free_port_range(count: int) -> range:
    """`count` consecutive bindable ports below the kernel's ephemeral range (so outgoing
    connections do not take them), for a server's passive data connections."""
    for _ in range(200):
        start = random.randrange(20000, 30000 - count)
        ports = range(start, start + count)
        with contextlib.ExitStack() as stack:
            try:
                for port in ports:
                    probe = stack.enter_context(socket.socket())
                    probe.bind((HOST, port))
            except OSError:
                continue
        return ports
    raise RuntimeError("no free range of passive ports on 127.0.0.1")


def wait_for_banner(port: int, alive: Callable[[], bool] | None = None) -> None:
    """Until the server on `port` greets with 220 (and `alive()` stays true)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError("the FTP server exited while starting")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1) as conn:
            if conn.recv(3) == b"220":
                return
        time.sleep(0.05)
    raise RuntimeError(f"no FTP server answered on {HOST}:{port} within {START_TIMEOUT:g} s")


@contextlib.contextmanager
def run_pyftpdlib(root: Path, certificate: Certificate | None = None) -> Iterator[FtpServer]:
    """pyftpdlib on a free port of 127.0.0.1, serving `root`, in a thread with its own IO loop;
    with `certificate`, explicit TLS is required on the control and data channels."""
    with warnings.catch_warnings():
        # pyftpdlib is built on asyncore/asynchat, which Python 3.11 marks deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
        from pyftpdlib.ioloop import IOLoop
        from pyftpdlib.servers import FTPServer

    password = secrets.token_urlsafe(12)
    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, password, str(root), perm="elradfmwMT")
    settings: dict[str, object] = {"authorizer": authorizer, "auth_failed_timeout": 0.1}
    if certificate is None:
        handler: type[FTPHandler] = type("PlainHandler", (FTPHandler,), settings)
    else:
        handler = type(
            "TlsHandler",
            (TLS_FTPHandler,),
            {
                **settings,
                "certfile": str(certificate.cert),
                "keyfile": str(certificate.key),
                "ssl_context": None,
                "tls_control_required": True,
                "tls_data_required": True,
            },
        )
    server = FTPServer((HOST, 0), handler, ioloop=IOLoop())
    port = server.address[1]
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                server.ioloop.loop(timeout=0.05, blocking=False)
        finally:
            server.close_all()

    thread = threading.Thread(target=serve, name=f"pyftpdlib:{port}", daemon=True)
    thread.start()
    try:
        wait_for_banner(port, thread.is_alive)
        kind = "ftp" if certificate is None else "ftps"
        yield FtpServer(kind, port, USER, password, root, None if certificate is None else str(certificate.cert))
    finally:
        stop.set()
        thread.join(timeout=5)


def vsftpd_unavailable() -> str | None:
    """Why vsftpd cannot run here, or None."""
    if not VSFTPD.exists():
        return f"{VSFTPD} is missing: `make test` installs Debian's vsftpd (needs root)"
    if os.geteuid() != 0:
        return "vsftpd needs root (PAM authentication and chroot)"
    missing = [tool for tool in ("useradd", "chpasswd", "userdel") if shutil.which(tool) is None]
    if missing:
        return f"cannot manage the test user: {', '.join(missing)} missing"
    return None


def _run(args: list[str], stdin: str | None = None) -> None:
    """Run an account tool, one at a time across this machine's test processes (xdist workers):
    useradd, chpasswd and userdel fail rather than wait when another holds /etc/passwd's lock."""
    with open(Path(tempfile.gettempdir()) / "medledger-test-accounts.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(args, input=stdin, text=True, check=True, capture_output=True, timeout=30)


def _sweep_accounts() -> None:
    """Delete the test users of earlier runs whose pytest process is gone (killed before teardown)."""
    for line in Path("/etc/passwd").read_text().splitlines():
        name = line.split(":", 1)[0]
        owner = name.removeprefix(VSFTPD_USER_PREFIX)
        if owner != name and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                _run(["userdel", name])


@contextlib.contextmanager
def vsftpd_account() -> Iterator[tuple[str, str]]:
    """A local user for vsftpd to log in, with a random password, for this process only (named
    after its pid, so concurrent runs never share one); deleted afterwards."""
    _sweep_accounts()
    if not PAM_FILE.exists() or PAM_FILE.read_text() != PAM_RULES:
        staged = PAM_FILE.with_name(f".{PAM_SERVICE}.{os.getpid()}")
        staged.write_text(PAM_RULES)
        staged.replace(PAM_FILE)
    user = f"{VSFTPD_USER_PREFIX}{os.getpid()}"
    password = secrets.token_urlsafe(15)
    with contextlib.suppress(subprocess.CalledProcessError):
        _run(["userdel", user])
    _run(["useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell", "/usr/sbin/nologin", user])
    try:
        _run(["chpasswd"], stdin=f"{user}:{password}\n")
        yield user, password
    finally:
        _run(["userdel", user])


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (vsftpd's per-connection sessions, which call setsid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End vsftpd: its session processes (children and grandchildren), then the listener."""
    sessions = _children(process.pid)
    for pid in [*(child for session in sessions for child in _children(session)), *sessions]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def vsftpd_config(work: Path, root: Path, port: int, passive: range, certificate: Certificate) -> str:
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    settings = {
        "listen": "YES",
        "listen_ipv6": "NO",
        "listen_address": HOST,
        "listen_port": port,
        "background": "NO",
        "anonymous_enable": "NO",
        "local_enable": "YES",
        "write_enable": "YES",
        "local_umask": "022",
        "local_root": root,
        "chroot_local_user": "YES",
        "allow_writeable_chroot": "YES",
        "secure_chroot_dir": empty,
        "pam_service_name": PAM_SERVICE,
        "ssl_enable": "YES",
        "force_local_logins_ssl": "YES",
        "force_local_data_ssl": "YES",
        "require_ssl_reuse": "YES",
        # vsftpd 3.0.3's default (DES-CBC3-SHA) is gone from OpenSSL 3; TLS 1.3 suites are not set by this.
        "ssl_ciphers": "HIGH",
        "rsa_cert_file": certificate.cert,
        "rsa_private_key_file": certificate.key,
        "pasv_enable": "YES",
        "pasv_address": HOST,
        "pasv_min_port": passive.start,
        "pasv_max_port": passive.stop - 1,
        "port_enable": "NO",
        "seccomp_sandbox": "NO",
        "xferlog_enable": "NO",
        "syslog_enable": "NO",
    }
    return "".join(f"{name}={value}\n" for name, value in settings.items())


@contextlib.contextmanager
def run_vsftpd(work: Path, certificate: Certificate, user: str, password: str) -> Iterator[FtpServer]:
    """/usr/sbin/vsftpd in the foreground on a free port, its configuration under `work`, serving
    a fresh folder as `user`'s chroot. vsftpd enters that folder as the user, so it cannot be
    under pytest's private (root-only) temporary folder: it is made in the system's and removed."""
    root = Path(tempfile.mkdtemp(prefix="medledger-vsftpd-"))
    shutil.chown(root, user=user)
    port = free_port()
    config = work / "vsftpd.conf"
    config.write_text(vsftpd_config(work, root, port, free_port_range(PASSIVE_PORTS), certificate))
    config.chmod(0o600)
    # setpriv: the server dies with pytest even if pytest is killed before its teardown.
    command = [str(VSFTPD), str(config)]
    if shutil.which("setpriv"):
        command = ["setpriv", "--pdeathsig", "TERM", *command]
    log = work / "vsftpd.out"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_banner(port, lambda: process.poll() is None)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; vsftpd said: {log.read_text(errors='replace').strip()!r}") from None
        yield FtpServer("vsftpd", port, user, password, root, str(certificate.cert))
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def stranger_certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """Another self-signed certificate for 127.0.0.1: the wrong CA for every test server."""
    return make_certificate(tmp_path_factory.mktemp("tls-stranger"), "stranger")


@pytest.fixture
def ftp_server(tmp_path: Path) -> Iterator[FtpServer]:
    with run_pyftpdlib(tmp_path) as server:
        yield server


@pytest.fixture
def ftps_server(tmp_path: Path, certificate: Certificate) -> Iterator[FtpServer]:
    with run_pyftpdlib(tmp_path, certificate) as server:
        yield server


@pytest.fixture(scope="session")
def vsftpd_login() -> Iterator[tuple[str, str]]:
    reason = vsftpd_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"vsftpd tests cannot run under CI: {reason}")
        pytest.skip(reason)
    with vsftpd_account() as login:
        yield login


@pytest.fixture
def vsftpd_server(tmp_path: Path, certificate: Certificate, vsftpd_login: tuple[str, str]) -> Iterator[FtpServer]:
    with run_vsftpd(tmp_path, certificate, *vsftpd_login) as server:
        yield server


@pytest.fixture(params=["ftp", "ftps", "vsftpd"])
def server(request: pytest.FixtureRequest) -> FtpServer:
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(params=["ftps", "vsftpd"])
def tls_server(request: pytest.FixtureRequest) -> FtpServer:
    return request.getfixturevalue(f"{request.param}_server")
