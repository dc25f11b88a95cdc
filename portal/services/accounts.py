"""Accounts, keys and sessions.

Key custody (see docs/security.md): each user has a random 256-bit *user key*. The
private keys are sealed under it; it is stored wrapped under an Argon2id key from the
password (which doubles as the password check: a wrong password cannot unwrap it),
and, for each signed-in session, wrapped under a key derived from the session token,
which only the client holds. The database alone, or the token alone, opens nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload
from zxcvbn import zxcvbn

from core.crypto import (
    KdfParams,
    NodeKey,
    PublicKeys,
    UserKeys,
    aead,
    derive_key,
    generate_user_keys,
    open_user_keys,
    seal_user_keys,
)
from core.encoding import b64d, canonical, decode_canonical
from core.errors import CoreError, DecryptionError
from core.ledger import decode_transaction, key_payload, sign_transaction
from portal.extensions import db
from portal.models import AuthSession, LedgerTransaction, User, epoch_ms
from portal.services import ledger, paging, throttle, two_factor
from portal.services.errors import Conflict, Forbidden, NotFound, ServiceError, Unauthorized, ValidationFailed

ROLES = ("patient", "doctor", "admin")
USERNAME_RE = re.compile(r"^[a-z0-9._-]{3,40}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
MIN_PASSWORD_SCORE = 3  # zxcvbn's 0-4: 3 is 'safely unguessable', about 10^10 guesses
USER_KEY_AAD = b"medledger/user-key/v1\n"
PRIVATE_KEYS_AAD = b"medledger/private-keys/v1\n"
SESSION_AAD = b"medledger/session/v1\n"
_DUMMY_SALT = b"\x00" * 16
ISO_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
EARLIEST_BIRTH = date(1900, 1, 1)
# A hospital patient number: letters and digits, with '-', '/' or '.' between them.
MRN_RE = re.compile(r"^[A-Z0-9](?:[A-Z0-9./-]{0,38}[A-Z0-9])?$")


@dataclass(frozen=True)
class Actor:
    """The signed-in user of one request, with the token that can unlock their keys."""

    user: User
    session: AuthSession
    token: str

    def user_key(self) -> bytes:
        """The user key, unwrapped with this session's token, for this request only."""
        return aead.decrypt(_session_key(self.token), self.session.wrapped_user_key, SESSION_AAD + _aad_id(self.user))

    def keys(self) -> UserKeys:
        """Unlock the user's private keys for this request only."""
        return open_user_keys(self.user.sealed_private_keys, self.user_key(), PRIVATE_KEYS_AAD + _aad_id(self.user))


def _aad_id(user: User) -> bytes:
    return user.public_id.encode()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _session_key(token: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"medledger/session-key/v1").derive(
        token.encode()
    )


def _check_text(value: object, name: str, max_len: int, min_len: int = 1) -> str:
    if not isinstance(value, str) or not (min_len <= len(value.strip()) <= max_len):
        raise ValidationFailed(f"{name} must be {min_len}-{max_len} characters.")
    return value.strip()


def check_password(password: object, context: Sequence[str] = ()) -> str:
    """At least MIN_PASSWORD characters and hard to guess: zxcvbn (offline, with its lists of
    common and breached passwords, words and names) must rate it 3 of 4 or better, with the
    account's own username and name counted as known words."""
    if not isinstance(password, str) or not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
        raise ValidationFailed(f"Password must be at least {MIN_PASSWORD} characters.")
    rating = zxcvbn(password[:100], user_inputs=[c for c in context if isinstance(c, str)])
    if rating["score"] < MIN_PASSWORD_SCORE:
        feedback = rating["feedback"]
        why = (feedback.get("warning") or "It follows a common pattern.").rstrip(".")
        hint = " ".join(feedback.get("suggestions") or []) or "Add another word or two."
        raise ValidationFailed(f"This password is too easy to guess: {why}. {hint}")
    return password


def check_date_of_birth(value: object, today: date) -> date:
    """A date of birth given as an ISO date (YYYY-MM-DD): a real day, not after `today` and not
    before 1900. Raises ValidationFailed with a sentence for people."""
    if isinstance(value, str):
        value = _iso_date(value.strip())
    if not isinstance(value, date) or isinstance(value, datetime):
        raise ValidationFailed("Date of birth must be a real date, written as YYYY-MM-DD (for example 1984-03-21).")
    if value > today:
        raise ValidationFailed("Date of birth cannot be in the future.")
    if value < EARLIEST_BIRTH:
        raise ValidationFailed("Date of birth cannot be before 1 January 1900.")
    return value


def _iso_date(text: str) -> date | None:
    if not ISO_DATE_RE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:  # 2001-02-30
        return None


