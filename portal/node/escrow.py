"""Node-to-node routes of hospital-assisted recovery (services/escrow.py, docs/recovery.md). All
are signed by a member node (checked in portal/node/__init__.py, which sets `g.peer`); the
service checks that the signer is the node the share or case belongs to."""

from __future__ import annotations

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
APPROVER = {"description": "An admin: {account, name}."}


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


@bp.post("/escrow/deposit")
@bp.input(NodeEscrowDeposit, location="json", arg_name="data")
@bp.output(NodeEscrowHeld)
@bp.doc(
    operation_id="nodeEscrowDeposit",
    summary="Hold an escrow share of the signer's account",
    security=NODE_SIGNATURE,
    responses={"401": UNSIGNED, "422": INVALID},
)
def deposit(data: dict[str, Any]) -> dict[str, Any]:
    escrow.hold(g.peer, data["account"], data["share"], escrow.here(), utcnow())
    return {"held": True}


@bp.post("/escrow/withdraw")
@bp.input(NodeEscrowAccount, location="json", arg_name="data")
@bp.output(NodeEscrowHeld)
@bp.doc(
    operation_id="nodeEscrowWithdraw",
    summary="Delete the escrow share of the signer's account",
    security=NODE_SIGNATURE,
    responses={"401": UNSIGNED, "422": INVALID},
)
def withdraw(data: dict[str, Any]) -> dict[str, Any]:
    escrow.withdraw(g.peer, data["account"])
    return {"held": False}


@bp.post("/escrow/cases")
@bp.input(NodeEscrowCase, location="json", arg_name="data")
@bp.output(NodeEscrowCaseState)
@bp.doc(
    operation_id="nodeEscrowCase",
    summary="A recovery case for this node's admins to approve",
    security=NODE_SIGNATURE,
    responses={"401": UNSIGNED, "403": REFUSED, "404": UNKNOWN, "409": TAKEN, "422": INVALID},
)
def case(data: dict[str, Any]) -> dict[str, Any]:
    taken = escrow.take_case(g.peer, data, utcnow())
    return {"case": taken.id, "status": taken.status}


@bp.post("/escrow/release")
@bp.input(NodeEscrowRelease, location="json", arg_name="data")
@bp.output(NodeEscrowShare)
@bp.doc(
    operation_id="nodeEscrowRelease",
    summary="Release a held share for a case two home admins approved",
    security=NODE_SIGNATURE,
    responses={"401": UNSIGNED, "403": REFUSED, "404": UNKNOWN, "409": TAKEN, "422": INVALID},
)
def release(data: dict[str, Any]) -> dict[str, Any]:
    return {"share": escrow.release_to_home(g.peer, data, escrow.here(), utcnow())}


@bp.post("/escrow/cases/<case_id>/approval")
@bp.input(NodeEscrowApproval, location="json", arg_name="data")
@bp.output(NodeEscrowCaseState)
@bp.doc(
    operation_id="nodeEscrowApproval",
    summary="The holder's admin approved a case: its share, for the home node",
    security=NODE_SIGNATURE,
    responses={"401": UNSIGNED, "403": REFUSED, "404": UNKNOWN, "409": TAKEN, "422": INVALID},
)
def approval(case_id: str, data: dict[str, Any]) -> dict[str, Any]:
    taken = escrow.take_approval(g.peer, case_id, data, utcnow())
    return {"case": taken.id, "status": taken.status}
