"""One system across hospitals: what every node learns from the ledger, and from its peers.

When a block is stored, its transactions are *projected* into this node's tables, so
that any node can serve any account of the consortium:

- `key`: an account of another hospital appears as a `User` with its public keys and home
  node (no username, password or sealed keys); its name comes from its home node later.
- `node_info`: a member hospital's name, the box key that packages are sealed to and the
  emergency key its doctors break the glass with.
- `record`: the index entry of a record written anywhere (its content stays ciphertext on
  the ledger; attachment blobs are fetched from peers when first opened).
- `request`, `decline`, `grant`, `revoke`, `access`, `emergency`: requests, decisions, reads and
  declared emergencies, whichever node they were made on. A grant's package sealed to this node (its proxy key fragment,
  and the scope) is opened here and kept until the grant is revoked.

Projection is idempotent (rows that exist are left as they are, so the node that made a
row first keeps it) and never trusts more than the ledger: every row comes from a
transaction whose signature and authority the chain validator has already checked.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import current_app, has_request_context, request
from sqlalchemy import delete, select, update
from sqlalchemy.orm.util import identity_key

from core.crypto import BoxKey, seal_to_node
from core.encoding import b64d, b64e, canonical, decode_canonical
from core.errors import CoreError, EncodingError
from core.ledger import Transaction
from portal.extensions import db
from portal.models import (
    AccessEntry,
    AccessRequest,
    Attachment,
    EmergencyAccess,
    Grant,
    MemberNode,
    ProxyFragment,
    Record,
    User,
)

log = logging.getLogger(__name__)
PACKAGE_AAD = b"medledger/grant-package/v1\n"
UNNAMED = "Account "  # the placeholder name of another hospital's account until it is resolved
RESOLVE_AGAIN_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class Self:
    """What projection needs of the node it runs on: its id and its box key."""

    node_id: str
    box: BoxKey


def _self() -> Self:
    factory: Callable[[], Self] = current_app.extensions["medledger.federation"]
    return factory()


def _at(tx: Transaction) -> datetime:
    return datetime.fromtimestamp(tx.timestamp / 1000, UTC).replace(tzinfo=None)


class _Looked:
    """What projecting one block looked up in a few batched statements before its first
    transaction, instead of one or two statements per transaction: the records and access
    entries it names that exist, those that do not, and
    the accounts it names. Rows a transaction adds are flushed before the next one reads."""

    def __init__(self, transactions: list[Transaction]) -> None:
        named: dict[type[Record] | type[AccessEntry], set[str]] = {Record: set(), AccessEntry: set()}
        signers, public_ids = set(), set()
        for tx in transactions:
            payload = tx.payload
            if tx.kind in ("record", "access") and isinstance(payload.get("record"), str):
                named[Record].add(payload["record"])
            if tx.kind == "access" and isinstance(payload.get("entry"), str):
                named[AccessEntry].add(payload["entry"])
            if tx.kind == "record" and isinstance(payload.get("patient"), str):
                public_ids.add(payload["patient"])
            signers.add(tx.signer)
        self.present: dict[tuple[type, str], Record | AccessEntry] = {}
        self.absent: set[tuple[type, str]] = set()
        for model, keys in named.items():
            self.present |= {(model, row.id): row for row in _all(model, model.id, keys)}
            self.absent |= {(model, key) for key in keys if (model, key) not in self.present}
        self.users: dict[tuple[str, str], User] = {}
        self.users |= {("key", u.key_id): u for u in _all(User, User.key_id, signers)}
        self.users |= {("id", u.public_id): u for u in _all(User, User.public_id, public_ids)}


def _all(model: Any, column: Any, keys: set[str], size: int = 500) -> list[Any]:
    """The rows of `model` whose `column` is one of `keys`, in statements of `size` keys."""
    ordered = sorted(keys)
    chunks = [ordered[n : n + size] for n in range(0, len(ordered), size)]
    return [row for chunk in chunks for row in db.session.scalars(select(model).where(column.in_(chunk)))]


_LOOKED = "medledger.projection"


def _row(model: type[Record] | type[AccessEntry], key: str) -> Record | AccessEntry | None:
    """`db.session.get`, without a statement for a row the block's look-up found missing (unless
    a transaction of the block has added it since)."""
    looked: _Looked | None = db.session.info.get(_LOOKED)
    if looked is not None and (model, key) in looked.present:
        return looked.present[(model, key)]
    if looked is not None and (model, key) in looked.absent:
        added = db.session.identity_map.get(identity_key(model, key))
        return added if isinstance(added, model) else None
    return db.session.get(model, key)


def _user(kind: str, value: str, query: Any) -> User | None:
    looked: _Looked | None = db.session.info.get(_LOOKED)
    if looked is not None and (kind, value) in looked.users:
        return looked.users[(kind, value)]
    return db.session.scalar(query)


def _user_by_key(key_id: str) -> User | None:
    return _user("key", key_id, select(User).where(User.key_id == key_id))


def _user_by_id(public_id: str | None) -> User | None:
    if public_id is None:
        return None
    return _user("id", public_id, select(User).where(User.public_id == public_id))


def project(transactions: list[Transaction]) -> None:
    """Fold the transactions of a block just stored into this node's tables (in the caller's
    database transaction). A transaction that names something this node cannot find is
    logged and skipped: the chain is valid, so it can only be a gap in this node's tables."""
    me = _self()
    db.session.info[_LOOKED] = _Looked(transactions)
    try:
        for tx in transactions:
            handler = _HANDLERS.get(tx.kind)
            if handler is None:
                continue
            try:
                handler(tx, me)
            except (CoreError, EncodingError, KeyError, ValueError) as exc:
                log.warning("could not project %s transaction %s: %s", tx.kind, tx.hash[:16], exc)
            db.session.flush()
    finally:
        db.session.info.pop(_LOOKED, None)


