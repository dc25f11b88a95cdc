"""`flask --app wsgi medledger ...`: accounts, node key, blocks, verification, demo data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from core.encoding import b64e
from core.errors import ArchiveError, CoreError
from core.ledger import sign_transaction
from portal import runtime
from portal.ftp import ArchiveStore, TransportError
from portal.models import epoch_ms, utcnow
from portal.services import accounts, archive, health, ledger
from portal.services.errors import ServiceError


@click.group()
def medledger() -> None:
    """MedLedger node administration."""


@medledger.command("create-user")
@click.option("--role", type=click.Choice(accounts.ROLES), required=True)
@click.option("--username", required=True)
@click.option("--password", help="Prompted for (hidden, twice) when left out.")
@click.option("--display-name", help="Defaults to the username.")
@click.option("--hospital", help="Doctors only.")
@click.option("--licence-number", help="Doctors only.")
@with_appcontext
def create_user(
    role: str,
    username: str,
    password: str | None,
    display_name: str | None,
    hospital: str | None,
    licence_number: str | None,
) -> None:
    """Create an account with its keys (and queue its key registration on the ledger)."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = accounts.create_user(
            role=role,
            username=username,
            password=password,
            display_name=display_name or username,
            hospital=hospital,
            licence_number=licence_number,
            kdf=runtime.kdf(),
            home=runtime.node_key(),
            now=utcnow(),
        )
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"created {user.role} {user.username} ({user.public_id})")


@medledger.group()
def node() -> None:
    """This node's identity."""


@node.command("init")
@with_appcontext
def node_init() -> None:
    """Create the node key (if missing) and the genesis block (if the chain is empty)."""
    key = runtime.node_key(create=True)
    had_chain = ledger.tip() is not None
    runtime.ensure_chain(utcnow())
    click.echo(f"node {key.node_id} key {key.key_id[:16]}; genesis {'already present' if had_chain else 'installed'}")


@node.command("show")
@with_appcontext
def node_show() -> None:
    """Print this node's id and public key (what a joining hospital sends to the members)."""
    key = runtime.node_key()
    click.echo(f"node id: {key.node_id}\npublic key: {b64e(key.public_raw)}")


@node.command("admit")
@click.option("--node-id", required=True)
@click.option("--key", "public_key", required=True, help="The joining node's public key (from its `node show`).")
@click.option("--url", required=True, help="Where the joining node answers, e.g. https://node.hospital.example")
@with_appcontext
def node_admit(node_id: str, public_key: str, url: str) -> None:
    """Vote, as this member node, to admit a new hospital node; it joins once more than two
    thirds of the members have voted so."""
    key = runtime.node_key()
    try:
        tx = sign_transaction("admit", {"node": node_id, "key": public_key, "url": url}, key, epoch_ms(utcnow()))
        ledger.accept_from_peer(tx.encoded, utcnow())
    except CoreError as exc:
        raise click.ClickException(f"vote refused: {exc}") from None
    click.echo(f"vote to admit {node_id} queued ({tx.hash[:16]})")


@medledger.group()
def consortium() -> None:
    """A local consortium of several nodes."""


@consortium.command("up")
@click.option("--nodes", "count", type=click.IntRange(1, 21), default=4, show_default=True)
@click.option("--base-port", type=click.IntRange(1024, 65000), default=7000, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--demo", is_flag=True, help="Load demo data across the first three hospitals (a new consortium only).")
def consortium_up(count: int, base_port: int, data_dir: Path, demo: bool) -> None:
    """Start COUNT nodes on 127.0.0.1 (ports from --base-port), each with its own database under
    --data-dir, sharing one genesis; print their URLs; Ctrl-C stops them all."""
    from portal.launcher import up

    if demo and count < 3:
        raise click.UsageError("--demo needs at least 3 nodes.")
    up(data_dir.resolve(), count, base_port, demo)  # the nodes' settings name their folders absolutely


@medledger.group("archive")
def archive_group() -> None:
    """The FTP archive of final blocks (docs/archive.md)."""


def _store() -> ArchiveStore:
    connect = runtime.archive_store()
    if connect is None:
        raise click.ClickException("no archive configured: set ARCHIVE_FTP_URL")
    return connect()


@archive_group.command("verify")
@with_appcontext
def archive_verify() -> None:
    """Download the whole archive and validate the chain from it alone. Exit 0 if valid, 1 with
    the first bad file, height and check."""
    try:
        with _store() as store:
            report = archive.verify(store)
    except TransportError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.describe())
    sys.exit(0 if report.valid else 1)


