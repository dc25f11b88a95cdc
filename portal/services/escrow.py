"""Hospital-assisted recovery: the user key in escrow at two member nodes (docs/recovery.md).

A patient's (by default; they may opt out) or doctor's user key is split into two shares,
XOR of two 32-byte strings, so that either share alone is uniformly random and says nothing:

- the *home share* stays at the account's home node, sealed under a key derived from the
  node key (a file, never the database);
- the *held share* goes to one other member node, chosen by rendezvous hashing (the member
  with the highest SHA-256 of account id || "/" || node id), sealed to that node's box key and
  sent over a signed node request; the holder keeps it sealed as it came.

A recovery case is opened by an admin of the home hospital after checking the person's
identity in person, and needs a second approval: another admin of the home node (the home
asks the holder to release its share) or an admin of the holder (who releases it from their
own portal). The holder's share comes back sealed to the home node's box key; the home node
joins the shares, checks that they open the account's sealed keys, and wraps the user key
under a one-time recovery code for the person, kept only as a hash, valid for CODE_TTL.
With the code the person sets a new password: the same user key, so every record, grant and
key stays theirs. Each recovery is an `escrow_recovery` transaction signed by the home node.

Each admin's step is signed with that admin's own user key (unlocked only by their signed-in
session) over a canonical statement naming the case, the account, both nodes, the step and the
time (`approval_statement`); the node asked to release a share checks both signatures against
the keys its own ledger registered for those admins, so a node's key and database alone cannot
forge an approval.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from sqlalchemy import delete, select

from core.crypto import BoxKey, KdfParams, NodeKey, UserKeys, aead, open_user_keys, seal_to_node
from core.encoding import b64d, b64e, canonical
from core.errors import CoreError, DecryptionError, EncodingError
from core.ledger import sign_transaction
from portal.extensions import db
from portal.models import (
    AccessEntry,
    AuthSession,
    ChatSocket,
    Escrow,
    HeldShare,
    MemberNode,
    RecoveryCase,
    User,
    epoch_ms,
)
from portal.services import accounts, federation, ledger
from portal.services.errors import Conflict, Forbidden, NotFound, ServiceError, Unauthorized, ValidationFailed

log = logging.getLogger(__name__)

ESCROWED_ROLES = ("patient", "doctor")
SHARE_BYTES = 32
CODE_TTL = timedelta(hours=1)
CODE_GROUPS, CODE_GROUP_LEN = 5, 4  # 20 characters of base32: 100 bits
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
MAX_SEALED = 256
HOME_AAD = b"medledger/escrow/home-share/v1\n"
HELD_AAD = b"medledger/escrow/held-share/v1\n"
RELEASE_AAD = b"medledger/escrow/release/v1\n"
CODE_AAD = b"medledger/escrow/code/v1\n"
ESCROW_KEY_INFO = b"medledger/escrow-key/v1"
CODE_KEY_INFO = b"medledger/escrow-code/v1"
APPROVAL_STATEMENT = b"medledger/escrow/approval/v1\n"
IN_PERSON = "identity_in_person"  # the opener: saw the person with an identity document
SECOND_APPROVAL = "second_approval"  # the other admin, at the home or the holder hospital
APPROVAL_FRESH = timedelta(minutes=10)  # a second approval is signed just before it is sent
OPENED_MAX_AGE = timedelta(days=7)  # an opener's signature older than this: open a new case
CLOCK_SKEW = timedelta(minutes=2)
MAX_SIGNATURE = 1024  # characters of base64url: RSA-4096 and below
OPTED_OUT = (
    "This patient turned hospital-assisted recovery off, so no hospital holds their key and no recovery "
    "case can be opened: only their own recovery key can restore the account's history."
)


class PeerUnavailable(ServiceError):
    """The member node holding the other share did not answer (or answered nonsense)."""

    status = 503
    code = "peer_unavailable"


@dataclass(frozen=True)
class Here:
    """What escrow needs of the node it runs on: its key (the escrow key and box key come from
    it) and the signed transport to its peers (`post(peer, path, body)`; None: a node alone)."""

    node: NodeKey
    box: BoxKey
    peers: Any

    @property
    def node_id(self) -> str:
        return self.node.node_id

    def escrow_key(self) -> bytes:
        """The key home shares are sealed under: derived from the node key, never stored."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=ESCROW_KEY_INFO).derive(
            self.node.private_raw()
        )


def here() -> Here:
    """This node, from the factory the app registered under `medledger.escrow`, else its runtime."""
    factory: Callable[[], Here] | None = current_app.extensions.get("medledger.escrow")
    if factory is not None:
        return factory()
    from portal import runtime

    return Here(runtime.node_key(), runtime.box_key(), runtime.peers())


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _home_aad(account: str, home: str) -> bytes:
    return HOME_AAD + f"{account}/{home}".encode()


def _held_aad(account: str, home: str, holder: str) -> bytes:
    return HELD_AAD + f"{account}/{home}/{holder}".encode()


def _release_aad(case: str, account: str, home: str) -> bytes:
    return RELEASE_AAD + f"{case}/{account}/{home}".encode()


def _code_key(code: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=CODE_KEY_INFO).derive(code.encode())


