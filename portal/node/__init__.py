"""Node-to-node API under /node/v1. Reading blocks, status and attachment ciphertext is open,
like the ledger itself (a joining hospital syncs before it is a member); everything else
(announcing blocks, gossip, re-encryption, the directory of accounts) must be signed by a
member node, fresh and not replayed."""

from __future__ import annotations

import time

from apiflask import APIBlueprint
from flask import current_app, g, request

from core.consensus.messages import ReplayGuard, verify_request
from core.errors import InvalidSignature
from portal.services import ledger
from portal.services.errors import Unauthorized

bp = APIBlueprint("node", __name__, url_prefix="/node/v1", tag="Node")


OPEN = {"node.status", "node.peers", "node.blocks", "node.blob"}


@bp.before_request
def authenticate() -> None:
    if request.method == "GET" and request.endpoint in OPEN:
        return
    guard = current_app.extensions.setdefault("medledger.replay_guard", ReplayGuard())
    try:
        g.peer = verify_request(
            request.headers, request.method, request.full_path.rstrip("?"), request.get_data(),
            ledger.consensus_state().node_keys, int(time.time() * 1000), guard,
        )  # fmt: skip
    except InvalidSignature as exc:
        raise Unauthorized(f"Node message refused: {exc}.") from None


from portal.node import escrow, routes  # noqa: E402,F401