@archive_group.command("restore")
@click.option("--into", "database_url", required=True, help="SQLAlchemy URL of the (empty) database to rebuild.")
@with_appcontext
def archive_restore(database_url: str) -> None:
    """Rebuild a node's ledger from the archive into DATABASE_URL (migrated here if needed), with the
    ciphertext of its attachments; nothing is stored unless the whole archive verifies."""
    from flask_migrate import upgrade

    from portal import create_app
    from portal.config import CONFIGS

    connect = _store
    settings = {"SQLALCHEMY_DATABASE_URI": database_url, "SECRET_KEY": current_app.config["SECRET_KEY"]}
    target = create_app(type("RestoreConfig", (CONFIGS[current_app.config["ENV_NAME"]],), settings))
    try:
        with connect() as store, target.app_context():
            upgrade(directory=str(Path(target.root_path).parent / "migrations"))
            restored = archive.restore(store, utcnow())
    except (TransportError, ArchiveError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    where = database_url.split("@")[-1]
    click.echo(f"restored {restored.blocks} blocks and {restored.attachments} attachments into {where}")


@archive_group.command("status")
@with_appcontext
def archive_status() -> None:
    """The archive's lag behind the final height, and its failures."""
    found = archive.status(utcnow())
    click.echo(
        f"final height {found['final_height']}, archived through {found['archived_through']} "
        f"(lag {found['lag']}); pending {found['pending']}, failed {found['failed']}, uploaded {found['uploaded']}"
    )
    for failure in found["failures"]:
        click.echo(f"  block {failure['height']}: {failure['attempts']} attempts, last error: {failure['error']}")


@archive_group.command("serve-embedded")
@with_appcontext
def archive_serve_embedded() -> None:
    """Run the embedded FTP archive server of `make run` (127.0.0.1, files under instance/ftp)."""
    from portal.embedded_ftp import serve

    serve(Path(current_app.instance_path))


@medledger.command("produce")
@with_appcontext
def produce() -> None:
    """Seal the pending transactions into a block now."""
    runtime.ensure_chain(utcnow())
    height = ledger.seal_pending(runtime.node_key(), current_app.config["MAX_BLOCK_TRANSACTIONS"])
    click.echo("nothing pending" if height is None else f"sealed block {height}")


@medledger.command("producer")
@click.option("--ready-fd", type=int, help="Write `ready` (or `error <why>`) to this file descriptor once started.")
@click.option("--parent", "parent_pid", type=int, help="Stop when this process (the gunicorn master) is gone.")
@with_appcontext
def producer(ready_fd: int | None, parent_pid: int | None) -> None:
    """Run the block producer loop (once per node; `make run` and gunicorn.conf.py start it).
    Exits 1 with a message saying what to do when it cannot start (no node key, no database)."""
    import threading

    from portal.producer import StartError, exit_with_parent, run

    stop = threading.Event()
    if parent_pid is not None:
        exit_with_parent(parent_pid, stop)
    try:
        run(current_app._get_current_object(), stop, lambda: _tell(ready_fd, "ready"))  # type: ignore[attr-defined]
    except StartError as exc:
        _tell(ready_fd, f"error {exc}")
        raise click.ClickException(f"the block producer cannot start: {exc}") from None


def _tell(fd: int | None, line: str) -> None:
    """One line to whoever started us, if it asked (gunicorn.conf.py waits for it)."""
    if fd is None:
        return
    try:
        os.write(fd, line.replace("\n", " ").encode() + b"\n")
        os.close(fd)
    except OSError:
        pass  # it stopped listening: nothing to tell


@medledger.command("verify")
@with_appcontext
def verify() -> None:
    """Validate the stored chain, then compare its tip with what is already final elsewhere: the
    archive's newest zip and every peer's final height. Exit 0 if valid and not shorter; 1 with
    the first bad height and check, or with the heights it falls short of; 2 if valid but the
    archive or a peer could not be asked."""
    report = ledger.verify_chain()
    click.echo(report.describe())
    if not report.valid:
        sys.exit(1)
    try:
        connect = runtime.archive_store()
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(f"the archive is not usable: {exc}") from None
    found = health.gather(connect, runtime.peers())
    for finals in found.finals:
        click.echo(f"compared with {finals.source}: final through height {finals.height}")
    truncation = health.truncation(found.finals)
    click.echo(truncation.describe())
    for source, error in found.errors.items():
        click.echo(f"could not compare with {source}: {error}", err=True)
    sys.exit(1 if not truncation.ok else 2 if found.errors else 0)


@medledger.command("seed-demo")
@with_appcontext
def seed_demo() -> None:
    """Load demo accounts and records (development only; never in production)."""
    from portal.demo import seed

    if current_app.config["ENV_NAME"] != "development":
        raise click.ClickException("demo data is only loaded by `make run` (MEDLEDGER_CONFIG=development)")
    click.echo(seed())
