"""Two-factor sign-in with TOTP (RFC 6238, pyotp) and one-time recovery codes (docs/security.md).

The TOTP secret is sealed (AES-GCM) under the account's user key, which only a sign-in with the
password unwraps: a copy of the database reveals no secret, and a code is checked only after the
password was right. A code works once (the last time step used is kept) within one step of the
clock either way. Ten recovery codes are made at set-up, shown once, stored as hashes, and each
works once in place of a code. Doctors and admins must use it where TWO_FACTOR_REQUIRED_ROLES
says so (production); patients may. An admin may reset a doctor's second factor of their own
hospital (lost phone): that is logged, and the doctor sets it up again at their next sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pyotp
import segno

from core.crypto import aead
from core.errors import DecryptionError
from portal.extensions import db
from portal.models import User
from portal.services.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed

log = logging.getLogger(__name__)

ISSUER = "MedLedger"
RECOVERY_CODES = 10
SECRET_AAD = b"medledger/totp/v1\n"
STEP_SECONDS = 30


class CodeRequired(Unauthorized):
    code = "two_factor_required"


class EnrolmentRequired(Forbidden):
    code = "two_factor_setup_required"


@dataclass(frozen=True)
class Enrolment:
    secret: str  # base32, for typing into an app by hand
    uri: str  # otpauth://, what the QR code holds
    qr_svg: str


def _seal(user: User, user_key: bytes, secret: str) -> bytes:
    return aead.encrypt(user_key, secret.encode(), SECRET_AAD + user.public_id.encode())


def _open(user: User, user_key: bytes, sealed: bytes) -> str:
    return aead.decrypt(user_key, sealed, SECRET_AAD + user.public_id.encode()).decode()


def _step(now: datetime) -> int:
    return int(now.replace(tzinfo=UTC).timestamp()) // STEP_SECONDS


def _hash(code: str) -> str:
    return hashlib.sha256(f"medledger/recovery\n{code}".encode()).hexdigest()


def _normalise(code: object) -> str:
    return "".join(code.split()).replace("-", "").lower() if isinstance(code, str) else ""


def required_roles(config: Mapping[str, object]) -> frozenset[str]:
    """TWO_FACTOR_REQUIRED_ROLES: comma-separated roles that must use two-factor sign-in."""
    return frozenset(r.strip() for r in str(config.get("TWO_FACTOR_REQUIRED_ROLES") or "").split(",") if r.strip())


def enabled(user: User) -> bool:
    return user.totp_sealed is not None


def required(user: User, required_roles: frozenset[str]) -> bool:
    return user.role in required_roles


def begin(user: User, user_key: bytes, username_label: str) -> Enrolment:
    """A new secret to set up (replacing one being set up); it counts once confirmed."""
    secret = pyotp.random_base32()
    user.totp_pending = _seal(user, user_key, secret)
    db.session.commit()
    return _enrolment(secret, username_label)


def pending(user: User, user_key: bytes, username_label: str) -> Enrolment | None:
    """The secret being set up, to show again (a reload of the set-up page)."""
    if user.totp_pending is None:
        return None
    try:
        return _enrolment(_open(user, user_key, user.totp_pending), username_label)
    except DecryptionError:
        return None


def _enrolment(secret: str, label: str) -> Enrolment:
    uri = pyotp.TOTP(secret).provisioning_uri(name=label, issuer_name=ISSUER)
    qr = segno.make(uri, error="m")
    svg = qr.svg_inline(scale=5, dark="#000", light="#fff", omitsize=False, title="Scan with your authenticator app")
    return Enrolment(secret, uri, svg)


def confirm(user: User, user_key: bytes, code: object, now: datetime) -> list[str]:
    """Turn two-factor on with the first code from the app; returns the recovery codes (once)."""
    if user.totp_pending is None:
        raise Conflict("Start the set-up first: there is no code to confirm.")
    secret = _open(user, user_key, user.totp_pending)
    step = _matching_step(secret, _normalise(code), now)
    if step is None:
        raise ValidationFailed("That code is not right: type the 6 digits your app shows now.")
    codes = [f"{secrets.token_hex(2)}-{secrets.token_hex(2)}-{secrets.token_hex(2)}" for _ in range(RECOVERY_CODES)]
    user.totp_sealed, user.totp_pending, user.totp_last_step = user.totp_pending, None, step
    user.totp_recovery = json.dumps([_hash(_normalise(c)) for c in codes])
    db.session.commit()
    return codes


def _matching_step(secret: str, code: str, now: datetime) -> int | None:
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return None
    totp, step = pyotp.TOTP(secret), _step(now)
    for candidate in (step, step - 1, step + 1):  # one step of clock drift either way
        if hmac.compare_digest(totp.at(candidate * STEP_SECONDS), code):
            return candidate
    return None


def check(user: User, user_key: bytes, code: object, now: datetime) -> bool:
    """A sign-in's second factor: a fresh TOTP code, or an unused recovery code (then spent).
    The caller commits."""
    given = _normalise(code)
    secret = _open(user, user_key, user.totp_sealed or b"")
    step = _matching_step(secret, given, now)
    if step is not None:
        if user.totp_last_step is not None and step <= user.totp_last_step:
            return False  # replayed, or older than one already used
        user.totp_last_step = step
        return True
    unused = json.loads(user.totp_recovery or "[]")
    digest = _hash(given)
    if given and digest in unused:
        unused.remove(digest)
        user.totp_recovery = json.dumps(unused)
        return True
    return False


def recovery_codes_left(user: User) -> int:
    return len(json.loads(user.totp_recovery or "[]"))


def turn_off(user: User, user_key: bytes, code: object, now: datetime, required_roles: frozenset[str]) -> None:
    """Turn two-factor off (a patient, or anyone where it is not required), with a current code."""
    if required(user, required_roles):
        raise Forbidden("Two-factor sign-in is required for your account and cannot be turned off.")
    if not enabled(user):
        raise Conflict("Two-factor sign-in is not on.")
    if not check(user, user_key, code, now):
        db.session.rollback()
        raise ValidationFailed("That code is not right: type the 6 digits your app shows now.")
    user.totp_sealed = user.totp_pending = user.totp_recovery = None
    user.totp_last_step = None
    db.session.commit()


def reset(admin: User, account_id: object, now: datetime) -> User:
    """An admin resets the second factor of a doctor of their hospital (a lost phone); logged."""
    if admin.role != "admin":
        raise Forbidden("Only admins reset a doctor's two-factor sign-in.")
    doctor = (
        db.session.scalar(db.select(User).where(User.public_id == account_id)) if isinstance(account_id, str) else None
    )
    if doctor is None or doctor.role != "doctor" or doctor.home_node != admin.home_node or doctor.username is None:
        raise NotFound("No doctor of this hospital has that id.")
    doctor.totp_sealed = doctor.totp_pending = doctor.totp_recovery = None
    doctor.totp_last_step = None
    db.session.commit()
    log.warning(
        "two-factor sign-in reset for doctor %s (%s) by admin %s (%s) at %s",
        doctor.username, doctor.public_id, admin.username, admin.public_id, now.isoformat(),
    )  # fmt: skip
    return doctor