def _key(tx: Transaction, me: Self) -> None:
    payload = tx.payload
    user = _user_by_id(payload["account"])
    if user is not None:
        if user.home_node is None:
            user.home_node = payload["home"]
        return
    db.session.add(
        User(
            public_id=payload["account"],
            username=None,
            display_name=UNNAMED + payload["account"][:8],
            role=payload["role"],
            home_node=payload["home"],
            rsa_public_key=b64d(payload["rsa"]),
            umbral_public_key=b64d(payload["umbral"]),
            key_id=tx.signer,
            key_tx_hash=tx.hash,
            created_at=_at(tx),
        )
    )


def _node_info(tx: Transaction, me: Self) -> None:
    payload = tx.payload
    row = db.session.get(MemberNode, payload["node"])
    if row is None:
        row = MemberNode(node_id=payload["node"])
        db.session.add(row)
    row.hospital, row.box_key, row.tx_hash = payload["hospital"], b64d(payload["box"]), tx.hash
    row.emergency_key = b64d(payload["emergency"])


def _record(tx: Transaction, me: Self) -> None:
    payload = tx.payload
    if _row(Record, payload["record"]) is not None:
        return
    patient, author = _user_by_id(payload["patient"]), _user_by_key(tx.signer)
    if patient is None or author is None:
        raise ValueError("unknown patient or author")
    record = Record(
        id=payload["record"], patient=patient, author=author, tx_hash=tx.hash, created_at=_at(tx),
        category_tag=payload["ctag"],
    )  # fmt: skip
    record.attachments = [Attachment(n=n, sha256=d, ciphertext=None) for n, d in enumerate(payload["attachments"])]
    db.session.add(record)


def _request(tx: Transaction, me: Self) -> None:
    payload = tx.payload
    if db.session.get(AccessRequest, payload["request"]) is not None:
        return
    doctor, patient = _user_by_key(tx.signer), _user_by_id(payload["patient"])
    if doctor is None or patient is None:
        raise ValueError("unknown doctor or patient")
    db.session.add(
        AccessRequest(
            id=payload["request"],
            doctor=doctor,
            patient=patient,
            sealed_reason=b64d(payload["note"]),
            created_at=_at(tx),
            tx_hash=tx.hash,
        )
    )


def _decline(tx: Transaction, me: Self) -> None:
    request = db.session.get(AccessRequest, tx.payload["request"])
    if request is not None and request.status == "pending":
        request.status, request.decided_at, request.decision_tx_hash = "declined", _at(tx), tx.hash


