"""Threshold proxy re-encryption across the member nodes.

A grant's Umbral key fragments are split m-of-n over the member nodes: fragment i is
sealed to node i's box key inside the grant transaction, so only that node can take
it out (services/federation.py keeps it when the block arrives and deletes it when
the grant is revoked). A read gathers capsule fragments from the holders in
parallel, verifies each one and opens the record with any m that verify: a holder
that is down, slow or lies costs a timeout or is skipped, never wrong data.

A holder re-encrypts only for a read it can check itself: the reader's signed
`access` transaction, the grant live on its own copy of the ledger, the grantee the
signer, the record the patient's and within the grant's scope. It queues that access
entry on the ledger before it answers, so no read happens without its log entry.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import wait
from datetime import datetime
from typing import Any

from sqlalchemy import select

from core.crypto import UserKeys
from core.encoding import b64d, b64e
from core.errors import CoreError, GrantError, InvalidSignature
from core.ledger import Transaction, decode_transaction
from core.pre import Threshold, VerifiedFragment, check_capsule_fragment, make_key_fragments
from core.pre import reencrypt as pre_reencrypt
from portal.extensions import db
from portal.models import EmergencyAccess, Grant, LedgerTransaction, ProxyFragment, Record, User
from portal.services import federation, ledger, scopes
from portal.services.accounts import KeysMismatch, published_keys
from portal.services.context import NodeContext
from portal.services.errors import Forbidden, NotFound, ServiceError

log = logging.getLogger(__name__)
GATHER_SECONDS = 3.0


class HolderRefused(ServiceError):
    """A holder node will not re-encrypt for this read (it says why)."""

    status = 403
    code = "reencryption_refused"


def share_out(
    grant: Grant, patient: UserKeys, receiver_public: bytes, grantee_home: str | None, node: NodeContext
) -> tuple[str, dict[str, str]]:
    """Make the grant's key fragments and seal one to each holder (every member node), and the
    scope to the grantee's home node (for an emergency opt-in, the hospital whose emergency key
    receives it). Returns the fragments' commitment (SHA-256 over their hashes, in share order)
    and the sealed packages for the grant transaction."""
    boxes = federation.member_boxes(node.node_id, node.box_public)
    holders = list(boxes)
    threshold = threshold_for(len(holders), node.pre_threshold)
    fragments = make_key_fragments(patient, receiver_public, threshold)
    digest = hashlib.sha256()
    sealed: dict[str, str] = {}
    for share, (holder, fragment) in enumerate(zip(holders, fragments, strict=True)):
        package = {"scope": grant.scope, "share": share, "fragment": b64e(fragment), "threshold": threshold.threshold}
        sealed[holder] = federation.seal_package(boxes[holder], grant.id, holder, package)
        digest.update(hashlib.sha256(fragment).digest())
    if grantee_home is not None and grantee_home not in sealed and grantee_home in boxes:
        package = {"scope": grant.scope, "share": None, "fragment": None, "threshold": threshold.threshold}
        sealed[grantee_home] = federation.seal_package(boxes[grantee_home], grant.id, grantee_home, package)
    return digest.hexdigest(), sealed


def _local(grant: Grant, capsule: bytes, patient_public: bytes, receiver_public: bytes) -> list[dict[str, Any]]:
    rows = db.session.scalars(select(ProxyFragment).where(ProxyFragment.grant_id == grant.id))
    return [
        {
            "share": row.share,
            "threshold": row.threshold,
            "cfrag": b64e(pre_reencrypt(capsule, row.fragment, patient_public, receiver_public)),
        }
        for row in rows
    ]


def gather(
    grant: Grant, access: Transaction, capsule: bytes, patient_public: bytes, receiver_public: bytes,
    node: NodeContext, emergency: EmergencyAccess | None = None,
) -> list[VerifiedFragment]:  # fmt: skip
    """m verified capsule fragments for `capsule`: this node's own (if it holds any), then the
    other holders', asked in parallel with the signed access entry (and, for a read under an
    emergency, the signed emergency, which a holder may not have in a block yet); bad answers
    are skipped.

    Raises GrantError when fewer than m verified fragments came back."""
    answers: list[dict[str, Any]] = _local(grant, capsule, patient_public, receiver_public)
    peers = node.peers
    if peers is not None:
        body = {"access": b64e(access.encoded)}
        if emergency is not None:
            declared = db.session.get(LedgerTransaction, emergency.tx_hash)
            if declared is not None:
                body["emergency"] = b64e(declared.encoded)
        holders = [h for h in federation.member_boxes(node.node_id, node.box_public) if h != node.node_id]
        futures = {peers.pool.submit(peers.post, h, "/node/v1/reencrypt", body): h for h in holders if h in peers.urls}
        done, _ = wait(futures, timeout=GATHER_SECONDS)
        for future in done:
            answer = future.result()
            fragments = answer.get("fragments") if isinstance(answer, dict) else None
            if isinstance(fragments, list):
                answers.extend(f for f in fragments if isinstance(f, dict))
            else:
                log.info("holder %s gave no capsule fragment", futures[future])
    verified: dict[int, VerifiedFragment] = {}
    thresholds: Counter[int] = Counter()
    for answer in answers:
        try:
            share = answer["share"]
            cfrag = check_capsule_fragment(capsule, b64d(answer["cfrag"]), patient_public, receiver_public)
        except (CoreError, KeyError, TypeError) as exc:
            log.warning("skipped a capsule fragment that does not verify: %s", exc)
            continue
        if isinstance(share, int) and isinstance(answer.get("threshold"), int):
            verified.setdefault(share, cfrag)
            thresholds[answer["threshold"]] += 1
    if not thresholds:
        raise GrantError("no proxy re-encrypted for this grant (revoked, or its holders are unreachable)")
    m = thresholds.most_common(1)[0][0]
    if len(verified) < m:
        raise GrantError(f"only {len(verified)} of the {m} proxies needed answered")
    return list(verified.values())[:m]


def serve(
    access_encoded: bytes, now: datetime, node: NodeContext, emergency_encoded: bytes | None = None
) -> list[dict[str, Any]]:
    """A holder's side of a read: check the signed access entry against this node's own copy of
    the ledger, queue it, and re-encrypt the record's capsule with this node's fragments.

    Raises HolderRefused (or NotFound) saying why it will not."""
    try:
        access = decode_transaction(access_encoded)
    except CoreError as exc:
        raise HolderRefused(f"Not an access entry: {exc}.") from None
    mode = access.payload.get("mode")
    if access.kind != "access" or mode not in ("grant", "emergency"):
        raise HolderRefused("Only reads under a grant or a declared emergency are re-encrypted by other hospitals.")
    reader = db.session.scalar(select(User).where(User.key_id == access.signer))
    if reader is None or reader.role != "doctor":
        raise HolderRefused("The access entry is not signed by a known doctor.")
    try:
        published_keys(reader).verifier().verify(access.signature, access.signing_bytes())
    except (InvalidSignature, CoreError, KeysMismatch):
        raise HolderRefused("The access entry's signature does not verify.") from None
    record = db.session.get(Record, access.payload["record"])
    if mode == "grant":
        grant, receiver_public = _granted(access, reader, record, now, node)
    else:
        grant, receiver_public = _declared(access, reader, record, now, emergency_encoded)
    try:
        ledger.accept_from_peer(access.encoded, now)
    except CoreError as exc:
        raise HolderRefused(f"The access entry is not valid on this node's ledger: {exc}.") from None
    try:
        capsule = b64d(decode_transaction(record.transaction.encoded).payload["capsule"])
        answers = _local(grant, capsule, record.patient.umbral_public_key, receiver_public)
    except (CoreError, KeyError) as exc:
        raise HolderRefused(f"Re-encryption failed: {exc}.") from None
    if not answers:
        raise Forbidden("This node holds no fragment of that grant.")
    db.session.commit()
    return answers


def _granted(
    access: Transaction, reader: User, record: Record | None, now: datetime, node: NodeContext
) -> tuple[Grant, bytes]:
    """The grant a read names, if it is live, the reader's, for this patient and covers the record."""
    grant = db.session.get(Grant, access.payload["grant"])
    if grant is None or record is None:
        raise NotFound("This node does not know that grant or record (yet).")
    if grant.doctor_id != reader.id or grant.patient_id != record.patient_id or grant.emergency:
        raise HolderRefused("The grant is not the reader's for this patient.")
    if grant.revoked_at is not None or grant.expires_at <= now:
        raise HolderRefused("The grant is revoked or expired.")
    if grant.scope is None or not scopes.covers(scopes.salted_scope(grant.scope), record, node):
        raise HolderRefused("The record is outside the grant's scope.")
    return grant, reader.umbral_public_key