def check_mrn(value: object) -> str:
    """A hospital patient number, upper-cased: 1-40 letters and digits (with '-', '/' or '.'
    between them). Raises ValidationFailed."""
    text = value.strip().upper() if isinstance(value, str) else ""
    if not MRN_RE.match(text):
        raise ValidationFailed(
            "The hospital number must be 1-40 letters and digits (a '-', '/' or '.' may separate them)."
        )
    return text


def create_user(
    *,
    role: str,
    username: object,
    password: object,
    display_name: object,
    kdf: KdfParams,
    now: datetime,
    home: NodeKey,
    hospital: object = None,
    licence_number: object = None,
    date_of_birth: object = None,
) -> User:
    """Create an account of this node (`home`, which endorses its key) with fresh RSA-3072 and
    Umbral keys, and queue its key registration. A patient's `date_of_birth` (checked by
    check_date_of_birth) is kept here like the name and never goes on the ledger.

    Raises ValidationFailed for bad input and Conflict for a taken username."""
    if role not in ROLES:
        raise ValidationFailed(f"Role must be one of {', '.join(ROLES)}.")
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        raise ValidationFailed("Username must be 3-40 characters of a-z, 0-9, '.', '_' or '-'.")
    password = check_password(password, [username, display_name if isinstance(display_name, str) else ""])
    display_name = _check_text(display_name, "Display name", 120)
    if role == "doctor":
        hospital = _check_text(hospital, "Hospital", 120)
        licence_number = _check_text(licence_number, "Licence number", 40)
    else:
        hospital = licence_number = None
    born = check_date_of_birth(date_of_birth, now.date()) if role == "patient" and date_of_birth is not None else None
    if db.session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"The username {username!r} is taken.")

    keys = generate_user_keys()
    public = keys.public
    user = User(
        public_id=str(uuid.uuid4()),
        username=username,
        display_name=display_name,
        role=role,
        hospital=hospital,
        licence_number=licence_number,
        date_of_birth=born,
        rsa_public_key=public.rsa_der,
        umbral_public_key=public.umbral,
        key_id=public.key_id,
        home_node=home.node_id,
    )
    user_key = aead.random_key()
    _wrap_under_password(user, user_key, password, kdf)
    user.sealed_private_keys = seal_user_keys(keys, user_key, PRIVATE_KEYS_AAD + _aad_id(user))
    tx = sign_transaction(
        "key", key_payload(user.public_id, role, public.rsa_der, public.umbral, home, public.sign), keys, epoch_ms(now)
    )
    user.key_tx_hash = tx.hash
    db.session.add(user)
    ledger.queue(tx, now)
    db.session.flush()
    from portal.services import escrow  # hospital-assisted recovery: patients by default, doctors always

    escrow.on_sign_in(user, user_key, now)
    db.session.commit()
    return user


def _wrap_under_password(user: User, user_key: bytes, password: str, kdf: KdfParams) -> None:
    user.kdf_salt = os.urandom(16)
    user.kdf_params = canonical(kdf.to_dict()).decode()
    kek = derive_key(password, user.kdf_salt, kdf)
    user.wrapped_user_key = aead.encrypt(kek, user_key, USER_KEY_AAD + _aad_id(user))


def _unwrap_with_password(user: User, password: str) -> bytes:
    params = KdfParams.from_dict(decode_canonical(user.kdf_params.encode()))
    kek = derive_key(password, user.kdf_salt, params)
    return aead.decrypt(kek, user.wrapped_user_key, USER_KEY_AAD + _aad_id(user))


