"""Sign-in throttling per account name and per client address (docs/security.md).

After `free` failures in a row, each further attempt must wait a delay that doubles with every
failure (1 s, 2 s, 4 s, ...); at `lockout` failures the key is locked for `lockout_seconds`.
While a key waits, every attempt is refused with 429 and Retry-After, the right password
included, so guessing cannot go faster than the delays allow. A success clears the account's
count (not the address's, so one good account cannot launder an address's guesses); failures
older than `window_seconds` are forgotten. Counts live in the database, so every server of a
node shares them. Keys are hashed: names typed by strangers are not stored.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete

from portal.extensions import db
from portal.models import LoginThrottle
from portal.services.errors import ServiceError


@dataclass(frozen=True)
class Policy:
    free: int = 3  # failures answered at once
    lockout: int = 10  # failures that lock the key
    lockout_seconds: int = 900
    window_seconds: int = 900  # a quiet spell this long forgets the failures
    address_factor: int = 5  # an address (maybe a whole hospital behind NAT) gets this many times more


def policy_from(config: Mapping[str, object]) -> Policy:
    """The node's policy from its settings (LOGIN_* in .env.example)."""
    defaults = Policy()
    return Policy(
        **{
            name: int(config.get(f"LOGIN_{name.upper()}", getattr(defaults, name)))
            for name in Policy.__dataclass_fields__
        }  # type: ignore[call-overload]
    )


class TooManyAttempts(ServiceError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _key(kind: str, value: str) -> str:
    return hashlib.sha256(f"medledger/login/{kind}\n{value}".encode()).hexdigest()


def keys_for(username: object, address: str | None) -> tuple[str, str]:
    name = username.strip().lower() if isinstance(username, str) else ""
    return _key("account", name), _key("address", address or "unknown")


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


def check(username: object, address: str | None, policy: Policy, now: datetime) -> None:
    """Refuse an attempt while its account name or its address must wait."""
    account, client = keys_for(username, address)
    for key, what in ((account, "this account"), (client, "your network address")):
        row = db.session.get(LoginThrottle, key)
        if row is None or row.blocked_until is None or row.blocked_until <= now:
            continue
        wait = _seconds(row.blocked_until - now)
        if row.failures >= _limit(policy, key == client):
            minutes = math.ceil(wait / 60)
            message = (
                f"Too many failed sign-ins for {what}: it is locked for {minutes} more minute"
                f"{'s' if minutes != 1 else ''}. The account owner will see these attempts."
            )
        else:
            message = (
                f"Too many failed sign-ins for {what}; wait {wait} second{'s' if wait != 1 else ''} and try again."
            )
        raise TooManyAttempts(message, wait)


def _limit(policy: Policy, is_address: bool) -> int:
    return policy.lockout * (policy.address_factor if is_address else 1)


def failed(username: object, address: str | None, policy: Policy, now: datetime) -> None:
    """Count a failure against the account name and the address, and set their next wait."""
    account, client = keys_for(username, address)
    for key, is_address in ((account, False), (client, True)):
        row = db.session.get(LoginThrottle, key)
        if row is None:
            row = LoginThrottle(key=key, failures=0)
            db.session.add(row)
        elif row.last_failure_at + timedelta(seconds=policy.window_seconds) <= now:
            row.failures = 0
        row.failures += 1
        row.last_failure_at = now
        free = policy.free * (policy.address_factor if is_address else 1)
        if row.failures >= _limit(policy, is_address):
            row.blocked_until = now + timedelta(seconds=policy.lockout_seconds)
        elif row.failures > free:
            row.blocked_until = now + timedelta(seconds=min(2 ** (row.failures - free - 1), policy.lockout_seconds))
    stale = now - timedelta(seconds=max(policy.window_seconds, policy.lockout_seconds))
    db.session.execute(delete(LoginThrottle).where(LoginThrottle.last_failure_at < stale))
    db.session.commit()


def succeeded(username: object) -> None:
    account, _ = keys_for(username, None)
    db.session.execute(delete(LoginThrottle).where(LoginThrottle.key == account))


def failed_attempts_notice(count: int, last_at: datetime | None) -> str:
    """What the account owner is told at their next sign-in."""
    when = f", the last on {last_at:%Y-%m-%d at %H:%M} UTC" if last_at is not None else ""
    attempts = "1 failed sign-in attempt" if count == 1 else f"{count} failed sign-in attempts"
    return f"{attempts} on your account since your last sign-in{when}. If that was not you, change your password."
