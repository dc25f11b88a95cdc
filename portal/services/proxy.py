"""The proxy: holds grants' key fragments and re-encrypts capsules with them.

Today every fragment of a grant is held by this node (`holder` = its node id). The
store is already shaped for m-of-n: each fragment row names its holder and the
threshold, and `reencrypt` gathers `threshold` capsule fragments; once the
consortium runs, fragments go to distinct delegate nodes and this function asks
them over the network instead of reading the local rows.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import delete, select

from core.crypto import UserKeys
from core.errors import GrantError
from core.pre import Threshold, make_key_fragments
from core.pre import reencrypt as pre_reencrypt
from portal.extensions import db
from portal.models import Grant, ProxyFragment


def store(grant: Grant, patient: UserKeys, receiver_public: bytes, threshold: Threshold, holder: str) -> str:
    """Make the grant's key fragments and hand them to the proxy; returns their commitment
    (SHA-256 over the fragments' hashes, in share order) for the ledger."""
    fragments = make_key_fragments(patient, receiver_public, threshold)
    digest = hashlib.sha256()
    for share, fragment in enumerate(fragments):
        grant.fragments.append(
            ProxyFragment(share=share, holder=holder, threshold=threshold.threshold, fragment=fragment)
        )
        digest.update(hashlib.sha256(fragment).digest())
    return digest.hexdigest()


def destroy(grant_id: str) -> int:
    """Delete every fragment of a grant: from now on no capsule can be re-encrypted under it."""
    return db.session.execute(delete(ProxyFragment).where(ProxyFragment.grant_id == grant_id)).rowcount or 0


def reencrypt(grant: Grant, capsule: bytes, patient_public: bytes, receiver_public: bytes) -> list[bytes]:
    """Capsule fragments from `threshold` verified key fragments of the grant.

    Raises GrantError when fragments are missing (revoked) or do not verify."""
    rows = list(
        db.session.scalars(
            select(ProxyFragment).where(ProxyFragment.grant_id == grant.id).order_by(ProxyFragment.share)
        )
    )
    if not rows or len(rows) < rows[0].threshold:
        raise GrantError("the proxy holds no key fragments for this grant")
    return [pre_reencrypt(capsule, row.fragment, patient_public, receiver_public) for row in rows[: rows[0].threshold]]
