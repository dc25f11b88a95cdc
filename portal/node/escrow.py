"""Node-to-node routes of hospital-assisted recovery (services/escrow.py, docs/recovery.md). All
are signed by a member node (checked in portal/node/__init__.py, which sets `g.peer`); the
service checks that the signer is the node the share or case belongs to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Dict, String
from flask import g

from portal.api.schemas import Text, answer
from portal.models import utcnow
from portal.node import bp
from portal.node.routes import INVALID, UNSIGNED
from portal.openapi import NODE_SIGNATURE
from portal.services import escrow

SEALED = "Sealed to the receiving node's box key (X25519 + AES-256-GCM), unpadded base64url."
APPROVER = {
    "description": "An admin: {account, name, signature, at}. `signature` (base64url) is the admin's own RSA-PSS "
    "signature, with the key their `key` transaction registered, over the case's approval statement made at `at` "
    "(epoch ms): docs/recovery.md, *Signed approvals*. Without a valid one the request is refused (403)."
}


class NodeEscrowDeposit(Schema):
    account = Text(required=True, metadata={"description": "The account id (at the sending home node)."})
    share = Text(required=True, metadata={"description": "The held share. " + SEALED})


class NodeEscrowAccount(Schema):
    account = Text(required=True, metadata={"description": "The account id (at the sending home node)."})


class NodeEscrowHeld(Schema):
    held = Boolean(required=True, metadata={"description": "Whether this node now holds a share of the account."})


class NodeEscrowCase(Schema):
    case = Text(required=True)
    account = Text(required=True)
    identity_check = Text(required=True, metadata={"description": "How the home desk checked the identity."})
    opened_by = Dict(required=True, metadata=APPROVER)


class NodeEscrowCaseState(Schema):
    case = String(required=True)
    status = String(required=True, metadata={"enum": ["waiting", "released", "approved"]})


class NodeEscrowRelease(Schema):
    case = Text(required=True)
    account = Text(required=True)
    opened_by = Dict(required=True, metadata=APPROVER)
    approved_by = Dict(required=True, metadata=APPROVER)


class NodeEscrowShare(Schema):
    share = String(required=True, metadata={"description": "The held share for this case. " + SEALED})


class NodeEscrowApproval(Schema):
    account = Text(required=True)
    share = Text(required=True, metadata={"description": "The held share for this case. " + SEALED})
    approved_by = Dict(required=True, metadata=APPROVER)


REFUSED = answer("The signer may not do this for this account or case (the message says why).")
UNKNOWN = answer("No share or case of that account here.")
TAKEN = answer("The case is not in a state for this (released, approved or cancelled already).")
ABOUT_A_CASE = {"403": REFUSED, "404": UNKNOWN, "409": TAKEN}

View = Callable[..., dict[str, Any]]


def signed_post(
    path: str, body: type[Schema], reply: type[Schema], operation_id: str, summary: str, refusals: dict[str, Any]
) -> Callable[[View], View]:
    """Register a node-to-node POST signed by a member node, as every such route is on the
    contract: its JSON body (`data`) and answer schemas, and its entry in the node document with
    the answers all signed routes share (401 unsigned, 422 invalid) around its own `refusals`."""

    def register(view: View) -> View:
        responses = {"401": UNSIGNED, **refusals, "422": INVALID}
        view = bp.doc(operation_id=operation_id, summary=summary, security=NODE_SIGNATURE, responses=responses)(view)
        view = bp.output(reply)(view)
        view = bp.input(body, location="json", arg_name="data")(view)
        return bp.post(path)(view)

    return register


@signed_post("/escrow/deposit", NodeEscrowDeposit, NodeEscrowHeld, "nodeEscrowDeposit",
             "Hold an escrow share of the signer's account", {})  # fmt: skip
def deposit(data: dict[str, Any]) -> dict[str, Any]:
    escrow.hold(g.peer, data["account"], data["share"], escrow.here(), utcnow())
    return {"held": True}


@signed_post("/escrow/withdraw", NodeEscrowAccount, NodeEscrowHeld, "nodeEscrowWithdraw",
             "Delete the escrow share of the signer's account", {})  # fmt: skip
def withdraw(data: dict[str, Any]) -> dict[str, Any]:
    escrow.withdraw(g.peer, data["account"])
    return {"held": False}


@signed_post("/escrow/cases", NodeEscrowCase, NodeEscrowCaseState, "nodeEscrowCase",
             "A recovery case for this node's admins to approve", ABOUT_A_CASE)  # fmt: skip
def case(data: dict[str, Any]) -> dict[str, Any]:
    taken = escrow.take_case(g.peer, data, utcnow())
    return {"case": taken.id, "status": taken.status}


@signed_post("/escrow/release", NodeEscrowRelease, NodeEscrowShare, "nodeEscrowRelease",
             "Release a held share for a case two home admins approved", ABOUT_A_CASE)  # fmt: skip
def release(data: dict[str, Any]) -> dict[str, Any]:
    return {"share": escrow.release_to_home(g.peer, data, escrow.here(), utcnow())}


@signed_post("/escrow/cases/<case_id>/approval", NodeEscrowApproval, NodeEscrowCaseState, "nodeEscrowApproval",
             "The holder's admin approved a case: its share, for the home node", ABOUT_A_CASE)  # fmt: skip
def approval(case_id: str, data: dict[str, Any]) -> dict[str, Any]:
    taken = escrow.take_approval(g.peer, case_id, data, utcnow())
    return {"case": taken.id, "status": taken.status}
