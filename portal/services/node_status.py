"""What one process of a node publishes for every server of it (docs/ledger.md, *Leader
election*): small JSON values in `node_status`, one row per name, each with its age.

On PostgreSQL, where a node's servers may run on several hosts, a row's time is the database's
clock (`clock_timestamp()`, in UTC) both when it is written and when its age is read, so servers
whose clocks disagree still agree on how old it is. On SQLite (one host) it is this host's clock.
Nothing secret goes in: states, heights, hashes, node and server names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.dialects import postgresql, sqlite

from portal.extensions import db
from portal.models import NodeStatus, utcnow


@dataclass(frozen=True)
class Published:
    """A value and how many seconds ago it was written."""

    value: dict[str, Any]
    age: float


def _now() -> ColumnElement[Any]:
    return func.timezone("UTC", func.clock_timestamp())


def publish(name: str, value: dict[str, Any]) -> None:
    """Replace `name`'s value in the session's transaction (the caller commits)."""
    postgres = db.engine.dialect.name == "postgresql"
    insert = postgresql.insert if postgres else sqlite.insert
    moment = _now() if postgres else utcnow()
    statement = insert(NodeStatus).values(name=name, value=value, updated_at=moment)
    db.session.execute(
        statement.on_conflict_do_update(
            index_elements=[NodeStatus.name],
            set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
        )
    )


def read(*names: str) -> dict[str, Published]:
    """The values published under `names` that exist, with their ages (never negative)."""
    if db.engine.dialect.name == "postgresql":
        age = func.extract("epoch", _now() - NodeStatus.updated_at)
        rows = db.session.execute(select(NodeStatus.name, NodeStatus.value, age).where(NodeStatus.name.in_(names)))
        return {name: Published(value, max(0.0, float(seconds))) for name, value, seconds in rows}
    now = utcnow()
    rows = db.session.execute(
        select(NodeStatus.name, NodeStatus.value, NodeStatus.updated_at).where(NodeStatus.name.in_(names))
    )
    return {name: Published(value, max(0.0, (now - at).total_seconds())) for name, value, at in rows}
