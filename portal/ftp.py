"""The block archive's transport: one folder on an FTP or FTPS server (stdlib ftplib and ssl only).

`FtpTarget.from_url` reads `ftp://user:password@host:21/path` or `ftps://...` (explicit TLS:
AUTH TLS on the control port, then PROT P so every data connection is TLS too). The path is
relative to the login directory (RFC 1738); on a chrooted server that is the chroot.

`ArchiveStore(target)` is one logged-in connection, used as a context manager. Uploads are
atomic: the bytes go to a temporary name, are checked on the server (size, then SHA-256 of a
fresh download) and only then renamed into place, so a reader never sees a partial file.

FTPS verifies the server certificate and host name: against `ca_file` alone when given (a
self-signed or private-CA server needs this), else against the system's trust store. A URL may
instead pin the server's certificate, `ftps://...?sha256=<hex of the DER certificate's SHA-256>`:
then that one certificate is accepted and nothing else is checked (the embedded server of
`make run` is reached so, with a certificate made per run). Either way the user name and password
are sent only after the server has proven its certificate; every data connection is checked too.
Data
connections resume the control connection's TLS session, which vsftpd requires by default
(`require_ssl_reuse=YES`) so that nobody else can take over a data connection.

Every network, protocol or TLS failure is raised as `TransportError`, whose message names the
target with its password masked.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import hmac
import re
import secrets
import socket
import ssl
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = ["ArchiveConflict", "ArchiveStore", "FtpTarget", "TransportError"]

DEFAULT_PORT = 21  # explicit FTPS uses the plain FTP port (implicit FTPS on 990 is not supported)
CHUNK = 64 * 1024
MAX_LISTING_BYTES = 64 * 1024 * 1024  # a name list longer than this is not an archive folder's
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{16}\.part$")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MISSING = ("550", "450")  # "no such file" on most servers; also what some answer for an empty NLST


class TransportError(Exception):
    """The archive server could not be reached, refused a command, or returned wrong bytes.

    The message names the target with its password masked and never contains the password.
    """


class ArchiveConflict(TransportError):
    """A file of that name is already archived with different bytes.

    A subclass of TransportError so that a caller that retries failed uploads records it
    instead of crashing; it will not go away by retrying.
    """


@dataclass(frozen=True)
class FtpTarget:
    """Where the archive lives. Its repr and str mask the password."""

    tls: bool
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    path: tuple[str, ...] = ()
    ca_file: str | None = None
    sha256: bytes | None = None  # a pinned server certificate (SHA-256 of its DER bytes)

    @classmethod
    def from_url(cls, url: str, ca_file: str | None = None) -> FtpTarget:
        """Parse `ftp://user:password@host[:port]/path` or `ftps://...[?sha256=HEX]` (user and
        password percent-decoded; port 21 by default). `ca_file` (PEM) is the only trust anchor
        for ftps when given; `sha256` pins the server certificate instead. Raises ValueError naming
        what is wrong, never echoing the password."""
        if _CONTROL.search(url):
            raise ValueError("archive URL must not contain control characters")
        parts = urlsplit(url.strip())
        if not parts.scheme:
            raise ValueError("archive URL has no scheme: use ftp:// or ftps://")
        if parts.scheme not in ("ftp", "ftps"):
            raise ValueError(f"archive URL scheme {parts.scheme!r} is not supported: use ftp:// or ftps://")
        if parts.fragment:
            raise ValueError("archive URL must not have a fragment")
        sha256 = _pin(parts.query)
        if not parts.hostname:
            raise ValueError("archive URL has no host")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError("archive URL has an invalid port") from None
        if not parts.username:
            raise ValueError("archive URL has no user name")
        user, password = unquote(parts.username), unquote(parts.password or "")
        path = tuple(unquote(p) for p in parts.path.split("/") if p)
        if _CONTROL.search(user + password + "".join(path)):
            raise ValueError("archive URL must not contain control characters")
        if any(p in (".", "..") for p in path):
            raise ValueError("archive URL path must not contain '.' or '..'")
        ca_file = ca_file or None
        if ca_file is not None and parts.scheme != "ftps":
            raise ValueError("a CA file applies only to ftps:// archive URLs")
        if sha256 is not None and parts.scheme != "ftps":
            raise ValueError("a pinned certificate (?sha256=) applies only to ftps:// archive URLs")
        if sha256 is not None and ca_file is not None:
            raise ValueError("an archive URL with a pinned certificate (?sha256=) takes no CA file")
        return cls(parts.scheme == "ftps", parts.hostname, port, user, password, path, ca_file, sha256)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = "/".join(quote(p, safe="") for p in self.path)
        return f"{'ftps' if self.tls else 'ftp'}://{quote(self.user, safe='')}:***@{host}:{self.port}/{path}"

    def __repr__(self) -> str:
        return f"FtpTarget({self})"


def _pin(query: str) -> bytes | None:
    """The pinned certificate digest of an archive URL's query (`sha256=HEX`), or None."""
    if not query:
        return None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError("archive URL query must be sha256=<64 hex digits> or nothing") from None
    if len(pairs) != 1 or pairs[0][0] != "sha256":
        raise ValueError("archive URL query must be sha256=<64 hex digits> or nothing")
    value = pairs[0][1].replace(":", "").lower()
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError("archive URL sha256= must be the 64 hex digits of the certificate's SHA-256")
    return bytes.fromhex(value)