def _code_hash(code: str) -> str:
    return hashlib.sha256(b"medledger/escrow/code-hash/v1\n" + code.encode()).hexdigest()


def _normal_code(code: object) -> str | None:
    if not isinstance(code, str) or len(code) > 64:
        return None
    text = re.sub(r"[\s-]", "", code).upper()
    return text if len(text) == CODE_GROUPS * CODE_GROUP_LEN and set(text) <= set(CODE_ALPHABET) else None


def _new_code() -> str:
    text = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUPS * CODE_GROUP_LEN))
    return "-".join(text[i : i + CODE_GROUP_LEN] for i in range(0, len(text), CODE_GROUP_LEN))


def approval_statement(case: str, account: str, home: str, holder: str, admin: str, check: str, at: int) -> bytes:
    """What an admin signs for one step of a recovery case (`check`: IN_PERSON for the admin who
    saw the person and opened it, SECOND_APPROVAL for the other), at `at` (epoch ms): canonical
    JSON, so the home node and the holder build the same bytes."""
    fields = {"case": case, "account": account, "home": home, "holder": holder, "admin": admin, "check": check}
    return APPROVAL_STATEMENT + canonical({**fields, "at": at})


def _signed_by(admin: User, keys: UserKeys | None, statement: bytes) -> str:
    """The admin's signature over `statement` with their own key, which only their signed-in
    session unlocks (`keys`, for this request only)."""
    if keys is None or keys.key_id != admin.key_id:
        raise Unauthorized("Sign in again: each approval is signed with your own key, which only your session opens.")
    return b64e(keys.sign(statement))


def _from_ms(at: int) -> datetime:
    return datetime.fromtimestamp(at / 1000, UTC).replace(tzinfo=None)


