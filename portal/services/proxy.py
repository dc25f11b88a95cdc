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

from core.crypto import UserKeys, rsa_verifier
from core.encoding import b64d, b64e
from core.errors import CoreError, GrantError, InvalidSignature
from core.ledger import Transaction, decode_transaction
from core.pre import Threshold, check_capsule_fragment, make_key_fragments
from core.pre import reencrypt as pre_reencrypt
from portal.extensions import db
from portal.models import Grant, ProxyFragment, Record, User
from portal.services import federation, ledger, scopes
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
    """Make the grant's key fragments and seal one to each holder (every member node, or only
    this one for an emergency opt-in, whose receiver is this hospital's emergency key), and the
    scope to the grantee's home node. Returns the fragments' commitment (SHA-256 over their
    hashes, in share order) and the sealed packages for the grant transaction."""
    boxes = federation.member_boxes(node.node_id, node.box_public)
    holders = [node.node_id] if grant.emergency else list(boxes)
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
    node: NodeContext,
) -> list[bytes]:  # fmt: skip
    """m verified capsule fragments for `capsule`: this node's own (if it holds any), then the
    other holders', asked in parallel with the signed access entry; bad answers are skipped.

    Raises GrantError when fewer than m verified fragments came back."""
    answers: list[dict[str, Any]] = _local(grant, capsule, patient_public, receiver_public)
    peers = node.peers
    if peers is not None and not grant.emergency:
        body = {"access": b64e(access.encoded)}
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
    verified: dict[int, bytes] = {}
    thresholds: Counter[int] = Counter()
    for answer in answers:
        try:
            share, cfrag = answer["share"], b64d(answer["cfrag"])
            check_capsule_fragment(capsule, cfrag, patient_public, receiver_public)
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


def serve(access_encoded: bytes, now: datetime, node: NodeContext) -> list[dict[str, Any]]:
    """A holder's side of a read: check the signed access entry against this node's own copy of
    the ledger, queue it, and re-encrypt the record's capsule with this node's fragments.

    Raises HolderRefused (or NotFound) saying why it will not."""
    try:
        access = decode_transaction(access_encoded)
    except CoreError as exc:
        raise HolderRefused(f"Not an access entry: {exc}.") from None
    if access.kind != "access" or access.payload.get("mode") != "grant":
        raise HolderRefused("Only reads under a grant are re-encrypted by other hospitals.")
    reader = db.session.scalar(select(User).where(User.key_id == access.signer))
    if reader is None or reader.role != "doctor":
        raise HolderRefused("The access entry is not signed by a known doctor.")
    try:
        rsa_verifier(reader.rsa_public_key, reader.key_id).verify(access.signature, access.signing_bytes())
    except (InvalidSignature, CoreError):
        raise HolderRefused("The access entry's signature does not verify.") from None
    grant = db.session.get(Grant, access.payload["grant"])
    record = db.session.get(Record, access.payload["record"])
    if grant is None or record is None:
        raise NotFound("This node does not know that grant or record (yet).")
    if grant.doctor_id != reader.id or grant.patient_id != record.patient_id or grant.emergency:
        raise HolderRefused("The grant is not the reader's for this patient.")
    if grant.revoked_at is not None or grant.expires_at <= now:
        raise HolderRefused("The grant is revoked or expired.")
    if grant.scope is None or not scopes.covers(scopes.salted_scope(grant.scope), record, node):
        raise HolderRefused("The record is outside the grant's scope.")
    try:
        ledger.accept_from_peer(access.encoded, now)
    except CoreError as exc:
        raise HolderRefused(f"The access entry is not valid on this node's ledger: {exc}.") from None
    try:
        capsule = b64d(decode_transaction(record.transaction.encoded).payload["capsule"])
        answers = _local(grant, capsule, record.patient.umbral_public_key, reader.umbral_public_key)
    except (CoreError, KeyError) as exc:
        raise HolderRefused(f"Re-encryption failed: {exc}.") from None
    if not answers:
        raise Forbidden("This node holds no fragment of that grant.")
    db.session.commit()
    return answers


def threshold_for(holders: int, configured: int) -> Threshold:
    """m-of-n for n holders: `configured` (capped at n) or a majority, n // 2 + 1."""
    m = min(configured, holders) if configured > 0 else holders // 2 + 1
    return Threshold(m, holders)
