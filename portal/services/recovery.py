"""A patient's recovery key, and "Forgot password" with it (docs/recovery.md).

The recovery key is 128 random bits drawn here and shown once as 12 BIP39 English words (the
last word carries a 4-bit checksum, so most mistyped words are caught before any key is tried).
Only the user key wrapped under a key derived from those bits is stored: the words, the bits and
the derived key never are. With the words, the patient unwraps the same user key and wraps it
under a new password, so every record, grant and chat key keeps working.

The key is derived with HKDF-SHA256, not a slow password hash: 128 bits drawn by the server are
not guessable, so stretching them would add nothing but delay (a password is stretched because
people choose guessable ones).

A new key waits in a pending slot until the patient types back two of its words, checked against
an HMAC keyed by the user key (so the database alone cannot be used to guess those two words);
only then does it replace the active one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import segno
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mnemonic import Mnemonic
from sqlalchemy import delete, select

from core.crypto import KdfParams, aead, open_user_keys
from core.errors import CoreError, DecryptionError
from core.ledger import sign_transaction
from portal.extensions import db
from portal.models import AccessEntry, AuthSession, ChatSocket, User, epoch_ms
from portal.services import accounts, ledger, throttle
from portal.services.errors import Conflict, Forbidden, Unauthorized, ValidationFailed

WORDS = 12
ENTROPY_BYTES = 16
RECOVERY_AAD = b"medledger/recovery-user-key/v1\n"
KEK_INFO = b"medledger/recovery-key/v1"
CONFIRM_INFO = b"medledger/recovery-confirm/v1"
METHOD = "recovery_key"
# One answer for every way a reset can fail, so nobody learns which part was wrong (or whether
# the username exists, or has a recovery key).
NO_MATCH = "That username and recovery key do not match. Check each of the 12 words and try again."
WRONG_PASSWORD = "The password is not right."  # noqa: S105 (a message, not a password)
_WORDLIST = Mnemonic("english")


@dataclass(frozen=True)
class NewRecoveryKey:
    """A recovery key just drawn: shown to the patient once, never stored. `confirm` holds the two
    word positions (1 to 12) the patient is asked to type back."""

    words: list[str]
    confirm: tuple[int, int]
    qr_svg: str

    def __repr__(self) -> str:  # never in a log or traceback
        return f"NewRecoveryKey(confirm={self.confirm})"


@dataclass(frozen=True)
class Status:
    set_at: datetime | None
    pending: bool


def _kek(entropy: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEK_INFO).derive(entropy)


def _aad(user: User) -> bytes:
    return RECOVERY_AAD + user.public_id.encode()


def _confirm_tag(user_key: bytes, user: User, answers: Mapping[int, str]) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=CONFIRM_INFO).derive(user_key)
    text = "\n".join(f"{position}:{answers[position]}" for position in sorted(answers))
    return hmac.new(key, f"{user.public_id}\n{text}".encode(), hashlib.sha256).digest()


def _patient(user: User) -> None:
    if user.role != "patient" or not user.is_local:
        raise Forbidden("Only patients of this hospital have a recovery key.")


def status(actor: accounts.Actor) -> Status:
    """Whether the patient has a confirmed recovery key (and since when), and whether a new one
    waits to be confirmed. Forbidden for anyone but a patient."""
    _patient(actor.user)
    return Status(actor.user.recovery_set_at, actor.user.recovery_pending is not None)


def begin(
    actor: accounts.Actor,
    password: object,
    *,
    now: datetime,
    address: str | None = None,
    policy: throttle.Policy | None = None,
) -> NewRecoveryKey:
    """Draw a new recovery key for the signed-in patient, who gives their password again (wrong
    ones count like failed sign-ins). The user key is wrapped under it in the pending slot; any
    active key stays active until `confirm`. Forbidden for anyone but a patient; ValidationFailed
    for a wrong password."""
    user = actor.user
    _patient(user)
    if policy is not None:
        throttle.check(user.username, address, policy, now)
    user_key = None
    if isinstance(password, str) and len(password) <= accounts.MAX_PASSWORD:
        with contextlib.suppress(DecryptionError):
            user_key = accounts._unwrap_with_password(user, password)
    if user_key is None:
        if policy is not None:
            throttle.failed(user.username, address, policy, now)
        raise ValidationFailed(WRONG_PASSWORD)
    entropy = os.urandom(ENTROPY_BYTES)
    words = _WORDLIST.to_mnemonic(entropy).split()
    first, second = sorted(secrets.SystemRandom().sample(range(1, WORDS + 1), 2))
    user.recovery_pending = aead.encrypt(_kek(entropy), user_key, _aad(user))
    user.recovery_pending_check = _confirm_tag(user_key, user, {first: words[first - 1], second: words[second - 1]})
    user.recovery_pending_positions = f"{first},{second}"
    db.session.commit()
    svg = io.BytesIO()  # a whole SVG document (with its namespace), so the app can show it as an image
    segno.make(" ".join(words), error="m").save(
        svg, kind="svg", scale=4, dark="#000", light="#fff", xmldecl=False, nl=False, title="Your recovery key"
    )
    return NewRecoveryKey(words, (first, second), svg.getvalue().decode())


def _normal(word: object) -> str:
    return word.strip().lower() if isinstance(word, str) else ""


def confirm(actor: accounts.Actor, answers: object, *, now: datetime) -> datetime:
    """The patient typed back the two words asked for: the pending key replaces the active one.
    Returns when. Conflict when no key is pending; ValidationFailed for wrong or missing words
    (the pending key stays, and so does the active one)."""
    user = actor.user
    _patient(user)
    if user.recovery_pending is None or user.recovery_pending_positions is None:
        raise Conflict("No new recovery key is waiting to be confirmed; make one first.")
    positions = [int(p) for p in user.recovery_pending_positions.split(",")]
    asked = " and ".join(f"word {p}" for p in positions)
    if not isinstance(answers, Mapping) or set(answers) != {str(p) for p in positions}:
        raise ValidationFailed(f"Type {asked} of your new recovery key.")
    given = {p: _normal(answers[str(p)]) for p in positions}
    tag = _confirm_tag(actor.user_key(), user, given)
    if not hmac.compare_digest(tag, user.recovery_pending_check or b""):
        raise ValidationFailed(f"Those are not {asked} of your new recovery key. Check them and try again.")
    user.recovery_wrapped_user_key = user.recovery_pending
    user.recovery_set_at = now
    user.recovery_pending = user.recovery_pending_check = user.recovery_pending_positions = None
    db.session.commit()
    return now


def _entropy(recovery_key: object) -> bytes | None:
    """The 128 bits behind 12 words (any case, any spacing, optionally numbered "1." ...), or
    None when they are not 12 words of the list or their checksum fails."""
    if not isinstance(recovery_key, str) or len(recovery_key) > 400:
        return None
    words = [w for w in recovery_key.lower().replace(",", " ").split() if not w.rstrip(".)").isdigit()]
    if len(words) != WORDS:
        return None
    phrase = " ".join(words)
    try:
        if not _WORDLIST.check(phrase):
            return None
        return bytes(_WORDLIST.to_entropy(phrase))
    except (ValueError, LookupError):
        return None


@dataclass(frozen=True)
class Recovered:
    """A password reset with the recovery key: the account, its `recover` transaction, and the
    chat connections of the sessions it ended (the caller closes them)."""

    user: User
    tx_hash: str
    sockets: list[str]


def recover(
    username: object,
    recovery_key: object,
    new_password: object,
    *,
    kdf: KdfParams,
    now: datetime,
    address: str | None = None,
    policy: throttle.Policy | None = None,
) -> Recovered:
    """ "Forgot password": unwrap the user key with the recovery key and wrap it under
    `new_password` (checked as at registration), end every session, and put a `recover`
    transaction signed by the account's own key on the ledger and an entry in the patient's
    access log; the next sign-in tells them once.

    Throttled like sign-in (per account name and address). Every failure of the name or the key
    raises the same Unauthorized, with nothing changed; ValidationFailed for a weak password."""
    name = username if isinstance(username, str) else ""
    new_password = accounts.check_password(new_password, [name])
    if policy is not None:
        throttle.check(username, address, policy, now)
    try:
        user, user_key = _unlock(name, recovery_key)
        keys = open_user_keys(user.sealed_private_keys, user_key, accounts.PRIVATE_KEYS_AAD + user.public_id.encode())
    except (Unauthorized, CoreError):
        db.session.rollback()
        if policy is not None:
            throttle.failed(username, address, policy, now)
        raise Unauthorized(NO_MATCH) from None
    accounts.check_password(new_password, [name, user.display_name])
    accounts._wrap_under_password(user, user_key, new_password, kdf)
    sessions = select(AuthSession.id).where(AuthSession.user_id == user.id)
    sockets = list(db.session.scalars(select(ChatSocket.sid).where(ChatSocket.session_id.in_(sessions))))
    db.session.execute(delete(ChatSocket).where(ChatSocket.session_id.in_(sessions)))
    db.session.execute(delete(AuthSession).where(AuthSession.user_id == user.id))
    tx = sign_transaction(
        "recover", {"account": user.public_id, "method": METHOD, "at": epoch_ms(now)}, keys, epoch_ms(now)
    )
    ledger.queue(tx, now)
    db.session.add(
        AccessEntry(id=str(uuid.uuid4()), record_id=None, reader=user, mode=METHOD, part=-1, at=now, tx_hash=tx.hash)
    )
    user.recovered_at, user.recovered_method, user.recovered_notice = now, METHOD, True
    user.failed_logins, user.last_failed_login_at = 0, None
    if policy is not None:
        throttle.succeeded(username)
    db.session.commit()
    return Recovered(user, tx.hash, sockets)


def _unlock(username: str, recovery_key: object) -> tuple[User, bytes]:
    entropy = _entropy(recovery_key)
    user = db.session.scalar(select(User).where(User.username == username)) if username else None
    if (
        entropy is None
        or user is None
        or not user.active
        or user.role != "patient"
        or user.recovery_wrapped_user_key is None
    ):
        raise Unauthorized(NO_MATCH)
    return user, aead.decrypt(_kek(entropy), user.recovery_wrapped_user_key, _aad(user))


def take_notices(user: User) -> list[dict[str, object]]:
    """What the owner must be told at this sign-in, once: a password reset without the password."""
    if not user.recovered_notice:
        return []
    user.recovered_notice = False
    db.session.commit()
    return [{"kind": "recovered", "at": user.recovered_at, "method": user.recovered_method}]
