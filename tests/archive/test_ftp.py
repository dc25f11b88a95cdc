"""The archive transport against real servers on 127.0.0.1: pyftpdlib (plain FTP and FTPS) and
vsftpd (FTPS that insists on TLS session reuse for data connections)."""

from __future__ import annotations

import ftplib
import socket
import ssl
import time
from pathlib import Path

import pytest

from portal.ftp import ArchiveConflict, ArchiveStore, FtpTarget, TransportError, _SessionReusingFTP_TLS
from tests.archive.conftest import HOST, Certificate, FtpServer, free_port, run_pyftpdlib

TIMEOUT = 5.0
BLOCK = b"PK\x03\x04" + bytes(range(256)) * 40  # binary, with CR, LF and NUL bytes


def connect(server: FtpServer, **changes: object) -> ArchiveStore:
    return ArchiveStore(server.target(**changes), timeout=TIMEOUT)


def on_disk(server: FtpServer, path: str = "archive") -> list[str]:
    return sorted(p.name for p in (server.root / path).iterdir())


# --- FtpTarget ----------------------------------------------------------------------------------


def test_from_url_reads_every_part() -> None:
    target = FtpTarget.from_url("ftps://ar%40chiver:p%40ss%3Aw%2Fd@Archive.Example:2121/blocks/node%201", "/ca.pem")
    assert target == FtpTarget(
        tls=True, host="archive.example", port=2121, user="ar@chiver", password="p@ss:w/d",
        path=("blocks", "node 1"), ca_file="/ca.pem",
    )  # fmt: skip


def test_from_url_defaults() -> None:
    assert FtpTarget.from_url("ftp://u:p@host") == FtpTarget(False, "host", 21, "u", "p", (), None)
    assert FtpTarget.from_url("ftps://u:p@host/a//b/").port == 21
    assert FtpTarget.from_url("ftps://u:p@host/a//b/").path == ("a", "b")
    assert FtpTarget.from_url("ftp://u@host/a").password == ""
    assert FtpTarget.from_url("ftp://u:p@host/a", ca_file="").ca_file is None


def test_repr_and_str_hide_the_password() -> None:
    target = FtpTarget.from_url("ftps://user:hunter2-SECRET@host:21/path")
    assert str(target) == "ftps://user:***@host:21/path"
    assert repr(target) == "FtpTarget(ftps://user:***@host:21/path)"
    assert repr(ArchiveStore(target)) == "ArchiveStore(ftps://user:***@host:21/path)"
    assert "SECRET" not in f"{target} {target!r} {[target]} {ArchiveStore(target)!r}"