def _declared(
    access: Transaction, reader: User, record: Record | None, now: datetime, emergency_encoded: bytes | None
) -> tuple[Grant, bytes]:
    """The emergency opt-in a read under a declared emergency uses: the emergency the reader's own,
    for this record's patient, running, and the opt-in live and for the reader's hospital. An
    emergency not in a block yet is taken from the signed transaction the reader sent, once it
    is valid on this node's ledger."""
    emergency = db.session.get(EmergencyAccess, access.payload["grant"])
    if emergency is None and emergency_encoded is not None:
        try:
            declared = decode_transaction(emergency_encoded)
            if declared.kind != "emergency" or declared.payload.get("access") != access.payload["grant"]:
                raise HolderRefused("The emergency sent is not the one the read names.")
            ledger.accept_from_peer(declared.encoded, now)
            emergency = federation.take_emergency(declared)
        except (CoreError, ValueError) as exc:
            raise HolderRefused(f"The emergency is not valid on this node's ledger: {exc}.") from None
    if emergency is None or record is None:
        raise NotFound("This node does not know that emergency or record (yet).")
    if emergency.doctor_id != reader.id or emergency.patient_id != record.patient_id:
        raise HolderRefused("The emergency is not the reader's for this patient.")
    if emergency.expires_at <= now:
        raise HolderRefused("The emergency access is over.")
    optin = db.session.get(Grant, emergency.grant_id)
    if optin is None or optin.revoked_at is not None or optin.expires_at <= now:
        raise HolderRefused("The patient has opted out of emergency access.")
    receiver = federation.emergency_key_of(optin.hospital_node)
    if receiver is None:
        raise HolderRefused("The reader's hospital has published no emergency key.")
    return optin, receiver


def threshold_for(holders: int, configured: int) -> Threshold:
    """m-of-n for n holders: `configured` (capped at n) or a majority, n // 2 + 1."""
    m = min(configured, holders) if configured > 0 else holders // 2 + 1
    return Threshold(m, holders)
