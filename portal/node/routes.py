"""The node-to-node routes (/node/v1) on the contract: each validates its input and shapes its
answer with the schemas below, which are also the node document (/node/v1/openapi.json).
Signed routes are checked in portal/node/__init__.py before a view runs."""

from __future__ import annotations

from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Integer, List, Nested, Raw, String
from apiflask.validators import Length, OneOf, Range
from flask import Response, current_app, jsonify, request

from core.encoding import b64d, b64e
from core.errors import CoreError, InvalidBlock
from portal import runtime
from portal.api.schemas import ErrorDetail, Text, answer
from portal.models import utcnow
from portal.node import bp
from portal.openapi import NODE_SIGNATURE
from portal.services import accounts, federation, ledger, network, proxy
from portal.services.errors import NotFound, ValidationFailed
from portal.services.inputs import MAX_OFFSET

# -- shapes

BASE64URL = "Unpadded base64url of the canonical bytes."
OUTCOMES = ("appended", "known", "ahead", "fork")
GOSSIP_MESSAGE = "`transactions` must be a list of at most 1000 encoded transactions."
ACCESS_MESSAGE = "`access` must be the reader's signed access entry (base64url)."
EMERGENCY_MESSAGE = "`emergency` must be the reader's signed emergency (base64url)."


_answer = answer


def _whole(name: str, low: int, high: int, default: int) -> Integer:
    """A whole number from the query string, in today's wording when it is not one or out of range."""
    message = f"`{name}` must be a whole number from {low} to {high}."
    return Integer(
        data_key=name,
        load_default=default,
        validate=Range(low, high, error=message),
        error_messages={"invalid": message, "null": message},
    )


class NodeStatus(Schema):
    node = String(required=True, metadata={"example": "node-1"})
    height = Integer(required=True, metadata={"description": "The tip's height; -1 before the genesis block."})
    tip = String(required=True, allow_none=True, metadata={"description": "The tip's hash (hex); null without one."})
    final = Integer(required=True, metadata={"description": "The highest final height."})


class NodePeer(Schema):
    id = String(required=True, metadata={"example": "node-2"})
    url = String(required=True, metadata={"example": "https://node-2.example:8443"})


class NodePeers(Schema):
    peers = List(Nested(NodePeer), required=True, metadata={"description": "The genesis file's member nodes."})


class NodeBlocksQuery(Schema):
    from_ = _whole("from", 0, MAX_OFFSET, 0)
    limit = _whole("limit", 1, ledger.MAX_PAGE, 50)


class NodeBlock(Schema):
    header = String(required=True, metadata={"description": "The block header. " + BASE64URL})
    transactions = List(String(), required=True, metadata={"description": "The block's transactions. " + BASE64URL})


class NodeBlocks(Schema):
    blocks = List(Nested(NodeBlock), required=True)


class NodeAnnounce(Schema):
    """A block a member node announces: header and transactions as they are signed."""

    header = Text(required=True, metadata={"description": "The block header. " + BASE64URL})
    transactions = List(Text(), load_default=list, metadata={"description": "The block's transactions. " + BASE64URL})


class NodeBlockOutcome(Schema):
    outcome = String(
        required=True,
        validate=OneOf(OUTCOMES),
        metadata={
            "description": "appended: it extends our tip; known: we have it; ahead: blocks are missing "
            "before it; fork: it competes with ours."
        },
    )


class NodeBlockRefusalDetail(ErrorDetail):
    code = String(required=True, metadata={"example": "invalid_block"})
    message = String(required=True, metadata={"example": "block 12: producer signature: does not verify"})
    height = Integer(metadata={"description": "The refused block's height (-1 if it does not decode)."})
    check = String(metadata={"description": "The validation check it failed.", "example": "producer signature"})


class NodeBlockRefusal(Schema):
    """A refused block (code `invalid_block`, with `height` and `check` when a named check failed)
    or a body that is not an announcement (code `validation_failed`, with `fields`)."""

    error = Nested(NodeBlockRefusalDetail, required=True)


class NodeTransactions(Schema):
    transactions = List(
        Raw(metadata={"description": "A signed transaction. " + BASE64URL + " Anything else is counted as rejected."}),
        required=True,
        validate=Length(max=1000, error=GOSSIP_MESSAGE),
        error_messages={"required": GOSSIP_MESSAGE, "invalid": GOSSIP_MESSAGE, "null": GOSSIP_MESSAGE},
    )