def _ms_floor(moment: datetime) -> datetime:
    """`moment` to the millisecond, as signed statements carry it."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _box_key_of(node_id: str) -> bytes | None:
    row = db.session.get(MemberNode, node_id)
    return row.box_key if row is not None else None


def members(me: Here) -> list[str]:
    """The other member nodes that can hold a share: a box key on the ledger and a URL to reach."""
    found = [row.node_id for row in db.session.scalars(select(MemberNode)) if row.node_id != me.node_id]
    if me.peers is not None and hasattr(me.peers, "urls"):
        found = [m for m in found if m in me.peers.urls]
    return found


def _has_left(node: str, me: Here) -> bool:
    """Whether a holder is no longer a member: its box key is gone from this node's ledger
    tables, or no address of it is known any more (neither in the genesis file nor admitted)."""
    if db.session.get(MemberNode, node) is None:
        return True
    if me.peers is None or not hasattr(me.peers, "urls") or node in me.peers.urls:
        return False
    try:
        return node not in ledger.consensus_state().urls
    except ServiceError:
        return False


def choose_holder(account: str, me: Here) -> str | None:
    """The member node that holds an account's second share: of the members that published a
    box key on the ledger (and that this node can reach), the one with the highest
    SHA-256(account || "/" || node id). Deterministic, spread evenly, and it moves only for the
    accounts of a node that leaves. None when this node has no other member."""
    others = members(me)
    if not others:
        return None
    return max(others, key=lambda node: hashlib.sha256(f"{account}/{node}".encode()).digest())


# -- making and keeping shares (home node) -------------------------------------------------------


def _escrow(user: User) -> Escrow | None:
    return db.session.get(Escrow, user.id)


def deposit(user: User, user_key: bytes, me: Here, now: datetime) -> Escrow | None:
    """Split the user key of a local patient or doctor into shares (unless the account opted
    out or has shares already) and send the held share to its holder; in the caller's database
    transaction. None for an account that is not escrowed (an admin)."""
    if user.role not in ESCROWED_ROLES or not user.is_local:
        return None
    row = _escrow(user)
    if row is None:
        row = Escrow(user_id=user.id, enabled=True, updated_at=now)
        db.session.add(row)
    if not row.enabled or row.share is not None:
        return row
    holder = choose_holder(user.public_id, me)
    box = _box_key_of(holder) if holder else None
    if holder is None or box is None:
        return row  # a node alone: made when another member hospital has joined
    home_share = aead.random_key()
    held_share = _xor(user_key, home_share)
    row.holder = holder
    row.share = aead.encrypt(me.escrow_key(), home_share, _home_aad(user.public_id, me.node_id))
    row.pending = seal_to_node(box, held_share, _held_aad(user.public_id, me.node_id, holder))
    row.updated_at = now
    _deliver(user, row, me)
    return row


def _deliver(user: User, row: Escrow, me: Here) -> None:
    if row.pending is None or row.holder is None or me.peers is None:
        return
    answer = me.peers.post(
        row.holder, "/node/v1/escrow/deposit", {"account": user.public_id, "share": b64e(row.pending)}
    )
    if isinstance(answer, dict) and answer.get("held") is True:
        row.pending = None


def _withdraw(user: User, row: Escrow, me: Here) -> None:
    if row.holder is None or me.peers is None:
        return
    answer = me.peers.post(row.holder, "/node/v1/escrow/withdraw", {"account": user.public_id})
    if isinstance(answer, dict) and answer.get("held") is False:
        row.holder = None


def on_sign_in(user: User, user_key: bytes, now: datetime) -> None:
    """At each sign-in (the password has just unwrapped the user key): make the shares of an
    account that has none yet (it was made while this node had no other member), split the key
    afresh for an account whose holder has left the consortium, hand a held share its holder did
    not take, or tell the holder of an opted-out account to delete its share. Never stops a
    sign-in: failures are logged."""
    if user.role not in ESCROWED_ROLES or not user.is_local:
        return
    try:
        me = here()
        row = _escrow(user)
        if row is not None and row.enabled and row.holder is not None and _has_left(row.holder, me):
            _forget_holder(user, row, now)
        if row is None or (row.enabled and row.share is None):
            deposit(user, user_key, me, now)
        elif row.enabled:
            _deliver(user, row, me)
        else:
            _withdraw(user, row, me)
    except (CoreError, ValueError, OSError) as exc:
        log.warning("escrow at sign-in of account %s failed: %s", user.public_id[:8], type(exc).__name__)


def _forget_holder(user: User, row: Escrow, now: datetime) -> None:
    """The node holding the account's other share is no longer a member: delete the home share
    (so the share the old holder keeps is useless: the next split is a fresh one, and its home
    share differs) and end any case under way with it. The caller splits the key again, for a
    member still here, or waits for a second hospital."""
    log.info("holder %s of account %s left the consortium: splitting its key again", row.holder, user.public_id[:8])
    row.share, row.pending, row.holder, row.updated_at = None, None, None, now
    _end_cases(user, "cancelled")


def _end_cases(user: User, status: str) -> None:
    for case in db.session.scalars(
        select(RecoveryCase).where(
            RecoveryCase.account == user.public_id, RecoveryCase.status.in_(("open", "approved", "issued"))
        )
    ):
        case.status, case.peer_share, case.wrapped_key = status, None, None


def deliver_pending(now: datetime, limit: int = 100) -> int:
    """Hand each held share still waiting at home (its holder was down or slow when it was made)
    to its holder: sealed to the holder's box key, it needs no user key, so the node's periodic
    work (the producer's sync step) calls this. One try per holder that does not answer, so a
    holder that is down costs one request per call. Returns the number of shares delivered."""
    me = here()
    if me.peers is None:
        return 0
    here_now, failed, delivered = set(members(me)), set(), 0
    rows = db.session.scalars(
        select(Escrow).where(Escrow.pending.is_not(None), Escrow.enabled.is_(True)).order_by(Escrow.updated_at)
    ).all()
    for row in rows[:limit]:
        if row.holder is None or row.holder in failed or row.holder not in here_now:
            continue  # a holder that left: the share is split again at the account's next sign-in
        user = db.session.get(User, row.user_id)
        if user is None:
            continue
        _deliver(user, row, me)
        if row.pending is None:
            row.updated_at, delivered = now, delivered + 1
            log.info("escrow share of account %s delivered to %s", user.public_id[:8], row.holder)
        else:
            failed.add(row.holder)
    db.session.commit()
    return delivered


def status(user: User) -> dict[str, Any]:
    """An account's escrow as its owner sees it: on or off, which hospital holds the other
    share (or whether it is still on its way), and its completed recoveries."""
    row = _escrow(user)
    enabled = user.role == "doctor" or (user.role == "patient" and (row is None or row.enabled))
    if user.role not in ESCROWED_ROLES:
        state = "not_offered"
    elif not enabled:
        state = "off"
    elif row is None or row.share is None:
        state = "waiting"  # for a second hospital: made at the first sign-in after one has joined
    else:
        state = "delivering" if row.pending is not None else "held"
    holder = row.holder if row is not None and enabled else None
    return {
        "enabled": enabled,
        "state": state,
        "holder": holder,
        "holder_hospital": federation.hospital_of(holder),
        "can_turn_off": user.role == "patient",
        "recoveries": [
            {
                "case": case.id,
                "completed_at": case.completed_at,
                "opened_by": case.opened_by_name,
                "approved_by": case.approved_by_name,
                "approved_by_hospital": federation.hospital_of(case.approved_by_node),
                "tx_hash": case.tx_hash,
            }
            for case in _completed(user)
        ],
    }


def set_enabled(actor: accounts.Actor, enabled: object, now: datetime) -> dict[str, Any]:
    """A patient turns hospital-assisted recovery on (new shares) or off (both shares deleted:
    the home share here and now, the held share at its holder by signed request, now or at a
    later sign-in if the holder is down). Doctors' accounts are always escrowed."""
    if not isinstance(enabled, bool):
        raise ValidationFailed("`enabled` must be true or false.")
    user = actor.user
    if user.role != "patient":
        raise Forbidden("Only patients choose this: a doctor's account is always kept in escrow by the hospital.")
    me = here()
    row = _escrow(user)
    if enabled:
        if row is not None:
            row.enabled = True
        deposit(user, actor.user_key(), me, now)
    else:
        if row is None:
            row = Escrow(user_id=user.id)
            db.session.add(row)
        row.enabled, row.share, row.pending, row.updated_at = False, None, None, now
        _end_cases(user, "cancelled")
        _withdraw(user, row, me)
    db.session.commit()
    return status(user)


# -- holding another hospital's share (holder node) ---------------------------------------------


def _sealed(value: object, name: str) -> bytes:
    try:
        data = b64d(value) if isinstance(value, str) else None
    except EncodingError:
        data = None
    if data is None or not 32 < len(data) <= MAX_SEALED:
        raise ValidationFailed(f"`{name}` must be a sealed share (base64url).")
    return data


def _account_id(value: object) -> str:
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) and len(value) == 36 else ""
    except ValueError:
        return ""