def _grant(tx: Transaction, me: Self) -> None:
    payload = tx.payload
    grant = db.session.get(Grant, payload["grant"])
    if grant is None:
        patient = _user_by_key(tx.signer)
        if patient is None:
            raise ValueError("unknown patient")
        grant = Grant(
            id=payload["grant"], patient=patient, doctor=_user_by_id(payload["grantee"]),
            emergency=payload["emergency"], hospital_node=payload["hospital"], scope=None, created_at=_at(tx),
            expires_at=datetime.fromtimestamp(payload["expires"] / 1000, UTC).replace(tzinfo=None), tx_hash=tx.hash,
        )  # fmt: skip
        db.session.add(grant)
    take_package(grant, payload["sealed"], me)
    if payload["request"] is not None:
        request = db.session.get(AccessRequest, payload["request"])
        if request is not None and request.status == "pending":
            request.status, request.decided_at, request.grant_id = "approved", _at(tx), grant.id
            request.decision_tx_hash = tx.hash


def take_package(grant: Grant, sealed: dict[str, str], me: Self | None = None) -> None:
    """Open this node's package of a grant, if it has one, and keep the scope and its key
    fragment (the patient's home node does so at once; every node when the block arrives)."""
    me = me or _self()
    mine = sealed.get(me.node_id)
    if mine is not None and grant.revoked_at is None:
        package = open_package(me.box, grant.id, me.node_id, b64d(mine))
        grant.scope = grant.scope or package["scope"]
        if package["fragment"] is not None and db.session.get(ProxyFragment, (grant.id, package["share"])) is None:
            db.session.add(
                ProxyFragment(
                    grant_id=grant.id,
                    share=package["share"],
                    holder=me.node_id,
                    threshold=package["threshold"],
                    fragment=b64d(package["fragment"]),
                )
            )


def destroy_fragments(grant_id: str) -> int:
    """Delete this node's key fragments of a grant: from now on it re-encrypts nothing under it
    (the home node at once when the patient revokes, every holder when the block arrives)."""
    return db.session.execute(delete(ProxyFragment).where(ProxyFragment.grant_id == grant_id)).rowcount or 0


def _revoke(tx: Transaction, me: Self) -> None:
    grant = db.session.get(Grant, tx.payload["grant"])
    if grant is None:
        return
    destroy_fragments(grant.id)
    if grant.revoked_at is None:
        grant.revoked_at, grant.revoke_tx_hash = _at(tx), tx.hash


def _access(tx: Transaction, me: Self) -> None:
    payload = tx.payload
    if _row(AccessEntry, payload["entry"]) is not None:
        return
    record, reader = _row(Record, payload["record"]), _user_by_key(tx.signer)
    if record is None or reader is None:
        raise ValueError("unknown record or reader")
    db.session.add(
        AccessEntry(
            id=payload["entry"],
            record=record,
            reader=reader,
            mode=payload["mode"],
            grant_id=payload["grant"],
            part=payload["part"],
            at=_at(tx),
            tx_hash=tx.hash,
        )
    )


def take_emergency(tx: Transaction) -> EmergencyAccess:
    """The declared emergency of a valid `emergency` transaction, made a row here if it is new:
    when its block arrives, or earlier on a holder asked to re-encrypt under it. Raises
    ValueError if it names an account or opt-in this node does not know, or does not fit them."""
    payload = tx.payload
    known = db.session.get(EmergencyAccess, payload["access"])
    if known is not None:
        return known
    doctor, patient = _user_by_key(tx.signer), _user_by_id(payload["patient"])
    optin = db.session.get(Grant, payload["grant"])
    if doctor is None or patient is None or optin is None:
        raise ValueError("unknown doctor, patient or emergency opt-in")
    if not optin.emergency or optin.patient_id != patient.id or optin.hospital_node != doctor.home_node:
        raise ValueError("the opt-in named is not this patient's for the doctor's hospital")
    emergency = EmergencyAccess(
        id=payload["access"], patient=patient, doctor=doctor, grant_id=optin.id, sealed_reason=b64d(payload["note"]),
        created_at=_at(tx), expires_at=datetime.fromtimestamp(payload["expires"] / 1000, UTC).replace(tzinfo=None),
        tx_hash=tx.hash,
    )  # fmt: skip
    db.session.add(emergency)
    return emergency


def _emergency(tx: Transaction, me: Self) -> None:
    take_emergency(tx)