class CertificateMismatch(OSError):
    """The server's certificate is not the pinned one."""


def _check_pin(conn: socket.socket, sha256: bytes | None) -> None:
    if sha256 is None:
        return
    der = conn.getpeercert(binary_form=True) if isinstance(conn, ssl.SSLSocket) else None
    if der is None or not hmac.compare_digest(hashlib.sha256(der).digest(), sha256):
        raise CertificateMismatch("the server's certificate is not the pinned one (?sha256=)")


class _SessionReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session, and whose
    every TLS connection is checked against the pinned certificate, if any.

    The stock class starts a fresh TLS session per data connection, which servers that
    require session reuse (vsftpd's default) refuse with 522.
    """

    def __init__(self, *, pin: bytes | None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pin = pin

    def auth(self) -> str:
        answer = super().auth()
        _check_pin(self.sock, self.pin)
        return answer

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)  # noqa: S321  (wrapped in TLS below when PROT P)
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            try:
                conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
                _check_pin(conn, self.pin)
            except BaseException:
                conn.close()
                raise
        return conn, size


def _context(ca_file: str | None, pinned: bool = False) -> ssl.SSLContext:
    """Certificate and host name checked, TLS 1.2 at least; `ca_file` replaces the system trust.
    For a pinned certificate the chain and name are not checked: the pin is (`_check_pin`)."""
    if pinned:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:
        raise TransportError(f"cannot load the archive CA file {ca_file!r}: {exc}") from exc


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or _CONTROL.search(name):
        raise ValueError(f"not a plain archive file name: {name!r}")


def _reply_code(exc: BaseException) -> str:
    return str(exc)[:3] if isinstance(exc, ftplib.Error) else ""


class ArchiveStore:
    """One logged-in connection to the archive folder; use `with ArchiveStore(target) as store:`.

    Entering connects, secures the control and data channels for ftps, logs in and changes
    to the folder, creating missing components. Each call is bounded by `timeout` seconds of
    network silence. Methods raise TransportError on any network, TLS or FTP failure.
    """

    def __init__(self, target: FtpTarget, timeout: float = 10.0) -> None:
        self._target = target
        self._timeout = timeout
        self._ftp: ftplib.FTP | None = None
        self._lost = False

    def __repr__(self) -> str:
        return f"ArchiveStore({self._target})"

    def __enter__(self) -> ArchiveStore:
        target = self._target
        ftp: ftplib.FTP
        if target.tls:
            context = _context(target.ca_file, pinned=target.sha256 is not None)
            ftp = _SessionReusingFTP_TLS(context=context, timeout=self._timeout, pin=target.sha256)
        else:
            ftp = ftplib.FTP(timeout=self._timeout)  # noqa: S321  (plain FTP only when the URL says ftp://)
        step = "connecting"
        try:
            ftp.connect(target.host, target.port)
            if isinstance(ftp, ftplib.FTP_TLS):
                step = "starting TLS"
                ftp.auth()
            step = "logging in"
            ftp.login(target.user, target.password)
            if isinstance(ftp, ftplib.FTP_TLS):
                step = "protecting the data channel"
                ftp.prot_p()
            step = "opening the archive folder"
            ftp.voidcmd("TYPE I")
            for part in target.path:
                try:
                    ftp.cwd(part)
                except ftplib.error_perm:
                    ftp.mkd(part)
                    ftp.cwd(part)
        except ftplib.all_errors as exc:
            ftp.close()
            raise self._error(step, exc) from exc
        self._ftp, self._lost = ftp, False
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ftp, self._ftp = self._ftp, None
        if ftp is None:
            return
        if exc_type is None:
            with contextlib.suppress(*ftplib.all_errors):  # the work is done; a failed goodbye loses nothing
                ftp.quit()
        ftp.close()

    def list(self) -> list[str]:
        """The archive folder's file names, sorted, without upload temporaries; [] when empty."""
        ftp = self._session()
        try:
            listing = self._transfer("NLST", "the listing", max_bytes=MAX_LISTING_BYTES, binary=False)
        except ftplib.all_errors as exc:
            if _reply_code(exc) in _MISSING:
                return []
            raise self._error("listing the archive folder", exc) from exc
        found = {n.rsplit("/", 1)[-1] for n in listing.decode(ftp.encoding, errors="replace").splitlines()}
        return sorted(n for n in found if n not in ("", ".", "..") and not _TEMPORARY.match(n))

    def size(self, name: str) -> int | None:
        """The size of `name` in bytes as the server reports it, or None if there is no such file."""
        _check_name(name)
        try:
            return self._size(name)
        except ftplib.all_errors as exc:
            raise self._error(f"asking the size of {name}", exc) from exc

    def download(self, name: str, max_bytes: int) -> bytes:
        """The bytes of `name`, read in chunks; raises TransportError if it is missing or larger
        than `max_bytes` (checked before and during the transfer)."""
        _check_name(name)
        try:
            known = self._size(name)
            if known is None:
                raise TransportError(f"{self._target}: {name} is not in the archive")
            if known > max_bytes:
                raise TransportError(f"{self._target}: {name} is {known} bytes, over the limit of {max_bytes}")
            data = self._retrieve(name, max_bytes)
        except ftplib.all_errors as exc:
            raise self._error(f"downloading {name}", exc) from exc
        if len(data) != known:
            raise TransportError(f"{self._target}: {len(data)} bytes of {name} arrived, the server reported {known}")
        return data

    def upload(self, name: str, data: bytes) -> None:
        """Store `data` as `name` atomically: under a temporary name first, checked on the
        server (size and SHA-256 of a fresh download), then renamed. Succeeds without change
        if `name` already holds exactly `data`; raises ArchiveConflict if it holds other
        bytes, TransportError on any failure (after trying to delete the temporary file)."""
        _check_name(name)
        ftp = self._session()
        temporary = f".{name}.{secrets.token_hex(8)}.part"
        digest = hashlib.sha256(data).digest()
        try:
            self._transfer(f"STOR {temporary}", name, send=data)
            stored = self._size(temporary)
            if stored != len(data):
                raise TransportError(
                    f"{self._target}: the server holds {stored} bytes of {name}, {len(data)} were sent"
                )
            if hashlib.sha256(self._retrieve(temporary, len(data))).digest() != digest:
                raise TransportError(f"{self._target}: {name} came back from the server with other bytes")
            existing = self._size(name)
            if existing is not None:
                if existing != len(data) or hashlib.sha256(self._retrieve(name, len(data))).digest() != digest:
                    raise ArchiveConflict(f"{self._target}: {name} is already archived with different bytes")
                ftp.delete(temporary)
                return
            ftp.rename(temporary, name)
        except TransportError:
            self._discard(temporary)
            raise
        except ftplib.all_errors as exc:
            self._discard(temporary)
            raise self._error(f"uploading {name}", exc) from exc

    def delete(self, name: str) -> None:
        """Delete `name` from the archive folder."""
        _check_name(name)
        try:
            self._session().delete(name)
        except ftplib.all_errors as exc:
            raise self._error(f"deleting {name}", exc) from exc

    def rename(self, old: str, new: str) -> None:
        """Rename `old` to `new` within the archive folder (an existing `new` may be replaced,
        as the server decides)."""
        _check_name(old)
        _check_name(new)
        try:
            self._session().rename(old, new)
        except ftplib.all_errors as exc:
            raise self._error(f"renaming {old} to {new}", exc) from exc

    def _session(self) -> ftplib.FTP:
        if self._lost:
            raise TransportError(f"{self._target}: the connection was dropped after an earlier failure")
        if self._ftp is None:
            raise RuntimeError("ArchiveStore is not connected: use it as a context manager")
        return self._ftp

    def _size(self, name: str) -> int | None:
        ftp = self._session()
        ftp.voidcmd("TYPE I")  # SIZE is only meaningful (and on some servers only allowed) in binary mode
        try:
            return ftp.size(name)
        except ftplib.error_perm as exc:
            if _reply_code(exc) in _MISSING:
                return None
            raise

    def _retrieve(self, name: str, max_bytes: int) -> bytes:
        return self._transfer(f"RETR {name}", name, max_bytes=max_bytes)

    def _transfer(
        self, command: str, what: str, *, send: bytes | None = None, max_bytes: int = 0, binary: bool = True
    ) -> bytes:
        """Run one data-connection command: send `send`, or receive at most `max_bytes`.

        The command's final reply is read even when the data connection fails or is cut off at
        `max_bytes`, so the control connection stays in step. Failing to close a TLS data
        connection cleanly is ignored (servers differ, and TLS 1.3 session tickets can race the
        close): completion is proven by the server's 2xx reply and by the callers' size and
        SHA-256 checks, never by the close.
        """
        ftp = self._session()
        ftp.voidcmd("TYPE I" if binary else "TYPE A")
        chunks: list[bytes] = []
        total = 0
        failure: OSError | None = None
        conn = ftp.transfercmd(command)
        try:
            if send is not None:
                view = memoryview(send)
                for start in range(0, len(view), CHUNK):
                    conn.sendall(view[start : start + CHUNK])
            else:
                while chunk := conn.recv(CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        break
                    chunks.append(chunk)
            if total <= max_bytes and isinstance(conn, ssl.SSLSocket):
                with contextlib.suppress(OSError):
                    conn.unwrap()
        except OSError as exc:
            failure = exc
        finally:
            conn.close()
        try:
            ftp.voidresp()
        except ftplib.Error:
            if failure is None and total <= max_bytes:
                raise  # otherwise the server's complaint about the broken-off transfer is expected
        if failure is not None:
            raise failure
        if total > max_bytes:
            raise TransportError(f"{self._target}: {what} is over the limit of {max_bytes} bytes")
        return b"".join(chunks)

    def _discard(self, temporary: str) -> None:
        with contextlib.suppress(*ftplib.all_errors):  # best effort: list() hides temporaries by their name
            self._session().delete(temporary)

    def _error(self, step: str, exc: BaseException) -> TransportError:
        """The TransportError for `exc`, password masked. After a network or TLS failure (not an
        FTP reply) a reply may still be in flight, so the connection is dropped rather than
        risk reading it as the answer to a later command."""
        if not isinstance(exc, ftplib.Error) and self._ftp is not None:
            self._ftp.close()
            self._ftp, self._lost = None, True
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {self._timeout:g} s"
        elif isinstance(exc, EOFError):
            detail = "the server closed the connection"
        password = self._target.password
        if password:
            for form in {password, quote(password, safe="")}:
                detail = detail.replace(form, "***")
        return TransportError(f"{self._target}: {step} failed: {detail}")