def _checked_account(value: object) -> str:
    account = _account_id(value)
    if not account:
        raise ValidationFailed("`account` must be an account id.")
    return account


def hold(peer: str, account: object, share: object, me: Here, now: datetime) -> None:
    """Keep the held share a member node (`peer`, checked by signature) sends for one of its
    accounts, as it came: sealed to this node's box key. It must open here (so a node cannot be
    made to keep junk), but the share itself is not kept open."""
    account = _checked_account(account)
    sealed = _sealed(share, "share")
    try:
        opened = me.box.open(sealed, _held_aad(account, peer, me.node_id))
    except DecryptionError:
        raise ValidationFailed("The share is not sealed to this node for this account.") from None
    if len(opened) != SHARE_BYTES:
        raise ValidationFailed("The share is not sealed to this node for this account.")
    row = db.session.get(HeldShare, (account, peer))
    if row is None:
        db.session.add(HeldShare(account=account, home_node=peer, share=sealed, received_at=now))
    else:
        row.share, row.received_at = sealed, now
    db.session.commit()


def withdraw(peer: str, account: object) -> None:
    """The home node (`peer`) says its account opted out: delete the share held for it, and any
    case waiting on it."""
    account = _checked_account(account)
    db.session.execute(delete(HeldShare).where(HeldShare.account == account, HeldShare.home_node == peer))
    db.session.execute(
        delete(RecoveryCase).where(
            RecoveryCase.account == account, RecoveryCase.home_node == peer, RecoveryCase.status == "waiting"
        )
    )
    db.session.commit()


def _held(account: str, home: str) -> HeldShare:
    row = db.session.get(HeldShare, (account, home))
    if row is None:
        raise NotFound("This node holds no escrow share of that account for that node.")
    return row


def _release(row: HeldShare, case_id: str, me: Here) -> str:
    """The held share sealed to its home node for one case."""
    box = _box_key_of(row.home_node)
    if box is None:
        raise Conflict("The home node's box key is not on this node's ledger yet.")
    share = me.box.open(row.share, _held_aad(row.account, row.home_node, me.node_id))
    return b64e(seal_to_node(box, share, _release_aad(case_id, row.account, row.home_node)))


