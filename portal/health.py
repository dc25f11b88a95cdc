"""`GET /healthz`: the node's parts (database, producer, archiver, peers, chain) for load
balancers, supervisors and the admin. 200 when every part works, 503 naming the parts that do
not. Open like the ledger: it shows states and heights only (services/health.py)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify

from portal import runtime
from portal.services import health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    found = health.report(Path(current_app.instance_path), runtime.archiving(), runtime.genesis_file() is not None)
    response = jsonify(found)
    response.headers["Cache-Control"] = "no-store"
    return response, 503 if found["failing"] else 200