_HANDLERS: dict[str, Callable[[Transaction, Self], None]] = {
    "key": _key,
    "node_info": _node_info,
    "record": _record,
    "request": _request,
    "decline": _decline,
    "grant": _grant,
    "revoke": _revoke,
    "access": _access,
    "emergency": _emergency,
}


# -- grant packages ---------------------------------------------------------------------------


def _package_aad(grant_id: str, node_id: str) -> bytes:
    return PACKAGE_AAD + f"{grant_id}/{node_id}".encode()


def seal_package(box_key: bytes, grant_id: str, node_id: str, package: dict[str, Any]) -> str:
    """A grant's package for one node (base64url), bound to the grant and the node."""
    return b64e(seal_to_node(box_key, canonical(package), _package_aad(grant_id, node_id)))


def open_package(box: BoxKey, grant_id: str, node_id: str, sealed: bytes) -> dict[str, Any]:
    """{"scope", "share", "fragment", "threshold"}; raises DecryptionError or EncodingError."""
    package = decode_canonical(box.open(sealed, _package_aad(grant_id, node_id)))
    if not isinstance(package, dict) or set(package) != {"scope", "share", "fragment", "threshold"}:
        raise EncodingError("malformed grant package")
    return package


def member_boxes(me: str, my_box: bytes) -> dict[str, bytes]:
    """Member nodes' box keys by node id, as published on the ledger (this node's own key is
    known before its `node_info` is final)."""
    boxes = {row.node_id: row.box_key for row in db.session.scalars(select(MemberNode))}
    boxes.setdefault(me, my_box)
    return dict(sorted(boxes.items()))


def member_emergency_keys(me: str, my_key: bytes) -> dict[str, bytes]:
    """Member hospitals' emergency keys by node id, as published on the ledger (this node's own
    key is known before its `node_info` is final)."""
    keys = {row.node_id: row.emergency_key for row in db.session.scalars(select(MemberNode)) if row.emergency_key}
    keys.setdefault(me, my_key)
    return dict(sorted(keys.items()))


def emergency_key_of(node_id: str | None) -> bytes | None:
    """The emergency key a member node published, if any."""
    row = db.session.get(MemberNode, node_id) if node_id is not None else None
    return row.emergency_key if row else None


def hospital_of(node_id: str | None) -> str | None:
    """The hospital name a member node published, or its node id. Within a request each node is
    looked up once: a list of people (the access log) would otherwise ask again for every row
    whose node has no row (the session's identity map keeps only the rows found)."""
    if node_id is None:
        return None
    names = request.environ.setdefault("medledger.hospitals", {}) if has_request_context() else {}
    if node_id not in names:
        row = db.session.get(MemberNode, node_id)
        names[node_id] = row.hospital if row else node_id
    return names[node_id]


def fetch_blob(sha256: str, peers: Any) -> bytes | None:
    """An attachment's ciphertext from the first peer whose copy hashes to `sha256` (the hash
    on the ledger); None if no peer has a matching copy. A peer's wrong copy is logged."""
    if peers is None:
        return None
    for peer in list(peers.urls):
        answer = peers.get(peer, f"/node/v1/blobs/{sha256}")
        try:
            data = b64d(answer["data"]) if isinstance(answer, dict) else None
        except (EncodingError, KeyError, TypeError):
            data = None
        if data is not None and hashlib.sha256(data).hexdigest() == sha256:
            return data
        if data is not None:
            log.warning("peer %s sent an attachment that does not match its hash on the ledger", peer)
    return None


def local_blob(sha256: str) -> bytes | None:
    """An attachment's ciphertext held here, by its hash."""
    return db.session.scalar(
        select(Attachment.ciphertext).where(Attachment.sha256 == sha256, Attachment.ciphertext.is_not(None)).limit(1)
    )


def describe(user: User) -> dict[str, Any]:
    """What one node tells another about an account registered at it (and what a doctor is
    shown to choose a patient by): for a patient, also the date of birth, the hospital number
    and whether the home hospital has checked their identity in person."""
    described: dict[str, Any] = {
        "id": user.public_id,
        "role": user.role,
        "display_name": user.display_name,
        "hospital": user.hospital if user.role == "doctor" else None,
        "home": user.home_node,
        "home_hospital": hospital_of(user.home_node),
    }
    if user.role == "patient":
        described["date_of_birth"] = user.date_of_birth.isoformat() if user.date_of_birth else None
        described["mrn"] = user.mrn
        described["verified"] = user.verified_at is not None
    return described