def _name(value: object, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 120 or not value.isprintable():
        raise ValidationFailed(f"`{field}` must be 1-120 printable characters.")
    return value


def _approver(value: object, field: str) -> dict[str, Any]:
    """An admin named in a node request: {account, name} and, when given, their `signature`
    (base64url) and the time `at` (epoch ms) of the statement they signed; checked by `_verify`."""
    if not isinstance(value, dict):
        raise ValidationFailed(f"`{field}` must name an admin (account, name).")
    signature, at = value.get("signature"), value.get("at")
    return {
        "account": _checked_account(value.get("account")),
        "name": _name(value.get("name"), f"{field}.name"),
        "signature": signature if isinstance(signature, str) and 0 < len(signature) <= MAX_SIGNATURE else None,
        "at": at if isinstance(at, int) and not isinstance(at, bool) and 0 < at < 2**53 else None,
    }


def _peer_admin(account: str, node: str) -> bool:
    """Whether the ledger knows `account` as an admin endorsed by `node`."""
    user = db.session.scalar(select(User).where(User.public_id == account))
    return user is not None and user.role == "admin" and user.home_node == node


def _refuse(peer: str, case: str, why: str, message: str) -> Forbidden:
    log.warning("refused escrow request of node %s for case %s: %s", peer, case[:8], why)
    return Forbidden(message)


def _verify(
    peer: str, admin: dict[str, Any], node: str, statement: dict[str, str], now: datetime, max_age: timedelta
) -> int:
    """Check that `admin` (an admin of `node` on this node's ledger) signed the statement of
    this case and step, with the key their `key` transaction registered on this node's ledger,
    at a time not older than `max_age`. Returns that time (epoch ms); Forbidden (logged) for a
    missing, stale or invalid signature."""
    case, step = statement["case"], statement["check"]
    name = "opener's" if step == IN_PERSON else "second approver's"
    user = db.session.scalar(select(User).where(User.public_id == admin["account"]))
    if user is None or user.role != "admin" or user.home_node != node:
        raise _refuse(peer, case, f"{step} not by an admin of {node}", f"The {name} account is not an admin of {node}.")
    if admin["signature"] is None or admin["at"] is None:
        raise _refuse(peer, case, f"{step} unsigned", f"The {name} approval is not signed with their own key.")
    at = admin["at"]
    if not epoch_ms(now - max_age) <= at <= epoch_ms(now + CLOCK_SKEW):
        stale = f"The {name} signature is too old (or dated ahead): sign again."
        raise _refuse(peer, case, f"{step} signed at a stale time", stale)
    message = approval_statement(**statement, admin=admin["account"], at=at)
    try:
        accounts.published_keys(user).verifier().verify(b64d(admin["signature"]), message)
    except (CoreError, accounts.KeysMismatch):
        raise _refuse(
            peer, case, f"{step} signature invalid", f"The {name} signature does not verify with their registered key."
        ) from None
    return at


def _case_id(value: object) -> str:
    case = _account_id(value)
    if not case:
        raise ValidationFailed("`case` must be a case id.")
    return case


def take_case(peer: str, data: dict[str, Any], now: datetime) -> RecoveryCase:
    """A home node (`peer`) asks this node's admins to approve a recovery case of one of its
    accounts whose share is held here: kept as a waiting case for the admins' desk."""
    case_id, account = _case_id(data.get("case")), _checked_account(data.get("account"))
    opener = _approver(data.get("opened_by"), "opened_by")
    check = data.get("identity_check")
    if not isinstance(check, str) or not 1 <= len(check) <= 200 or not check.isprintable():
        raise ValidationFailed("`identity_check` must be 1-200 printable characters.")
    _held(account, peer)
    if not _peer_admin(opener["account"], peer):
        raise Forbidden("The case was not opened by an admin of its home node.")
    me = here()
    statement = {"case": case_id, "account": account, "home": peer, "holder": me.node_id, "check": IN_PERSON}
    opened_at = _verify(peer, opener, peer, statement, now, OPENED_MAX_AGE)
    case = db.session.get(RecoveryCase, case_id)
    if case is None:
        case = RecoveryCase(
            id=case_id, account=account, home_node=peer, holder_node=me.node_id, status="waiting",
            identity_check=check, opened_by_node=peer, opened_by_account=opener["account"],
            opened_by_name=opener["name"], opened_at=_from_ms(opened_at), opened_signature=b64d(opener["signature"]),
        )  # fmt: skip
        db.session.add(case)
    elif case.home_node != peer or case.account != account:
        raise Conflict("Another case has that id.")
    db.session.commit()
    return case


def release_to_home(peer: str, data: dict[str, Any], me: Here, now: datetime) -> str:
    """Two admins of the home node (`peer`) approved a case: release the held share to it,
    sealed to its box key for this case. Both must be admins the ledger knows as endorsed by
    that node, different people, and each must have signed this case's statement with their own
    registered key (the opener within OPENED_MAX_AGE, the approver within APPROVAL_FRESH), so
    the home node's key and database alone cannot forge them. Recorded here as a released case;
    asked again for a released case (the home node did not get the answer), the same share is
    sent again on fresh signatures."""
    case_id, account = _case_id(data.get("case")), _checked_account(data.get("account"))
    opener, approver = _approver(data.get("opened_by"), "opened_by"), _approver(data.get("approved_by"), "approved_by")
    if opener["account"] == approver["account"]:
        raise _refuse(peer, case_id, "one admin twice", "A recovery needs two different admins.")
    if not (_peer_admin(opener["account"], peer) and _peer_admin(approver["account"], peer)):
        raise _refuse(
            peer, case_id, "approval by a non-admin", "Both approvals must come from admins of the account's home node."
        )
    statement = {"case": case_id, "account": account, "home": peer, "holder": me.node_id}
    _verify(peer, opener, peer, {**statement, "check": IN_PERSON}, now, OPENED_MAX_AGE)
    _verify(peer, approver, peer, {**statement, "check": SECOND_APPROVAL}, now, APPROVAL_FRESH)
    row = _held(account, peer)
    case = db.session.get(RecoveryCase, case_id)
    if case is not None and (case.home_node != peer or case.account != account):
        raise Conflict("That case belongs to another account.")
    sealed = _release(row, case_id, me)
    if case is not None and case.status == "released":  # the answer was lost on its way: the same share again
        log.info("released escrow share of case %s to its home node %s again", case_id[:8], peer)
        return sealed
    if case is None:
        case = RecoveryCase(
            id=case_id, account=account, home_node=peer, holder_node=me.node_id, identity_check="checked at home",
            opened_by_node=peer, opened_by_account=opener["account"], opened_by_name=opener["name"],
            opened_at=_from_ms(opener["at"]), opened_signature=b64d(opener["signature"]),
        )  # fmt: skip
        db.session.add(case)
    case.status, case.approved_at = "released", now
    case.approved_by_node, case.approved_by_account, case.approved_by_name = peer, approver["account"], approver["name"]
    db.session.commit()
    log.info("released escrow share of case %s to its home node %s", case_id[:8], peer)
    return sealed


# -- recovery cases (desk) -----------------------------------------------------------------------


def _desk_admin(admin: User) -> None:
    if admin.role != "admin" or not admin.is_local:
        raise Forbidden("Only a hospital administrator can handle account recoveries.")


def open_case(
    admin: User, account: object, identity_check: object, now: datetime, keys: UserKeys | None = None
) -> RecoveryCase:
    """The front desk of an account's home hospital has checked the person's identity in person
    and opens a recovery case, signed with the admin's own key (`keys`, from their session);
    the holder of the other share is told, for its admins' desk. Forbidden for anyone but an
    admin of the account's home hospital (and for their own account), Conflict for an account
    without escrow or with a case under way, Unauthorized without the admin's keys."""
    _desk_admin(admin)
    user = accounts.get_user(account)
    if user.id == admin.id:
        raise Forbidden("No one can recover their own account.")
    if not user.is_local or user.home_node != admin.home_node:
        raise Forbidden("This account belongs to another hospital: only its home hospital can recover it.")
    if user.role not in ESCROWED_ROLES:
        raise Forbidden("Only patients' and doctors' accounts are kept in escrow.")
    check = identity_check.strip() if isinstance(identity_check, str) else ""
    if not 3 <= len(check) <= 200 or not check.isprintable():
        raise ValidationFailed("Say how the identity was checked in person (3-200 characters, e.g. 'passport').")
    row = _escrow(user)
    if row is not None and not row.enabled:
        raise Conflict(OPTED_OUT)
    me = here()
    if row is None or row.share is None or row.holder is None:
        if choose_holder(user.public_id, me) is None:
            raise Conflict(
                "This account has no escrowed key: this hospital is waiting for a second member hospital to hold "
                "the other half, and the key is split at the person's first sign-in after one has joined."
            )
        raise Conflict(
            "This account has no escrowed key yet (it is made when they next sign in), so it cannot be recovered."
        )
    if _has_left(row.holder, me):
        raise Conflict(
            "The hospital that held the other half of this key has left the consortium: the key is split again "
            "at the person's next sign-in, and cannot be recovered until then."
        )
    _expire(user.public_id, now)
    under_way = db.session.scalar(
        select(RecoveryCase.id).where(
            RecoveryCase.account == user.public_id,
            RecoveryCase.home_node == admin.home_node,
            RecoveryCase.status.in_(("open", "approved", "issued")),
        )
    )
    if under_way is not None:
        raise Conflict("A recovery of this account is already under way: finish or cancel it first.")
    case_id, now = str(uuid.uuid4()), _ms_floor(now)
    statement = (case_id, user.public_id, me.node_id, row.holder, admin.public_id, IN_PERSON, epoch_ms(now))
    signature = b64d(_signed_by(admin, keys, approval_statement(*statement)))
    case = RecoveryCase(
        id=case_id, account=user.public_id, home_node=me.node_id, holder_node=row.holder, status="open",
        identity_check=check, opened_by_node=me.node_id, opened_by_account=admin.public_id,
        opened_by_name=admin.display_name, opened_at=now, opened_signature=signature,
    )  # fmt: skip
    db.session.add(case)
    db.session.commit()
    _announce(case, me)
    return case


def _opener(case: RecoveryCase) -> dict[str, Any]:
    """The opener as node requests name them: with their signature over the case's statement."""
    if case.opened_signature is None:
        raise Conflict("This case was opened before approvals were signed: cancel it and open a new one.")
    return {
        "account": case.opened_by_account, "name": case.opened_by_name,
        "signature": b64e(case.opened_signature), "at": epoch_ms(case.opened_at),
    }  # fmt: skip


def _announce(case: RecoveryCase, me: Here) -> bool:
    opener = _opener(case)
    body = {"case": case.id, "account": case.account, "identity_check": case.identity_check, "opened_by": opener}
    answer = _post(me, case.holder_node, "/node/v1/escrow/cases", body)
    return isinstance(answer, dict) and answer.get("status") == "waiting"


def announce(admin: User, case_id: object) -> bool:
    """Show an open case to the holder's admins (again: it may have been down, or not have the
    opener's key on its ledger yet). True once the holder has it."""
    case = _home_case(admin, case_id)
    if case.home_node != admin.home_node or case.status != "open":
        raise Conflict("Only an open case of this hospital can be sent to the other hospital.")
    return _announce(case, here())


def _home_case(admin: User, case_id: object) -> RecoveryCase:
    _desk_admin(admin)
    case = db.session.get(RecoveryCase, case_id) if isinstance(case_id, str) else None
    if case is None:
        raise NotFound("No such recovery case.")
    if case.home_node != admin.home_node and case.holder_node != admin.home_node:
        raise Forbidden("This recovery case belongs to another hospital.")
    return case


def _post(me: Here, peer: str, path: str, body: dict[str, Any]) -> Any:
    return me.peers.post(peer, path, body) if me.peers is not None else None


def approve(admin: User, case_id: object, now: datetime, keys: UserKeys | None = None) -> RecoveryCase:
    """The second approval, signed with the admin's own key (`keys`, from their session). At the
    home node: another admin than the one who opened it; the holder is asked to release its
    share (and checks both admins' signatures). At the holder: an admin there releases the share
    to the home node (which checks their signature). Forbidden for the opener, Conflict for a
    case not waiting for approval, PeerUnavailable when the other node does not answer (or
    refuses: its log says why)."""
    case = _home_case(admin, case_id)
    me = here()
    at = epoch_ms(now)
    approver: dict[str, Any] = {"account": admin.public_id, "name": admin.display_name, "at": at}
    statement = (case.id, case.account, case.home_node, case.holder_node, admin.public_id, SECOND_APPROVAL, at)
    if case.home_node == me.node_id:
        if case.status != "open":
            raise Conflict("This case is not waiting for a second approval.")
        if case.opened_by_account == admin.public_id:
            raise Forbidden("The second approval must come from another admin than the one who opened the case.")
        if case.opened_at < now - OPENED_MAX_AGE:
            raise Conflict("This case was opened more than 7 days ago: cancel it and open a new one.")
        opener = _opener(case)
        approver["signature"] = _signed_by(admin, keys, approval_statement(*statement))
        body = {"case": case.id, "account": case.account, "approved_by": approver, "opened_by": opener}
        answer = _post(me, case.holder_node, "/node/v1/escrow/release", body)
        share = answer.get("share") if isinstance(answer, dict) else None
        if not isinstance(share, str):
            raise PeerUnavailable(
                "The hospital holding the other share did not release it (it did not answer, or refused the "
                "approvals); try again later."
            )
        _take_share(case, share, me.node_id, approver, now)
        db.session.commit()
        return case
    if case.status != "waiting":
        raise Conflict("This case is not waiting for an approval here.")
    if case.opened_at < now - OPENED_MAX_AGE:
        raise Conflict("This case was opened more than 7 days ago: the home hospital must open a new one.")
    approver["signature"] = _signed_by(admin, keys, approval_statement(*statement))
    sealed = _release(_held(case.account, case.home_node), case.id, me)
    body = {"account": case.account, "share": sealed, "approved_by": approver}
    answer = _post(me, case.home_node, f"/node/v1/escrow/cases/{case.id}/approval", body)
    if not (isinstance(answer, dict) and answer.get("status") == "approved"):
        raise PeerUnavailable("The patient's home hospital did not take the approval; try again later.")
    case.status, case.approved_at = "released", now
    case.approved_by_node, case.approved_by_account, case.approved_by_name = (
        me.node_id,
        admin.public_id,
        admin.display_name,
    )
    db.session.commit()
    return case


def _take_share(case: RecoveryCase, share: str, node: str, approver: dict[str, Any], now: datetime) -> None:
    case.peer_share = _sealed(share, "share")
    case.status, case.approved_at = "approved", now
    case.approved_by_node, case.approved_by_account, case.approved_by_name = node, approver["account"], approver["name"]


def take_approval(peer: str, case_id: object, data: dict[str, Any], now: datetime) -> RecoveryCase:
    """The holder of a case's other share (`peer`) says its admin approved, and sends the share
    sealed to this node: only the holder named in the case, only for an open case, with the
    admin's valid signature. Sent again after the holder missed the answer: answered as taken."""
    case = db.session.get(RecoveryCase, case_id) if isinstance(case_id, str) else None
    me = here()
    if case is None or case.home_node != me.node_id:
        raise NotFound("No such recovery case here.")
    if case.holder_node != peer or case.account != _checked_account(data.get("account")):
        raise Forbidden("Only the node holding this case's share may approve it.")
    retaken = case.status == "approved" and case.approved_by_node == peer  # the holder did not get our answer
    if case.status != "open" and not retaken:
        raise Conflict("This case is not waiting for a second approval.")
    approver = _approver(data.get("approved_by"), "approved_by")
    if not _peer_admin(approver["account"], peer):
        raise Forbidden("The approval does not come from an admin of that node.")
    statement = {"case": case.id, "account": case.account, "home": me.node_id, "holder": peer}
    _verify(peer, approver, peer, {**statement, "check": SECOND_APPROVAL}, now, APPROVAL_FRESH)
    if retaken:
        return case
    _take_share(case, data.get("share"), peer, approver, now)  # type: ignore[arg-type]
    db.session.commit()
    return case


def issue_code(admin: User, case_id: object, now: datetime) -> tuple[RecoveryCase, str]:
    """Both approvals are in: join the shares, check that they open the account's sealed keys,
    and wrap the user key under a new one-time recovery code, shown once to the admin to hand
    to the person. Writes the `escrow_recovery` transaction (signed by this node)."""
    case = _home_case(admin, case_id)
    me = here()
    if case.home_node != me.node_id:
        raise Forbidden("Only the account's home hospital issues its recovery code.")
    if case.status != "approved" or case.peer_share is None:
        raise Conflict("A recovery code needs both approvals first.")
    user = accounts.get_user(case.account)
    row = _escrow(user)
    if row is None or row.share is None:
        raise Conflict(OPTED_OUT)
    try:
        home_share = aead.decrypt(me.escrow_key(), row.share, _home_aad(user.public_id, me.node_id))
        held_share = me.box.open(case.peer_share, _release_aad(case.id, user.public_id, me.node_id))
        user_key = _xor(home_share, held_share)
        open_user_keys(user.sealed_private_keys, user_key, accounts.PRIVATE_KEYS_AAD + user.public_id.encode())
    except (DecryptionError, ValueError):
        case.status, case.peer_share = "cancelled", None
        db.session.commit()
        raise Conflict("The released share does not fit this account; the case is cancelled. Open a new one.") from None
    code = _new_code()
    normal = _normal_code(code) or ""
    case.code_hash = _code_hash(normal)
    case.wrapped_key = aead.encrypt(_code_key(normal), user_key, CODE_AAD + f"{case.id}/{case.account}".encode())
    case.code_expires_at, case.issued_at, case.status, case.peer_share = now + CODE_TTL, now, "issued", None
    tx = sign_transaction(
        "escrow_recovery",
        {
            "case": case.id, "account": case.account, "method": "escrow",
            "opened_by": {"node": case.opened_by_node, "account": case.opened_by_account},
            "approved_by": {"node": case.approved_by_node, "account": case.approved_by_account},
        },
        me.node,
        epoch_ms(now),
    )  # fmt: skip
    case.tx_hash = tx.hash
    ledger.queue(tx, now)
    db.session.commit()
    return case, code


def case_state(case: RecoveryCase, now: datetime) -> str:
    """A case's state as the desk shows it: `expired` for an issued code past its time (it no
    longer works, and a new case may be opened), else its stored status."""
    if case.status == "issued" and (case.code_expires_at is None or case.code_expires_at <= now):
        return "expired"
    return case.status


def _expire(account: str, now: datetime) -> None:
    """Store `expired` for the account's issued codes past their time, and drop what they wrap."""
    for case in db.session.scalars(
        select(RecoveryCase).where(RecoveryCase.account == account, RecoveryCase.status == "issued")
    ):
        if case_state(case, now) == "expired":
            case.status, case.wrapped_key = "expired", None


def cancel(admin: User, case_id: object) -> RecoveryCase:
    """An admin of the home hospital ends a case that is under way (its code stops working)."""
    case = _home_case(admin, case_id)
    if case.home_node != admin.home_node or case.status not in ("open", "approved", "issued"):
        raise Conflict("Only a case under way at its home hospital can be cancelled.")
    case.status, case.peer_share, case.wrapped_key = "cancelled", None, None
    db.session.commit()
    return case


def desk_cases(admin: User) -> list[RecoveryCase]:
    """Cases under way at this hospital: its own accounts' and those waiting on its approval."""
    _desk_admin(admin)
    return list(
        db.session.scalars(
            select(RecoveryCase)
            .where(RecoveryCase.status.in_(("open", "approved", "issued", "waiting")))
            .order_by(RecoveryCase.opened_at.desc())
            .limit(100)
        )
    )


def account_of(case: RecoveryCase) -> User | None:
    return db.session.scalar(select(User).where(User.public_id == case.account))


# -- the person sets a new password --------------------------------------------------------------


def recover_with_code(username: object, code: object, new_password: object, kdf: KdfParams, now: datetime) -> User:
    """Set a new password with a recovery code from the front desk: the user key the code wraps
    is wrapped under the new password, the code is spent and every session ends. One answer
    (401) for an unknown account, a wrong, used or expired code."""
    wrong = Unauthorized("The username or the recovery code is wrong, or the code has expired or was used.")
    normal = _normal_code(code)
    user = (
        db.session.scalar(select(User).where(User.username == username))
        if isinstance(username, str) and len(username) <= 40
        else None
    )
    if normal is None or user is None or not user.is_local:
        raise wrong
    case = db.session.scalar(
        select(RecoveryCase).where(
            RecoveryCase.account == user.public_id,
            RecoveryCase.status == "issued",
            RecoveryCase.home_node == user.home_node,
        )
    )
    if case is None or not hmac.compare_digest(case.code_hash or "", _code_hash(normal)):
        raise wrong
    if case_state(case, now) == "expired":
        case.status, case.wrapped_key = "expired", None
        db.session.commit()
        raise wrong
    password = accounts.check_password(new_password, [user.username or "", user.display_name])
    try:
        user_key = aead.decrypt(
            _code_key(normal), case.wrapped_key or b"", CODE_AAD + f"{case.id}/{case.account}".encode()
        )
    except DecryptionError:
        raise wrong from None
    accounts._wrap_under_password(user, user_key, password, kdf)
    user.failed_logins, user.last_failed_login_at = 0, None
    user.recovered_at, user.recovered_method, user.recovered_notice = now, "escrow", True  # told at next sign-in
    case.status, case.completed_at, case.wrapped_key = "completed", now, None
    if user.role == "patient":  # in their access log, beside the ledger entry
        db.session.add(
            AccessEntry(id=str(uuid.uuid4()), record_id=None, reader=user, mode="escrow", at=now, tx_hash=case.tx_hash)
        )
    sessions = select(AuthSession.id).where(AuthSession.user_id == user.id)
    db.session.execute(delete(ChatSocket).where(ChatSocket.session_id.in_(sessions)))
    db.session.execute(delete(AuthSession).where(AuthSession.user_id == user.id))
    db.session.commit()
    return user


def _completed(user: User) -> list[RecoveryCase]:
    return list(
        db.session.scalars(
            select(RecoveryCase)
            .where(RecoveryCase.account == user.public_id, RecoveryCase.status == "completed")
            .order_by(RecoveryCase.completed_at.desc())
        )
    )
