"""A node whose newest blocks were deleted from its database: `medledger verify` and the node at
start compare the tip with the archive's newest zip (a real FTP server) and report the chain as
shorter than what was already final; the node's /healthz names the chain and it produces no
block over the lost ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete

from core.crypto import UserKeys
from portal import create_app, runtime
from portal.config import TestConfig
from portal.extensions import db
from portal.ftp import ArchiveStore
from portal.models import LedgerBlock, LedgerTransaction, utcnow
from portal.services import accounts, archive, ledger
from tests.archive.conftest import FtpServer, free_port
from tests.conftest import make_config, produce, use_key_pool
from tests.test_supervision import START_TIMEOUT, flask, gunicorn, health_is, node_env, wait_for


@pytest.fixture(autouse=True)
def fast_keys(monkeypatch: pytest.MonkeyPatch, key_pool: list[UserKeys]) -> None:
    use_key_pool(monkeypatch, key_pool)


def grow(app: Flask, blocks: int) -> int:
    """`blocks` more blocks, one patient's key registration each; returns the tip height."""
    for n in range(blocks):
        accounts.create_user(
            role="patient", username=f"patient{ledger.tip().height}-{n}", password="long-enough-pw",  # type: ignore[union-attr]
            display_name="P", kdf=runtime.kdf(), home=runtime.node_key(), now=utcnow(),
        )  # fmt: skip
        produce(app)
    tip = ledger.tip()
    assert tip is not None
    return tip.height


def archive_all(server: FtpServer) -> int:
    archive.enqueue_final()
    return archive.upload_due(lambda: ArchiveStore(server.target()), utcnow())


def delete_above(height: int) -> None:
    """What the damage was: the newest blocks and their transactions deleted from the database."""
    db.session.execute(delete(LedgerTransaction).where(LedgerTransaction.block_height > height))
    db.session.execute(delete(LedgerBlock).where(LedgerBlock.height > height))
    db.session.commit()


def test_verify_reports_a_chain_shorter_than_the_archive(
    app: Flask, client: FlaskClient, ftp_server: FtpServer
) -> None:
    top = grow(app, 4)
    assert archive_all(ftp_server) == top + 1
    app.config["ARCHIVE_FTP_URL"] = ftp_server.url()
    runner = app.test_cli_runner()
    whole = runner.invoke(args=["medledger", "verify"])
    assert whole.exit_code == 0, whole.output
    assert f"compared with archive: final through height {top}" in whole.output

    delete_above(top - 2)
    cut = runner.invoke(args=["medledger", "verify"])
    assert cut.exit_code == 1, cut.output
    assert f"chain valid: {top - 1} blocks" in cut.output  # what is left validates: only the archive shows the loss
    assert (
        f"chain SHORTER than what is already final: tip at height {top - 2}, "
        f"but the archive's newest zip is height {top}"
    ) in cut.output


def test_verify_reports_another_block_at_an_archived_height(
    app: Flask, client: FlaskClient, ftp_server: FtpServer
) -> None:
    top = grow(app, 3)
    archive_all(ftp_server)
    delete_above(top - 1)
    grow(app, 1)  # a new block where the archived one stood
    app.config["ARCHIVE_FTP_URL"] = ftp_server.url()
    result = app.test_cli_runner().invoke(args=["medledger", "verify"])
    assert result.exit_code == 1, result.output
    assert f"chain DIFFERS from archive at final height {top}" in result.output


def test_verify_says_when_the_archive_cannot_be_asked(app: Flask, client: FlaskClient, ftp_server: FtpServer) -> None:
    grow(app, 1)
    app.config["ARCHIVE_FTP_URL"] = ftp_server.url().replace(f":{ftp_server.port}/", f":{free_port()}/")
    result = app.test_cli_runner().invoke(args=["medledger", "verify"])
    assert result.exit_code == 2, result.output
    assert "could not compare with archive" in result.output
    assert ftp_server.password not in result.output


def test_a_node_started_on_a_truncated_chain_reports_it_and_holds_production(
    tmp_path: Path, ftp_server: FtpServer
) -> None:
    folder = tmp_path / "node"
    database = folder / "node.db"

    class NodeConfig(make_config(folder)):  # type: ignore[misc]
        SQLALCHEMY_DATABASE_URI = f"sqlite:///{database}"

    built = create_app(NodeConfig)
    built.instance_path = str(folder)
    with built.app_context():
        db.create_all()
        runtime.node_key(create=True)
        runtime.ensure_chain(utcnow())
        top = grow(built, 4)
        archive_all(ftp_server)
        delete_above(top - 2)
        accounts.create_user(role="patient", username="waiting", password="long-enough-pw", display_name="W",
                             kdf=runtime.kdf(), home=runtime.node_key(), now=utcnow())  # fmt: skip
        db.session.remove()
        db.engine.dispose()

    port = free_port()
    env = node_env(folder, port, ARCHIVE_FTP_URL=ftp_server.url(), SECRET_KEY=TestConfig.SECRET_KEY)
    log = tmp_path / "node.log"
    with gunicorn(env, log):
        named = health_is(port, 503, lambda found: found["failing"] == ["chain"])
        short = wait_for(named, START_TIMEOUT, "/healthz naming the chain", log)
        assert short["parts"]["chain"] == {
            "state": "short", "height": top - 2, "final_elsewhere": top,
            "checked_seconds_ago": short["parts"]["chain"]["checked_seconds_ago"],
        }  # fmt: skip
        said = (
            f"chain SHORTER than what is already final: tip at height {top - 2}, "
            f"but the archive's newest zip is height {top}"
        )
        wait_for(lambda: f"not producing blocks: {said}" in log.read_text(), 20, "production held", log)
        assert f"ERROR portal.producer: {said}" in log.read_text()  # logged at start
        with sqlite3.connect(database) as conn:
            assert conn.execute("SELECT max(height) FROM ledger_blocks").fetchone()[0] == top - 2
            assert conn.execute("SELECT count(*) FROM ledger_transactions WHERE status = 'pending'").fetchone()[0] == 1
        verify = flask(env, "medledger", "verify")
        assert verify.returncode == 1, verify.stdout + verify.stderr
        assert said in verify.stdout
