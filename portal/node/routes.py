from __future__ import annotations

from flask import Response, current_app, jsonify, request

from core.encoding import b64d, b64e
from core.errors import CoreError, InvalidBlock
from portal import runtime
from portal.api import json_body
from portal.models import utcnow
from portal.node import bp
from portal.services import accounts, federation, ledger, proxy
from portal.services.errors import NotFound, ValidationFailed
from portal.services.inputs import whole_number


@bp.get("/status")
def status() -> Response:
    current = ledger.tip()
    return jsonify(
        node=runtime.node_key().node_id,
        height=current.height if current else -1,
        tip=current.hash if current else None,
        final=ledger.final_height(),
    )


@bp.get("/peers")
def peers() -> Response:
    genesis = runtime.genesis_file()
    return jsonify(peers=[{"id": n, "url": u} for n, u in (genesis.peers.items() if genesis else [])])


@bp.get("/blocks")
def blocks() -> Response:
    start = whole_number(request.args.get("from"), "from", default=0)
    limit = whole_number(request.args.get("limit"), "limit", default=50, low=1, high=ledger.MAX_PAGE)
    return jsonify(blocks=ledger.raw_blocks(start, limit))


@bp.post("/blocks")
def announce() -> tuple[Response, int]:
    data = json_body()
    try:
        header = b64d(data.get("header"))
        transactions = [b64d(t) for t in data.get("transactions") or []]
        outcome = ledger.receive_block(header, transactions, utcnow(), runtime.max_skew_ms())
    except InvalidBlock as exc:
        current_app.logger.warning("refused block from %s: %s", request.headers.get("X-MedLedger-Node"), exc)
        if exc.check in ("encoding", "transaction signature"):
            ledger.report_invalid_block(runtime.node_key(), header, transactions, utcnow())
        return jsonify(
            error={"code": "invalid_block", "message": str(exc), "height": exc.height, "check": exc.check}
        ), 422
    except CoreError as exc:
        return jsonify(error={"code": "invalid_block", "message": str(exc)}), 422
    return jsonify(outcome=outcome), 200


@bp.post("/transactions")
def transactions() -> Response:
    items = json_body().get("transactions")
    if not isinstance(items, list) or len(items) > 1000:
        raise ValidationFailed("`transactions` must be a list of at most 1000 encoded transactions.")
    accepted, rejected = 0, 0
    for item in items:
        try:
            accepted += ledger.accept_from_peer(b64d(item), utcnow())
        except (CoreError, TypeError):
            rejected += 1
    return jsonify(accepted=accepted, rejected=rejected)


@bp.get("/blobs/<sha256>")
def blob(sha256: str) -> Response:
    """An attachment's ciphertext by its SHA-256 (the hash on the ledger): public, like the ledger."""
    data = federation.local_blob(sha256)
    if data is None:
        raise NotFound("No such attachment here.")
    return jsonify(data=b64e(data))


@bp.post("/reencrypt")
def reencrypt() -> Response:
    """A holder's capsule fragments for a read under a grant or a declared emergency
    (services/proxy.py says what it checks)."""
    body = json_body()
    encoded, declared = body.get("access"), body.get("emergency")
    if not isinstance(encoded, str):
        raise ValidationFailed("`access` must be the reader's signed access entry (base64url).")
    if declared is not None and not isinstance(declared, str):
        raise ValidationFailed("`emergency` must be the reader's signed emergency (base64url).")
    try:
        access = b64d(encoded)
        emergency = b64d(declared) if declared is not None else None
    except CoreError:
        raise ValidationFailed("`access` and `emergency` must be base64url.") from None
    answers = proxy.serve(access, utcnow(), runtime.node(), emergency)
    return jsonify(fragments=answers)


@bp.get("/accounts/<account_id>")
def account(account_id: str) -> Response:
    """Name and hospital of an account registered here, for a member node that shows it."""
    user = accounts.get_local_user(account_id)
    return jsonify(federation.describe(user))


@bp.get("/doctors")
def doctors() -> Response:
    """This hospital's doctors matching `q`, for another member's doctor search."""
    found = accounts.find_users("doctor", request.args.get("q", ""), local_only=True)
    return jsonify(doctors=[federation.describe(user) for user in found])