def test_str_brackets_ipv6_and_quotes_names() -> None:
    target = FtpTarget.from_url("ftp://a%20b:p@[::1]:2121/x%2Fy/z")
    assert (target.host, target.user, target.path) == ("::1", "a b", ("x/y", "z"))
    assert str(target) == "ftp://a%20b:***@[::1]:2121/x%2Fy/z"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sftp://u:pw-SECRET@host/a", "archive URL scheme 'sftp' is not supported: use ftp:// or ftps://"),
        ("http://u:pw-SECRET@host/a", "archive URL scheme 'http' is not supported: use ftp:// or ftps://"),
        ("//u:pw-SECRET@host/a", "archive URL has no scheme: use ftp:// or ftps://"),
        ("ftp://u:pw-SECRET@/a", "archive URL has no host"),
        ("ftp://u:pw-SECRET@host:99999/a", "archive URL has an invalid port"),
        ("ftp://u:pw-SECRET@host:port/a", "archive URL has an invalid port"),
        ("ftp://host/a", "archive URL has no user name"),
        ("ftp://:pw-SECRET@host/a", "archive URL has no user name"),
        ("ftp://u:pw-SECRET@host/a?type=i", "archive URL query must be sha256=<64 hex digits> or nothing"),
        ("ftp://u:pw-SECRET@host/a#top", "archive URL must not have a fragment"),
        ("ftp://u:pw-SECRET@host/a/../b", "archive URL path must not contain '.' or '..'"),
        ("ftp://u:pw-SECRET%0D%0ADELE%20x@host/a", "archive URL must not contain control characters"),
        ("ftp://u:pw-SECRET@host/a%0ADELE", "archive URL must not contain control characters"),
        ("ftp://u:pw-SECRET@host/a\r\nDELE", "archive URL must not contain control characters"),
    ],
    ids=[
        "sftp", "http", "no-scheme", "no-host", "port-range", "port-text", "no-user", "empty-user", "query",
        "fragment", "dot-dot", "crlf-password", "lf-path", "raw-crlf",
    ],
)  # fmt: skip
def test_invalid_url(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        FtpTarget.from_url(url)
    assert str(caught.value) == message
    assert "SECRET" not in str(caught.value)


def test_invalid_ca_file_for_plain_ftp() -> None:
    with pytest.raises(ValueError, match=r"^a CA file applies only to ftps:// archive URLs$"):
        FtpTarget.from_url("ftp://u:p@host/a", ca_file="/ca.pem")


def test_invalid_file_name() -> None:
    store = ArchiveStore(FtpTarget.from_url("ftp://u:p@host/a"))
    for name in ("", ".", "..", "a/b", "a\\b", "a\r\nDELE b"):
        with pytest.raises(ValueError, match="not a plain archive file name"):
            store.upload(name, b"x")


def test_invalid_use_outside_the_context() -> None:
    with pytest.raises(RuntimeError, match="use it as a context manager"):
        ArchiveStore(FtpTarget.from_url("ftp://u:p@host/a")).list()


# --- against the servers --------------------------------------------------------------------------


def test_round_trip(server: FtpServer) -> None:
    with connect(server) as store:
        assert store.list() == []
        store.upload("block-1.zip", BLOCK)
        assert store.list() == ["block-1.zip"]
        assert store.size("block-1.zip") == len(BLOCK)
        assert store.download("block-1.zip", len(BLOCK)) == BLOCK
    with connect(server) as store:
        assert store.list() == ["block-1.zip"]
        assert store.download("block-1.zip", len(BLOCK)) == BLOCK
    assert (server.root / "archive" / "block-1.zip").read_bytes() == BLOCK


def test_base_path_is_created(server: FtpServer) -> None:
    with connect(server, path=("a", "b", "c")) as store:
        assert store.list() == []
        store.upload("x.zip", b"x")
    assert on_disk(server, "a/b/c") == ["x.zip"]
    with connect(server, path=("a", "b")) as store:
        assert store.list() == ["c"]


def test_upload_is_atomic(server: FtpServer) -> None:
    with connect(server) as store:
        store.upload("block-1.zip", BLOCK)
        store.upload("block-2.zip", BLOCK[::-1])
        assert store.list() == ["block-1.zip", "block-2.zip"]
    assert on_disk(server) == ["block-1.zip", "block-2.zip"]


def test_upload_that_does_not_check_out_is_removed(server: FtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with connect(server) as store:
        monkeypatch.setattr(store, "_retrieve", lambda name, max_bytes: b"tampered")
        with pytest.raises(TransportError, match=r"block-1\.zip came back from the server with other bytes"):
            store.upload("block-1.zip", BLOCK)
        monkeypatch.undo()
        assert store.list() == []
    assert on_disk(server) == []


def test_upload_again_with_the_same_bytes_succeeds(server: FtpServer) -> None:
    with connect(server) as store:
        store.upload("block-1.zip", BLOCK)
        store.upload("block-1.zip", BLOCK)
        assert store.list() == ["block-1.zip"]
    assert on_disk(server) == ["block-1.zip"]


def test_upload_over_different_bytes_is_a_conflict(server: FtpServer) -> None:
    with connect(server) as store:
        store.upload("block-1.zip", BLOCK)
        for other in (BLOCK[:-1] + b"!", BLOCK + b"!"):
            with pytest.raises(ArchiveConflict, match=r"block-1\.zip is already archived with different bytes"):
                store.upload("block-1.zip", other)
        assert store.download("block-1.zip", len(BLOCK)) == BLOCK
    assert on_disk(server) == ["block-1.zip"]
    assert issubclass(ArchiveConflict, TransportError)


def test_download_enforces_max_bytes(server: FtpServer) -> None:
    big = BLOCK * 30
    with connect(server) as store:
        store.upload("big.zip", big)
        with pytest.raises(TransportError, match=rf"big\.zip is {len(big)} bytes, over the limit of {len(big) - 1}"):
            store.download("big.zip", len(big) - 1)
        assert store.download("big.zip", len(big)) == big


def test_download_stops_reading_at_max_bytes(server: FtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that under-reports the size still cannot send more than max_bytes."""
    big = BLOCK * 30
    with connect(server) as store:
        store.upload("big.zip", big)
        monkeypatch.setattr(store, "_size", lambda name: 1)
        with pytest.raises(TransportError, match=r"big\.zip is over the limit of 1000 bytes"):
            store.download("big.zip", 1000)
        monkeypatch.undo()
        assert store.list() == ["big.zip"]  # the control channel is still in step
        assert store.download("big.zip", len(big)) == big


def test_download_of_a_missing_file(server: FtpServer) -> None:
    with connect(server) as store, pytest.raises(TransportError, match=r"nothing\.zip is not in the archive"):
        store.download("nothing.zip", 100)


def test_size_rename_delete(server: FtpServer) -> None:
    with connect(server) as store:
        assert store.size("a.zip") is None
        store.upload("a.zip", BLOCK)
        store.rename("a.zip", "b.zip")
        assert (store.list(), store.size("a.zip"), store.size("b.zip")) == (["b.zip"], None, len(BLOCK))
        store.delete("b.zip")
        assert store.list() == []
        with pytest.raises(TransportError, match=r"deleting b\.zip failed: 550"):
            store.delete("b.zip")


def test_empty_transfers_over_tls_are_reliable(tls_server: FtpServer) -> None:
    """An empty listing or file ends its TLS data connection at once, racing the TLS 1.3 session
    ticket; the stock ftplib then fails now and then with SHUTDOWN_WHILE_IN_INIT."""
    with connect(tls_server) as store:
        for _ in range(40):
            assert store.list() == []
        store.upload("empty.zip", b"")
        for _ in range(20):
            assert store.download("empty.zip", 0) == b""


def test_a_dropped_connection_is_not_reused(tmp_path: Path) -> None:
    running = run_pyftpdlib(tmp_path)
    server = running.__enter__()
    with connect(server) as store:
        store.upload("a.zip", BLOCK)
        running.__exit__(None, None, None)  # the server stops and closes every connection
        with pytest.raises(TransportError, match="listing the archive folder failed"):
            store.list()
        with pytest.raises(TransportError, match="the connection was dropped after an earlier failure"):
            store.list()


def test_wrong_password(server: FtpServer) -> None:
    with pytest.raises(TransportError) as caught, connect(server, password="wrong-SECRET-pw"):
        pass
    message = str(caught.value)
    scheme = "ftps" if server.tls else "ftp"
    assert message.startswith(f"{scheme}://{server.user}:***@{HOST}:{server.port}/archive: logging in failed: 530")
    assert "SECRET" not in message and server.password not in message


@pytest.mark.parametrize("scheme", ["ftp", "ftps"])
def test_server_down(scheme: str, tmp_path: Path) -> None:
    target = FtpTarget.from_url(f"{scheme}://u:pw-SECRET@{HOST}:{free_port()}/archive")
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"connecting failed: .*refused") as caught, ArchiveStore(target, TIMEOUT):
        pass
    assert time.monotonic() - started < 2
    assert "SECRET" not in str(caught.value)


def test_silent_server_times_out() -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        target = FtpTarget.from_url(f"ftp://u:p@{HOST}:{listener.getsockname()[1]}/archive")
        started = time.monotonic()
        with (
            pytest.raises(TransportError, match=r"connecting failed: no answer within 0\.5 s"),
            ArchiveStore(target, timeout=0.5),
        ):
            pass
        assert time.monotonic() - started < 3


def test_wrong_ca(tls_server: FtpServer, stranger_certificate: Certificate) -> None:
    with (
        pytest.raises(TransportError, match=r"starting TLS failed: .*CERTIFICATE_VERIFY_FAILED"),
        connect(tls_server, ca_file=str(stranger_certificate.cert)),
    ):
        pass


def test_system_trust_refuses_a_self_signed_server(tls_server: FtpServer) -> None:
    with (
        pytest.raises(TransportError, match=r"starting TLS failed: .*self-signed certificate"),
        connect(tls_server, ca_file=None),
    ):
        pass


def test_missing_ca_file(tls_server: FtpServer, tmp_path: Path) -> None:
    with (
        pytest.raises(TransportError, match="cannot load the archive CA file"),
        connect(tls_server, ca_file=str(tmp_path / "missing.pem")),
    ):
        pass


def test_plain_ftp_against_a_server_that_requires_tls(tls_server: FtpServer) -> None:
    target = FtpTarget.from_url(tls_server.url(scheme="ftp"))
    with (
        pytest.raises(TransportError, match=r"^ftp://.*:\*\*\*@.*logging in failed: 5[35]0 ") as caught,
        ArchiveStore(target, TIMEOUT),
    ):
        pass
    assert tls_server.password not in str(caught.value)


def test_data_connections_are_tls(tls_server: FtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every data connection is TLS, and with vsftpd resumes the control connection's session."""
    seen: list[tuple[str, bool, bool]] = []
    original = _SessionReusingFTP_TLS.ntransfercmd

    def spy(self: _SessionReusingFTP_TLS, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        conn, size = original(self, cmd, rest)
        reused = isinstance(conn, ssl.SSLSocket) and bool(conn.session_reused)
        seen.append((cmd.split()[0], isinstance(conn, ssl.SSLSocket), reused))
        return conn, size

    monkeypatch.setattr(_SessionReusingFTP_TLS, "ntransfercmd", spy)
    with connect(tls_server) as store:
        store.upload("block-1.zip", BLOCK)
        assert store.list() == ["block-1.zip"]
    assert [verb for verb, _, _ in seen] == ["STOR", "RETR", "NLST"]
    assert all(tls for _, tls, _ in seen)
    if tls_server.kind == "vsftpd":
        assert all(reused for _, _, reused in seen)


def test_vsftpd_refuses_data_connections_without_tls_session_reuse(vsftpd_server: FtpServer) -> None:
    """Why the store resumes the TLS session: Python's stock FTP_TLS does not, and vsftpd refuses it."""
    context = ssl.create_default_context(cafile=vsftpd_server.ca_file)
    with ftplib.FTP_TLS(context=context, timeout=TIMEOUT) as stock:
        stock.connect(HOST, vsftpd_server.port)
        stock.login(vsftpd_server.user, vsftpd_server.password)
        with pytest.raises(ftplib.error_perm, match=r"^522 Data connections must be encrypted"):
            stock.nlst()
        stock.prot_p()
        with pytest.raises(ftplib.error_perm, match=r"^522 SSL connection failed: session reuse required"):
            stock.nlst()
    with connect(vsftpd_server) as store:
        assert store.list() == []