def patient_card(user: User) -> dict[str, Any]:
    """A patient as a doctor chooses them: `describe` and the username (this hospital's patients
    only), and whether the name is known yet (another hospital's, before its home answered)."""
    return {**describe(user), "username": user.username, "named": user.is_local or user.resolved_at is not None}


def _printable(value: object, max_len: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= max_len and value.isprintable()


def _learn_identity(user: User, answer: dict[str, Any], now: datetime) -> bool:
    """Take a patient's date of birth, hospital number and in-person check from their home
    node's answer (absent from an older node's answer: none). False if any is malformed."""
    born, mrn, verified = answer.get("date_of_birth"), answer.get("mrn"), answer.get("verified")
    if born is not None and not isinstance(born, str):
        return False
    try:
        born = date.fromisoformat(born) if born is not None else None
    except ValueError:
        return False
    if (mrn is not None and not _printable(mrn, 40)) or verified not in (None, True, False):
        return False
    if mrn is not None:  # a number the home has given someone else since: the old copy is stale
        db.session.execute(
            update(User).where(User.home_node == user.home_node, User.mrn == mrn, User.id != user.id).values(mrn=None)
        )
    user.date_of_birth, user.mrn = born, mrn
    if not verified:
        user.verified_at = None
    elif user.verified_at is None:
        user.verified_at = now  # when this node learnt it, not when the home checked
    return True


def _learn(user: User, answer: object) -> bool:
    """Take an account's name (and a doctor's hospital, a patient's identity) from its home
    node's answer, if the answer is about this very account and well formed."""
    if not isinstance(answer, dict) or answer.get("id") != user.public_id or answer.get("role") != user.role:
        return False
    name, hospital = answer.get("display_name"), answer.get("hospital")
    if not _printable(name, 120):
        return False
    if hospital is not None and (not isinstance(hospital, str) or len(hospital) > 120 or not hospital.isprintable()):
        return False
    now = datetime.now(UTC).replace(tzinfo=None)
    if user.role == "patient" and not _learn_identity(user, answer, now):
        return False
    user.display_name, user.hospital, user.resolved_at = name, hospital, now
    return True


def resolve(user: User, peers: Any) -> User:
    """An account of another hospital with its name (and a patient's identity) from its home
    node, fetched when first needed and again once RESOLVE_AGAIN_AFTER has passed (a patient may
    have been checked in person since); the account as it is when the home node does not answer."""
    if user.is_local or peers is None or user.home_node not in peers.urls:
        return user
    if user.resolved_at is not None and datetime.now(UTC).replace(tzinfo=None) - user.resolved_at < RESOLVE_AGAIN_AFTER:
        return user
    if _learn(user, peers.get(user.home_node, f"/node/v1/accounts/{user.public_id}")):
        db.session.commit()
    return user


def resolve_unnamed(peers: Any, limit: int = 20) -> int:
    """Fetch the names of accounts of other hospitals not resolved yet (the sync loop calls this)."""
    unnamed = db.session.scalars(
        select(User).where(User.sealed_private_keys.is_(None), User.resolved_at.is_(None)).limit(limit)
    )
    return sum(1 for user in list(unnamed) if resolve(user, peers).resolved_at is not None)


def find_doctors(query: str, local: list[User], peers: Any) -> list[User]:
    """Doctors of every member hospital matching `query`: this node's own (`local`, found by the
    caller) and each peer's answer for its doctors (asked in parallel, bounded in time); a
    peer's doctor is shown only if its key is on this node's ledger, under its home's name."""
    found = {user.public_id: user for user in local}
    if peers is not None:
        path = "/node/v1/doctors?" + urlencode({"q": query})
        futures = [peers.pool.submit(peers.get, peer, path) for peer in list(peers.urls)]
        done, _ = wait(futures, timeout=peers.timeout * 2)
        for future in done:
            answer = future.result()
            for item in answer.get("doctors", []) if isinstance(answer, dict) else []:
                user = _user_by_id(item.get("id")) if isinstance(item, dict) else None
                if user is not None and not user.is_local and user.role == "doctor" and _learn(user, item):
                    found[user.public_id] = user
        db.session.commit()
    return sorted(found.values(), key=lambda u: (u.display_name, u.public_id))[:50]