class NodeTransactionCount(Schema):
    accepted = Integer(required=True, metadata={"description": "New transactions taken into the pool."})
    rejected = Integer(required=True, metadata={"description": "Items that are not valid transactions."})


class NodeBlob(Schema):
    data = String(required=True, metadata={"description": "The attachment's ciphertext. " + BASE64URL})


class NodeReencrypt(Schema):
    access = Text(
        required=True,
        metadata={"description": "The reader's signed access entry. " + BASE64URL},
        error_messages={"required": ACCESS_MESSAGE, "invalid": ACCESS_MESSAGE, "null": ACCESS_MESSAGE},
    )
    emergency = Text(
        load_default=None,
        allow_none=True,
        metadata={"description": "For a read under a declared emergency: the signed emergency. " + BASE64URL},
        error_messages={"invalid": EMERGENCY_MESSAGE},
    )


class NodeFragment(Schema):
    share = Integer(required=True)
    threshold = Integer(required=True, metadata={"description": "m: the fragments a reader needs."})
    cfrag = String(required=True, metadata={"description": "The capsule fragment. " + BASE64URL})


class NodeFragments(Schema):
    fragments = List(Nested(NodeFragment), required=True)


class NodeAccount(Schema):
    """An account registered at this node, as it tells other member nodes."""

    id = String(required=True)
    role = String(required=True, metadata={"enum": ["patient", "doctor", "admin"]})
    display_name = String(required=True)
    hospital = String(required=True, allow_none=True, metadata={"description": "A doctor's hospital; null otherwise."})
    home = String(required=True, allow_none=True, metadata={"description": "The node id it is registered at."})
    home_hospital = String(required=True, allow_none=True)
    # A patient's only (absent for other accounts):
    date_of_birth = String(allow_none=True, metadata={"format": "date", "description": "Null if not given."})
    mrn = String(allow_none=True, metadata={"description": "A patient's number at this hospital; null until checked."})
    verified = Boolean(metadata={"description": "A patient's: identity checked here in person."})


class NodeDoctor(NodeAccount):
    """A doctor registered at this node (its own class: apispec lists a class once, top-level or nested)."""


class NodeDoctorsQuery(Schema):
    q = Text(load_default="", metadata={"description": "At least 2 characters of a name, username or hospital."})


class NodeDoctors(Schema):
    doctors = List(Nested(NodeDoctor), required=True)


UNSIGNED = _answer("Not signed by a member node, too old or from the future, or replayed.")
INVALID = _answer("A field is missing or not valid (`fields` says which).")

# -- routes


@bp.get("/status")
@bp.output(NodeStatus)
@bp.doc(operation_id="nodeStatus", summary="This node's tip and final height")
def status() -> dict[str, Any]:
    current = ledger.tip()
    return {
        "node": runtime.node_key().node_id,
        "height": current.height if current else -1,
        "tip": current.hash if current else None,
        "final": ledger.final_height(),
    }


@bp.get("/peers")
@bp.output(NodePeers)
@bp.doc(operation_id="nodePeers", summary="The consortium's member nodes")
def peers() -> dict[str, Any]:
    genesis = runtime.genesis_file()
    return {"peers": [{"id": n, "url": u} for n, u in (genesis.peers.items() if genesis else [])]}


@bp.get("/blocks")
@bp.input(NodeBlocksQuery, location="query", arg_name="query")
@bp.output(NodeBlocks)
@bp.doc(operation_id="nodeBlocks", summary="Blocks from a height, as signed", responses={"422": INVALID})
def blocks(query: dict[str, Any]) -> dict[str, Any]:
    return {"blocks": ledger.raw_blocks(query["from_"], query["limit"])}


@bp.post("/blocks")
@bp.input(NodeAnnounce, location="json", arg_name="data")
@bp.output(NodeBlockOutcome)
@bp.doc(
    operation_id="nodeAnnounceBlock",
    summary="Announce a block",
    security=NODE_SIGNATURE,
    responses={
        "401": UNSIGNED,
        "422": _answer("The block is refused (`check` names the check) or the body is not valid.", NodeBlockRefusal),
    },
)
def announce(data: dict[str, Any]) -> dict[str, Any] | Response:
    try:
        header = b64d(data["header"])
        transactions = [b64d(t) for t in data["transactions"]]
        outcome = ledger.receive_block(header, transactions, utcnow(), runtime.max_skew_ms())
    except InvalidBlock as exc:
        current_app.logger.warning("refused block from %s: %s", request.headers.get("X-MedLedger-Node"), exc)
        if exc.check in ("encoding", "transaction signature"):
            ledger.report_invalid_block(runtime.node_key(), header, transactions, utcnow())
        return _refused({"code": "invalid_block", "message": str(exc), "height": exc.height, "check": exc.check})
    except CoreError as exc:
        return _refused({"code": "invalid_block", "message": str(exc)})
    if outcome == "fork":  # two blocks of one producer for one slot are proof against it
        network.report_equivocation(runtime.node_key(), header, utcnow())
    return {"outcome": outcome}


