"""The suite runs on pytest-xdist workers (`make test`). Each worker on PostgreSQL gets a database of
its own, `<TEST_DATABASE_URL's database>_<worker>`, created when missing: every test drops and
recreates the tables of its database, so workers must not share one. This runs when the package is
first imported, before `portal.config` reads TEST_DATABASE_URL."""

from __future__ import annotations

import os


def worker_index() -> int:
    """0 outside xdist, else the number of this worker (gw0 -> 0, gw1 -> 1, ...)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def _use_worker_database() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not worker or not url.startswith("postgresql"):
        return
    from sqlalchemy import create_engine, make_url, text

    base = make_url(url)
    name = f"{base.database}_{worker}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}).scalar() is None:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    os.environ["TEST_DATABASE_URL"] = base.set(database=name).render_as_string(hide_password=False)


_use_worker_database()