def _authenticate(username: object, password: object, kdf: KdfParams) -> tuple[User, bytes]:
    wrong = Unauthorized("Wrong username or password.")
    if not isinstance(username, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
        raise wrong
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        derive_key(password, _DUMMY_SALT, kdf)  # same cost as a real attempt: no username probing by timing
        raise wrong
    try:
        return user, _unwrap_with_password(user, password)
    except DecryptionError:
        raise wrong from None


@dataclass(frozen=True)
class SignIn:
    """A new session: its token (only ever given to the client), and the failed sign-ins on the
    account since its previous sign-in, for the owner to see."""

    token: str
    session: AuthSession
    failed_attempts: int
    last_failed_at: datetime | None


def login(
    username: object, password: object, *, kind: str, ttl_seconds: int, kdf: KdfParams, now: datetime,
    address: str | None = None, policy: throttle.Policy | None = None, otp: object = None,
    two_factor_roles: frozenset[str] = frozenset(),
) -> SignIn:  # fmt: skip
    """Check the password (and the second factor, where the account has one) and open a session,
    throttled per account name and client `address` (portal/services/throttle.py; `policy` None:
    not throttled, for internal sign-ins only). An API token for an account of
    `two_factor_roles` without a second factor is refused until it is set up in the portal."""
    if policy is not None:
        throttle.check(username, address, policy, now)
    try:
        user, user_key = _authenticate(username, password, kdf)
        if two_factor.enabled(user):
            if otp is None or otp == "":
                raise two_factor.CodeRequired(
                    "Enter the 6-digit code from your authenticator app (or one of your recovery codes)."
                )
            if not two_factor.check(user, user_key, otp, now):
                raise Unauthorized("Wrong authentication code.")
    except two_factor.CodeRequired:
        raise
    except Unauthorized:
        db.session.rollback()
        if policy is not None:
            owner = db.session.scalar(select(User).where(User.username == str(username)))
            if owner is not None:
                owner.failed_logins += 1
                owner.last_failed_login_at = now
            throttle.failed(username, address, policy, now)
        raise
    if kind == "api" and two_factor.required(user, two_factor_roles) and not two_factor.enabled(user):
        raise two_factor.EnrolmentRequired(
            "Two-factor sign-in is required for your account: set it up in the portal first "
            "(Account, Two-factor sign-in)."
        )
    if policy is not None:
        throttle.succeeded(username)
    from portal.services import escrow

    escrow.on_sign_in(user, user_key, now)  # an account made before escrow gets its shares now
    failed, last_failed = user.failed_logins, user.last_failed_login_at
    user.failed_logins, user.last_failed_login_at = 0, None
    token = secrets.token_urlsafe(32)
    session = AuthSession(
        user=user,
        token_hash=_token_hash(token),
        kind=kind,
        wrapped_user_key=aead.encrypt(_session_key(token), user_key, SESSION_AAD + _aad_id(user)),
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    db.session.add(session)
    db.session.execute(delete(AuthSession).where(AuthSession.expires_at <= now))
    db.session.commit()
    return SignIn(token, session, failed, last_failed)


def resolve(token: object, now: datetime) -> Actor | None:
    """The actor for a token, or None when it is unknown, expired or the account is disabled."""
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        return None
    session = find_session(token)
    if session is None or session.expires_at <= now or not session.user.active:
        return None
    session.user.session_token = token
    return Actor(session.user, session, token)


def find_session(token: str) -> AuthSession | None:
    """The session a token names, with its user, read once per database session: a request asks
    for it more than once (the idle check, then the actor), and each read cost two statements."""
    digest = _token_hash(token)
    known: dict[str, AuthSession | None] = db.session.info.setdefault("auth_sessions", {})
    if digest not in known:
        query = select(AuthSession).options(joinedload(AuthSession.user)).where(AuthSession.token_hash == digest)
        known[digest] = db.session.scalar(query)
    return known[digest]


def logout(token: str) -> None:
    """End a session: its wrapped key is deleted, so the token opens nothing any more."""
    db.session.info.get("auth_sessions", {}).pop(_token_hash(token), None)
    db.session.execute(delete(AuthSession).where(AuthSession.token_hash == _token_hash(token)))
    db.session.commit()


def change_password(actor: Actor, old_password: object, new_password: object, kdf: KdfParams) -> None:
    """Re-wrap the user key under the new password and end every other session."""
    new_password = check_password(new_password, [actor.user.username or "", actor.user.display_name])
    if not isinstance(old_password, str):
        raise Unauthorized("The current password is wrong.")
    try:
        user_key = _unwrap_with_password(actor.user, old_password)
    except DecryptionError:
        raise Unauthorized("The current password is wrong.") from None
    _wrap_under_password(actor.user, user_key, new_password, kdf)
    db.session.execute(
        delete(AuthSession).where(AuthSession.user_id == actor.user.id, AuthSession.id != actor.session.id)
    )
    db.session.commit()


def find_users(role: str, query: object, limit: int = 20, local_only: bool = False) -> list[User]:
    """Active accounts of `role` whose username, name or hospital contains `query` (2+ characters):
    doctors find patients, patients find doctors to grant. Patients are found by name only at
    their home node (elsewhere by their id); `local_only` keeps to this node's accounts."""
    if not isinstance(query, str) or len(query.strip()) < 2:
        raise ValidationFailed("Search needs at least 2 characters.")
    text = query.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    like = f"%{text}%"  # `%` and `_` typed by the user match themselves
    matches = or_(
        User.username.like(like, escape="\\"),
        User.display_name.ilike(like, escape="\\"),
        User.hospital.ilike(like, escape="\\"),
    )
    stmt = select(User).where(User.role == role, User.active, matches)
    if local_only or role == "patient":
        stmt = stmt.where(User.sealed_private_keys.is_not(None))
    else:
        stmt = stmt.where(User.sealed_private_keys.is_not(None) | User.resolved_at.is_not(None))
    return list(db.session.scalars(stmt.order_by(User.display_name).limit(limit)))


def patient_for_desk(admin: User, patient_id: object) -> User:
    """A patient whose identity `admin` may check: one registered at the admin's own hospital.
    Raises Forbidden for anyone but an admin of the patient's home hospital, NotFound for no such patient."""
    if admin.role != "admin" or not admin.is_local:
        raise Forbidden("Only a hospital administrator can check a patient's identity.")
    patient = get_user(patient_id, role="patient")
    if not patient.is_local or patient.home_node != admin.home_node:
        raise Forbidden("Only the patient's home hospital can check their identity and give them a hospital number.")
    return patient


def verify_in_person(admin: User, patient_id: object, mrn: object, now: datetime, date_of_birth: object = None) -> User:
    """The front desk of a patient's home hospital has checked their identity in person: record
    the hospital number (unique at this hospital) and when, and who checked. A date of birth
    seen on the identity document may be given, to set or correct the one on file.

    Only an admin of the patient's home hospital may: Forbidden for anyone else (a doctor, a
    patient, an admin of another hospital). NotFound for no such patient, ValidationFailed for a
    bad number or date, Conflict for a number this hospital already gave another patient."""
    patient = patient_for_desk(admin, patient_id)
    number = check_mrn(mrn)
    born = check_date_of_birth(date_of_birth, now.date()) if date_of_birth not in (None, "") else None
    taken = db.session.scalar(
        select(User.id).where(User.home_node == patient.home_node, User.mrn == number, User.id != patient.id)
    )
    if taken is not None:
        raise Conflict(f"The hospital number {number} is already given to another patient of this hospital.")
    patient.mrn, patient.verified_at, patient.verified_by_id = number, now, admin.id
    if born is not None:
        patient.date_of_birth = born
    try:
        db.session.commit()
    except IntegrityError:  # the same number given at the same moment by another desk
        db.session.rollback()
        raise Conflict(f"The hospital number {number} is already given to another patient of this hospital.") from None
    return patient


def get_local_user(public_id: object) -> User:
    """An account registered at this node; raises NotFound for any other."""
    user = get_user(public_id)
    if not user.is_local:
        raise NotFound("No such account registered here.")
    return user


def get_user(public_id: object, role: str | None = None) -> User:
    """A user by public id (optionally of one role); raises NotFound."""
    user = (
        db.session.scalar(select(User).where(User.public_id == str(public_id))) if isinstance(public_id, str) else None
    )
    if user is None or (role is not None and user.role != role):
        raise NotFound(f"No such {role or 'user'}.")
    return user


def page_users(admin: User, limit: int, offset: int) -> paging.Page[User]:
    """One page of this node's accounts, by role then username: for its admins only."""
    if admin.role != "admin":
        raise Forbidden("Only administrators see the accounts.")
    return paging.paged(select(User).order_by(User.role, User.username, User.id), limit, offset)


class KeysMismatch(ServiceError):
    """A user's public keys in the database differ from their registration on the ledger."""

    status = 409
    code = "keys_mismatch"


def published_keys(user: User) -> PublicKeys:
    """The user's public keys, checked against their key registration on the ledger so that a
    tampered database row cannot redirect a record to someone else's key."""
    try:
        registered = _registered_keys(user.key_tx_hash)
    except _NotRegistered:
        registered = None
    if registered is None or registered.rsa_der != user.rsa_public_key or registered.umbral != user.umbral_public_key:
        raise KeysMismatch(f"The published keys of {user.username} do not match the ledger.")
    return registered


class _NotRegistered(Exception):
    """No readable `key` transaction under that hash (raised, so that it is not cached)."""


@functools.lru_cache(maxsize=4096)
def _registered_keys(tx_hash: str) -> PublicKeys:
    """The keys a `key` transaction registers, read and checked once per process: a transaction
    is named by the hash of its bytes, so what was read under a hash never changes (a copy
    tampered with later is the chain check's to find). A write read these twice per record."""
    row = db.session.get(LedgerTransaction, tx_hash)
    if row is None:
        raise _NotRegistered
    try:
        tx = decode_transaction(row.encoded)
    except CoreError:
        raise _NotRegistered from None
    if tx.hash != tx_hash or tx.kind != "key":
        raise _NotRegistered
    sign = b64d(tx.payload["sign"]) if "sign" in tx.payload else None
    return PublicKeys(rsa_der=b64d(tx.payload["rsa"]), umbral=b64d(tx.payload["umbral"]), sign=sign)