def _refused(error: dict[str, Any]) -> Response:
    """A refused block's answer, with its extra keys (not the 200 shape @output gives)."""
    answer = jsonify(error=error)
    answer.status_code = 422
    return answer


@bp.post("/transactions")
@bp.input(NodeTransactions, location="json", arg_name="data")
@bp.output(NodeTransactionCount)
@bp.doc(
    operation_id="nodeGossipTransactions",
    summary="Gossip pending transactions",
    security=NODE_SIGNATURE,
    responses={"401": UNSIGNED, "422": INVALID},
)
def transactions(data: dict[str, Any]) -> dict[str, Any]:
    items: list[bytes] = []
    rejected = 0
    for item in data["transactions"]:
        try:
            items.append(b64d(item))
        except (CoreError, TypeError):
            rejected += 1
    outcomes = ledger.accept_from_peers(items, utcnow())
    rejected += sum(isinstance(o, CoreError) for o in outcomes)
    return {"accepted": sum(o is True for o in outcomes), "rejected": rejected}


@bp.get("/blobs/<sha256>")
@bp.output(NodeBlob)
@bp.doc(
    operation_id="nodeBlob",
    summary="An attachment's ciphertext",
    responses={"404": _answer("No attachment with that hash is held here.")},
)
def blob(sha256: str) -> dict[str, Any]:
    """An attachment's ciphertext by its SHA-256 (the hash on the ledger): public, like the ledger."""
    data = federation.local_blob(sha256)
    if data is None:
        raise NotFound("No such attachment here.")
    return {"data": b64e(data)}


@bp.post("/reencrypt")
@bp.input(NodeReencrypt, location="json", arg_name="data")
@bp.output(NodeFragments)
@bp.doc(
    operation_id="nodeReencrypt",
    summary="Capsule fragments for a read",
    security=NODE_SIGNATURE,
    responses={
        "401": UNSIGNED,
        "403": _answer("This holder will not re-encrypt for this read (the message says why)."),
        "404": _answer("This node does not know the grant, emergency or record (yet)."),
        "422": INVALID,
    },
)
def reencrypt(data: dict[str, Any]) -> dict[str, Any]:
    """A holder's capsule fragments for a read under a grant or a declared emergency
    (services/proxy.py says what it checks)."""
    declared = data["emergency"]
    try:
        access = b64d(data["access"])
        emergency = b64d(declared) if declared is not None else None
    except CoreError:
        raise ValidationFailed("`access` and `emergency` must be base64url.") from None
    return {"fragments": proxy.serve(access, utcnow(), runtime.node(), emergency)}


@bp.get("/accounts/<account_id>")
@bp.output(NodeAccount)
@bp.doc(
    operation_id="nodeAccount",
    summary="An account registered here",
    security=NODE_SIGNATURE,
    responses={"401": UNSIGNED, "404": _answer("No such account registered here.")},
)
def account(account_id: str) -> dict[str, Any]:
    """Name and hospital of an account registered here (and a patient's date of birth, hospital
    number and in-person check), for a member node that shows it to a doctor."""
    return federation.describe(accounts.get_local_user(account_id))


@bp.get("/doctors")
@bp.input(NodeDoctorsQuery, location="query", arg_name="query")
@bp.output(NodeDoctors)
@bp.doc(
    operation_id="nodeDoctors",
    summary="This hospital's doctors matching a search",
    security=NODE_SIGNATURE,
    responses={"401": UNSIGNED, "422": _answer("The search has fewer than 2 characters, or a field is not valid.")},
)
def doctors(query: dict[str, Any]) -> dict[str, Any]:
    """This hospital's doctors matching `q`, for another member's doctor search."""
    found = accounts.find_users("doctor", query["q"], local_only=True)
    return {"doctors": [federation.describe(user) for user in found]}
