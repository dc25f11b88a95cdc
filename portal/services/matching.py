"""Symptom profiles, matching, pseudonyms, connection requests and blocking (patients only).

What the database holds (see docs/matching.md for what this hides and what it does not):
a profile is stored sealed (AES-256-GCM under a key derived from the node's SECRET_KEY,
bound to the account, padded so its length does not tell how many symptoms it has) plus
the keyed matching tokens of `core.matching`; never a symptom id or name. Matching runs
over the tokens in a per-process index kept in step with the table (`ProfileIndex`);
every result is checked against the table, so a withdrawal counts at once in every worker.

Keys, each derived from SECRET_KEY under its own label (`portal.runtime.derived_key`) and never
stored: the matching token key, the profile sealing key, the pseudonym key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, and_, delete, func, literal, or_, select
from sqlalchemy.exc import IntegrityError

from core import matching as core_matching
from core.clinical import Vocabulary
from core.crypto import aead
from core.encoding import canonical
from core.errors import CoreError
from portal.extensions import db
from portal.models import Block, Connection, Pseudonym, RateEvent, SymptomProfile, User
from portal.services.accounts import Actor
from portal.services.errors import Conflict, Forbidden, NotFound, ServiceError, ValidationFailed

MAX_TERMS = core_matching.MAX_TERMS
PAD_BLOCK = 512
PROFILE_AAD = b"medledger/symptom-profile/v1\n"
MODES = ("exact", "ranked")
INDEX_SLACK = timedelta(seconds=5)  # rows committed late with an older updated_at are still picked up
MAX_ID = 2**63 - 1  # ids from clients are bounded to what every database's BIGINT holds
ID_RE = re.compile(r"[0-9]{1,19}")
NO_MATCH = "No such match."
NO_PATIENT = "No patient has this pseudonym."

ADJECTIVES = (
    "amber", "azure", "brave", "bright", "calm", "clever", "coral", "cosmic", "crimson", "curious", "dapper",
    "eager", "early", "fair", "fancy", "fleet", "gentle", "gilded", "glad", "golden", "grand", "happy", "hazel",
    "honest", "humble", "indigo", "ivory", "jade", "jolly", "keen", "kind", "lively", "lucky", "lunar", "merry",
    "misty", "modest", "noble", "olive", "patient", "plucky", "polar", "proud", "quick", "quiet", "rapid",
    "rosy", "royal", "rustic", "sage", "scarlet", "silver", "sleek", "snowy", "solar", "spry", "steady",
    "sunny", "swift", "tidy", "velvet", "vivid", "warm", "witty",
)  # fmt: skip
ANIMALS = (
    "badger", "beaver", "bison", "crane", "curlew", "dolphin", "eagle", "egret", "falcon", "ferret", "finch",
    "fox", "gazelle", "gecko", "gull", "hare", "hedgehog", "heron", "ibis", "jackal", "jay", "kestrel",
    "koala", "lark", "lemur", "linnet", "lynx", "magpie", "marten", "merlin", "mole", "moose", "newt",
    "ocelot", "orca", "osprey", "otter", "owl", "panda", "panther", "pelican", "petrel", "plover", "puffin",
    "quail", "raven", "robin", "salmon", "seal", "shrike", "sparrow", "stoat", "swallow", "swan", "tapir",
    "tern", "thrush", "trout", "turtle", "vole", "walrus", "wombat", "wren", "zebra",
)  # fmt: skip


class RateLimited(ServiceError):
    status = 429
    code = "rate_limited"


def id_value(value: int) -> Any:
    """A client's id as a BIGINT bind parameter: compared with an INTEGER column it never
    overflows the column's type (PostgreSQL would refuse an int4 parameter above 2^31-1)."""
    return literal(value, BigInteger())


def parse_id(value: object) -> int | None:
    """A database id sent by a client (an int or its ASCII decimal string) within 1..2^63-1;
    None for anything else, so no client value ever reaches the database out of range."""
    if isinstance(value, str) and ID_RE.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        return None
    return value


def rate_limit(user: User, action: str, per_hour: int, message: str, now: datetime) -> None:
    """Count one `action` of `user` (committed at once, so refused and failed attempts count
    too); RateLimited once `per_hour` were made in the last hour. Older events are deleted."""
    since = now - timedelta(hours=1)
    db.session.execute(
        delete(RateEvent).where(RateEvent.user_id == user.id, RateEvent.action == action, RateEvent.at <= since)
    )
    made = db.session.scalar(
        select(func.count(RateEvent.id)).where(RateEvent.user_id == user.id, RateEvent.action == action)
    )
    if (made or 0) >= per_hour:
        db.session.commit()
        raise RateLimited(message)
    db.session.add(RateEvent(user_id=user.id, action=action, at=now))
    db.session.commit()


@dataclass(frozen=True)
class MatchingKeys:
    token: bytes
    profile: bytes
    pseudonym: bytes


# -- the per-process index ------------------------------------------------------------------


class ProfileIndex:
    """A `core.matching.MatchIndex` over the discoverable profiles, refreshed cheaply: each query
    first reads (count, newest updated_at) of the discoverable rows and only reloads rows changed
    since the last look (and prunes rows gone) when that differs. One per process and database."""

    def __init__(self, tokenizer: core_matching.Tokenizer) -> None:
        self._lock = threading.Lock()
        self._index = core_matching.MatchIndex(tokenizer)
        self._versions: dict[int, datetime] = {}
        self._stamp: tuple[int, datetime | None] | None = None
        self._watermark: datetime | None = None

    def _refresh(self) -> None:
        stamp_row = db.session.execute(
            select(func.count(SymptomProfile.id), func.max(SymptomProfile.updated_at)).where(
                SymptomProfile.discoverable
            )
        ).one()
        stamp = (int(stamp_row[0]), stamp_row[1])
        if stamp == self._stamp:
            return
        query = select(SymptomProfile.id, SymptomProfile.updated_at, SymptomProfile.tokens).where(
            SymptomProfile.discoverable
        )
        if self._watermark is not None:
            query = query.where(SymptomProfile.updated_at >= self._watermark - INDEX_SLACK)
        for profile_id, updated_at, tokens in db.session.execute(query):
            if self._versions.get(profile_id) != updated_at:
                self._index.put(profile_id, core_matching.TokenProfile.from_json(json.loads(tokens)))
                self._versions[profile_id] = updated_at
        if len(self._versions) != stamp[0]:
            live = set(db.session.scalars(select(SymptomProfile.id).where(SymptomProfile.discoverable)))
            for gone in set(self._versions) - live:
                self._index.remove(gone)
                del self._versions[gone]
        self._stamp, self._watermark = stamp, stamp[1]

    def put(self, profile_id: int, tokens: core_matching.TokenProfile, updated_at: datetime) -> None:
        with self._lock:
            self._index.put(profile_id, tokens)
            self._versions[profile_id] = updated_at
            self._stamp = None

    def remove(self, profile_id: int) -> None:
        with self._lock:
            if profile_id in self._versions:
                self._index.remove(profile_id)
                del self._versions[profile_id]
            self._stamp = None

    def query(
        self, tokens: core_matching.TokenProfile, mode: str, threshold: float, limit: int, exclude: set[int]
    ) -> list[core_matching.Match]:
        """Candidate matches, best first (the caller checks each against the table)."""
        with self._lock:
            self._refresh()
            if mode == "exact":
                return self._index.exact(tokens, limit, exclude=exclude)
            return self._index.ranked(tokens, threshold, limit, exclude=exclude)

    def matches(self, a: core_matching.TokenProfile, b: core_matching.TokenProfile, threshold: float) -> bool:
        """Do two profiles match in exact mode (same symptom set) or ranked mode (at `threshold`)?"""
        if a.symptom_set == b.symptom_set:
            return True
        with self._lock:
            return self._index.score(a, b) >= threshold

    def __len__(self) -> int:
        return len(self._versions)


@dataclass(frozen=True)
class RateLimits:
    """Per patient and hour: actions that could be repeated to probe other patients."""

    connect: int = 10
    profile: int = 30
    match: int = 120
    block: int = 30
    chat_key: int = 10


@dataclass
class MatchingContext:
    """What the matching use cases need from the node, passed in by the views."""

    keys: MatchingKeys
    tokenizer: core_matching.Tokenizer
    vocabulary: Vocabulary
    index: ProfileIndex
    threshold: float = 0.5
    limit: int = 50
    rates: RateLimits = RateLimits()


# -- pseudonyms -----------------------------------------------------------------------------


def _derive_pseudonym(key: bytes, user: User, attempt: int) -> str:
    digest = hmac.new(key, f"{user.public_id}/{attempt}".encode(), hashlib.sha256).digest()
    number = int.from_bytes(digest[2:6], "big") % 10000
    return f"{ADJECTIVES[digest[0] % len(ADJECTIVES)]}-{ANIMALS[digest[1] % len(ANIMALS)]}-{number:04d}"


def pseudonym_of(user: User, key: bytes) -> str:
    """The patient's stable pseudonym: a keyed hash of the account id as adjective-animal-NNNN
    (a further derivation on the rare collision). Never the username or the id. Made on first
    use in its own database transaction, so call it before changing anything else."""
    row = db.session.get(Pseudonym, user.id)
    if row is not None:
        return row.name
    for attempt in range(100):
        name = _derive_pseudonym(key, user, attempt)
        if db.session.scalar(select(Pseudonym.user_id).where(Pseudonym.name == name)) is not None:
            continue
        db.session.add(Pseudonym(user_id=user.id, name=name))
        try:
            db.session.commit()
        except IntegrityError:  # another worker took the name (or named this user) just now
            db.session.rollback()
            row = db.session.get(Pseudonym, user.id)
            if row is not None:
                return row.name
            continue
        return name
    raise Conflict("No free pseudonym could be made; try again.")


def pseudonyms_of(users: Iterable[User], key: bytes) -> dict[int, str]:
    users = list(users)
    names = dict(
        db.session.execute(
            select(Pseudonym.user_id, Pseudonym.name).where(Pseudonym.user_id.in_([u.id for u in users]))
        ).all()
    )
    for user in users:
        if user.id not in names:
            names[user.id] = pseudonym_of(user, key)
    return names


def patient_by_pseudonym(name: object, message: str = NO_PATIENT) -> User:
    """The active patient behind a pseudonym; NotFound(message) otherwise."""
    user = None
    if isinstance(name, str) and len(name) <= 64:
        user = db.session.scalar(
            select(User).join(Pseudonym, Pseudonym.user_id == User.id).where(Pseudonym.name == name)
        )
    if user is None or user.role != "patient" or not user.active:
        raise NotFound(message)
    return user


# -- profiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileView:
    terms: list[dict[str, str]]
    diagnosis: dict[str, str] | None
    age_band: str | None
    sex: str | None
    discoverable: bool


def _patient(actor: Actor) -> User:
    if actor.user.role != "patient":
        raise Forbidden("Only patients use symptom matching and chat.")
    return actor.user


def _seal(keys: MatchingKeys, user: User, data: dict[str, Any]) -> bytes:
    plain = canonical(data)
    padded = plain + b" " * (-len(plain) % PAD_BLOCK)  # JSON ignores trailing spaces
    return aead.encrypt(keys.profile, padded, PROFILE_AAD + user.public_id.encode())


def _open(keys: MatchingKeys, user: User, sealed: bytes) -> dict[str, Any]:
    return json.loads(aead.decrypt(keys.profile, sealed, PROFILE_AAD + user.public_id.encode()))


def _row(user: User) -> SymptomProfile | None:
    return db.session.scalar(select(SymptomProfile).where(SymptomProfile.user_id == user.id))


def _view(data: dict[str, Any], discoverable: bool, vocabulary: Vocabulary) -> ProfileView:
    terms = [vocabulary.symptom(t) for t in data["terms"]]
    diagnosis = vocabulary.diagnosis(data["diagnosis"]) if data["diagnosis"] else None
    return ProfileView(
        terms=[{"id": t.id, "name": t.name} for t in terms],
        diagnosis={"code": diagnosis.code, "description": diagnosis.description} if diagnosis else None,
        age_band=data["age_band"],
        sex=data["sex"],
        discoverable=discoverable,
    )


def get_profile(actor: Actor, *, ctx: MatchingContext) -> ProfileView | None:
    """The patient's own profile, opened with the node's key; None without one."""
    user = _patient(actor)
    row = _row(user)
    if row is None:
        return None
    return _view(_open(ctx.keys, user, row.sealed), row.discoverable, ctx.vocabulary)


def _parse_profile(data: dict[str, Any], vocabulary: Vocabulary) -> tuple[dict[str, Any], bool]:
    terms = data.get("terms")
    if not isinstance(terms, list) or not 1 <= len(terms) <= MAX_TERMS or not all(isinstance(t, str) for t in terms):
        raise ValidationFailed(f"`terms` must be a list of 1-{MAX_TERMS} HPO term ids.")
    try:
        ids = sorted({vocabulary.symptom(t).id for t in terms})
    except CoreError as exc:
        raise ValidationFailed(f"{exc}; choose symptoms from the list.") from None
    diagnosis = data.get("diagnosis")
    if diagnosis is not None:
        if not isinstance(diagnosis, str):
            raise ValidationFailed("`diagnosis` must be an ICD-10-CM code or null.")
        try:
            diagnosis = vocabulary.diagnosis(diagnosis).code
        except CoreError as exc:
            raise ValidationFailed(f"{exc}.") from None
    age_band, sex = data.get("age_band"), data.get("sex")
    if age_band is not None and age_band not in core_matching.AGE_BANDS:
        raise ValidationFailed(f"`age_band` must be null or one of {', '.join(core_matching.AGE_BANDS)}.")
    if sex is not None and sex not in core_matching.SEXES:
        raise ValidationFailed(f"`sex` must be null or one of {', '.join(core_matching.SEXES)}.")
    discoverable = data.get("discoverable", False)
    if not isinstance(discoverable, bool):
        raise ValidationFailed("`discoverable` must be true or false.")
    return {"terms": ids, "diagnosis": diagnosis, "age_band": age_band, "sex": sex}, discoverable


def put_profile(actor: Actor, data: dict[str, Any], *, ctx: MatchingContext, now: datetime) -> ProfileView:
    """Save (replace) the patient's profile (rate-limited). Discoverable profiles enter the index;
    a profile made undiscoverable leaves it at once. Two saves at once: the last one wins."""
    user = _patient(actor)
    rate_limit(user, "profile", ctx.rates.profile, f"You can save your profile {ctx.rates.profile} times an hour.", now)
    profile, discoverable = _parse_profile(data, ctx.vocabulary)
    tokens = ctx.tokenizer.tokens(
        core_matching.SymptomProfile(
            terms=frozenset(profile["terms"]),
            diagnosis=profile["diagnosis"],
            age_band=profile["age_band"],
            sex=profile["sex"],
        )
    )
    pseudonym_of(user, ctx.keys.pseudonym)
    for attempt in range(2):
        row = _row(user) or SymptomProfile(user_id=user.id)
        row.sealed = _seal(ctx.keys, user, profile)
        row.tokens = json.dumps(tokens.to_json(), separators=(",", ":"))
        row.discoverable = discoverable
        row.updated_at = now
        db.session.add(row)
        try:
            db.session.commit()
            break
        except IntegrityError:  # a first save of the same patient won the race: update that row
            db.session.rollback()
            if attempt:
                raise Conflict("Your profile changed at the same time; try again.") from None
    if discoverable:
        ctx.index.put(row.id, tokens, now)
    else:
        ctx.index.remove(row.id)
    return _view(profile, discoverable, ctx.vocabulary)


def withdraw_profile(actor: Actor, *, ctx: MatchingContext) -> None:
    """Delete the patient's profile: it leaves matching at once (here and, since every result is
    checked against the table, in every other worker)."""
    user = _patient(actor)
    row = _row(user)
    if row is None:
        raise NotFound("You have no symptom profile.")
    profile_id = row.id
    db.session.delete(row)
    db.session.commit()
    ctx.index.remove(profile_id)


# -- blocks ---------------------------------------------------------------------------------


def blocked_between(a: User, b: User) -> bool:
    """Has either of the two blocked the other?"""
    return (
        db.session.scalar(
            select(Block.id).where(
                or_(
                    and_(Block.blocker_id == a.id, Block.blocked_id == b.id),
                    and_(Block.blocker_id == b.id, Block.blocked_id == a.id),
                )
            )
        )
        is not None
    )


def blocked_ids(user: User) -> set[int]:
    """Everyone the user blocked or who blocked the user."""
    rows = db.session.execute(
        select(Block.blocker_id, Block.blocked_id).where(or_(Block.blocker_id == user.id, Block.blocked_id == user.id))
    )
    return {blocked if blocker == user.id else blocker for blocker, blocked in rows}


def _has_blocked(user: User, target: User) -> bool:
    found = db.session.scalar(select(Block.id).where(Block.blocker_id == user.id, Block.blocked_id == target.id))
    return found is not None


def _known_to(user: User, target: User, ctx: MatchingContext) -> bool:
    """May `user` act on `target` by pseudonym: a connection (in any state) between them, or a
    current match? (Anything else answers like an unknown pseudonym.)"""
    if db.session.scalar(select(Connection.id).where(_pair(user, target))) is not None:
        return True
    return _is_current_match(user, target, ctx)


def block(actor: Actor, pseudonym: object, *, ctx: MatchingContext, now: datetime) -> tuple[Block, str]:
    """Block a patient met through matching or a connection (rate-limited): from now on the two
    never match, connect or message; a pending request between them is declined. Any other
    pseudonym answers NotFound, as an unknown one does."""
    user = _patient(actor)
    rate_limit(user, "block", ctx.rates.block, f"You can block {ctx.rates.block} patients an hour.", now)
    if not isinstance(pseudonym, str):
        raise ValidationFailed("`pseudonym` must be a patient's pseudonym.")
    target = patient_by_pseudonym(pseudonym)
    if target.id == user.id:
        raise ValidationFailed("You cannot block yourself.")
    if _has_blocked(user, target):
        raise Conflict("You have already blocked this patient.")
    if not _known_to(user, target, ctx):
        raise NotFound(NO_PATIENT)
    for connection in db.session.scalars(select(Connection).where(_pair(user, target), Connection.state == "pending")):
        connection.state, connection.decided_at = "declined", now
    row = Block(blocker_id=user.id, blocked_id=target.id, created_at=now)
    db.session.add(row)
    try:
        db.session.commit()
    except IntegrityError:  # the same block, sent twice at once
        db.session.rollback()
        raise Conflict("You have already blocked this patient.") from None
    return row, pseudonym


def unblock(actor: Actor, pseudonym: str) -> None:
    """Lift the caller's block; NotFound (one answer) for a pseudonym the caller has not blocked."""
    user = _patient(actor)
    target = patient_by_pseudonym(pseudonym, "You have not blocked this patient.")
    result = db.session.execute(delete(Block).where(Block.blocker_id == user.id, Block.blocked_id == target.id))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound("You have not blocked this patient.")
    db.session.commit()


def list_blocks(actor: Actor, *, ctx: MatchingContext) -> list[tuple[Block, str]]:
    user = _patient(actor)
    rows = list(db.session.scalars(select(Block).where(Block.blocker_id == user.id).order_by(Block.created_at.desc())))
    users = {u.id: u for u in db.session.scalars(select(User).where(User.id.in_([r.blocked_id for r in rows])))}
    names = pseudonyms_of(users.values(), ctx.keys.pseudonym)
    return [(r, names[r.blocked_id]) for r in rows]


# -- matches --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchView:
    """A match as the caller sees it: no score (it would tell the peer's other attributes)."""

    pseudonym: str
    similar: bool  # found in ranked mode (similar, not necessarily the same symptoms)
    shared: list[dict[str, str]]
    connection: Connection | None


def _threshold(value: object, floor: float) -> float:
    """The requested threshold, never below the node's `floor` (lower ones are raised to it)."""
    if value in (None, ""):
        return floor
    try:
        threshold = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValidationFailed("`threshold` must be a number from 0 to 1.") from None
    if not 0 <= threshold <= 1:
        raise ValidationFailed("`threshold` must be a number from 0 to 1.")
    return max(threshold, floor)


def find_matches(
    actor: Actor, mode: object, threshold: object = None, *, ctx: MatchingContext, now: datetime
) -> list[MatchView]:
    """Discoverable patients matching the caller's profile: `exact` (same symptom set) or `ranked`
    (similarity over all attributes at or above the threshold, which is at least the node's
    MATCH_THRESHOLD), best first. Rate-limited. Matching is mutual: only a discoverable profile
    sees others. Blocked pairs never match."""
    user = _patient(actor)
    rate_limit(user, "match", ctx.rates.match, f"You can look for matches {ctx.rates.match} times an hour.", now)
    if mode not in MODES:
        raise ValidationFailed("`mode` must be exact or ranked.")
    cut = _threshold(threshold, ctx.threshold)
    own = _row(user)
    if own is None:
        raise Conflict("Save your symptom profile first.")
    if not own.discoverable:
        raise Conflict("Matching is mutual: make your profile discoverable to see matches.")
    excluded = blocked_ids(user) | {user.id}
    excluded_profiles = set(db.session.scalars(select(SymptomProfile.id).where(SymptomProfile.user_id.in_(excluded))))
    tokens = core_matching.TokenProfile.from_json(json.loads(own.tokens))
    # A few spare candidates stand in for profiles withdrawn in another worker a moment ago.
    candidates = ctx.index.query(tokens, str(mode), cut, ctx.limit + 10, excluded_profiles)
    rows = {
        profile_id: owner
        for profile_id, owner in db.session.execute(
            select(SymptomProfile.id, User)
            .join(User, User.id == SymptomProfile.user_id)
            .where(
                SymptomProfile.id.in_([c.profile_id for c in candidates]),
                SymptomProfile.discoverable,
                User.active,
                User.role == "patient",
            )
        )
    }
    kept = [
        (c, rows[c.profile_id]) for c in candidates if c.profile_id in rows and rows[c.profile_id].id not in excluded
    ]
    kept = kept[: ctx.limit]
    names = pseudonyms_of([owner for _, owner in kept], ctx.keys.pseudonym)
    connections = _connections_with(user, [owner.id for _, owner in kept])
    return [
        MatchView(names[owner.id], mode == "ranked", _shared(c.shared, ctx), connections.get(owner.id))
        for c, owner in kept
    ]


def _shared(tokens: frozenset[str], ctx: MatchingContext) -> list[dict[str, str]]:
    shared = []
    for token in tokens:
        term = ctx.tokenizer.term_for(token)
        if term is None:
            continue
        try:
            symptom = ctx.vocabulary.symptom(term)
        except CoreError:
            continue
        shared.append({"id": symptom.id, "name": symptom.name})
    return sorted(shared, key=lambda s: s["name"])


# -- connections ----------------------------------------------------------------------------


def _pair(a: User, b: User) -> Any:
    return or_(
        and_(Connection.requester_id == a.id, Connection.addressee_id == b.id),
        and_(Connection.requester_id == b.id, Connection.addressee_id == a.id),
    )


def _connections_with(user: User, peer_ids: list[int]) -> dict[int, Connection]:
    found: dict[int, Connection] = {}
    if not peer_ids:
        return found
    query = (
        select(Connection)
        .where(
            or_(
                and_(Connection.requester_id == user.id, Connection.addressee_id.in_(peer_ids)),
                and_(Connection.addressee_id == user.id, Connection.requester_id.in_(peer_ids)),
            )
        )
        .order_by(Connection.id)
    )
    for connection in db.session.scalars(query):
        found[connection.addressee_id if connection.requester_id == user.id else connection.requester_id] = connection
    return found


def peer_of(connection: Connection, user: User) -> int:
    return connection.addressee_id if connection.requester_id == user.id else connection.requester_id


def _is_current_match(user: User, target: User, ctx: MatchingContext) -> bool:
    """Are both profiles discoverable and matching (exact, or ranked at the node's threshold),
    with neither patient blocking the other?"""
    own, theirs = _row(user), _row(target)
    if own is None or theirs is None or not own.discoverable or not theirs.discoverable:
        return False
    if blocked_between(user, target):
        return False
    mine = core_matching.TokenProfile.from_json(json.loads(own.tokens))
    other = core_matching.TokenProfile.from_json(json.loads(theirs.tokens))
    return ctx.index.matches(mine, other, ctx.threshold)


def _existing_conflict(user: User, target: User) -> Conflict | None:
    existing = db.session.scalar(select(Connection).where(_pair(user, target)))
    if existing is None:
        return None
    return Conflict(
        {
            "pending": "A connection request between you is already pending.",
            "accepted": "You are already connected.",
            "declined": "This connection request was declined.",
        }[existing.state]
    )


def connect(actor: Actor, pseudonym: str, *, ctx: MatchingContext, now: datetime) -> Connection:
    """Ask a current match to connect. The rate limit (per patient and hour, every attempt counts)
    comes first; then anyone who is not a current match (unknown, withdrawn, no longer similar,
    blocked either way) gets the same NotFound. One connection per pair, ever."""
    user = _patient(actor)
    rate_limit(
        user,
        "connect",
        ctx.rates.connect,
        f"You can send {ctx.rates.connect} connection requests an hour; try again later.",
        now,
    )
    own = _row(user)
    if own is None or not own.discoverable:
        raise Conflict("Matching is mutual: make your profile discoverable to connect.")
    target = patient_by_pseudonym(pseudonym, NO_MATCH)
    if target.id == user.id:
        raise ValidationFailed("You cannot connect to yourself.")
    if not _is_current_match(user, target, ctx):
        raise NotFound(NO_MATCH)
    conflict = _existing_conflict(user, target)
    if conflict is not None:
        raise conflict
    connection = Connection(
        requester_id=user.id,
        addressee_id=target.id,
        low_user_id=min(user.id, target.id),
        high_user_id=max(user.id, target.id),
        state="pending",
        created_at=now,
    )
    db.session.add(connection)
    try:
        db.session.commit()
    except IntegrityError:  # the other patient asked at the same moment
        db.session.rollback()
        raise _existing_conflict(user, target) or Conflict("Try again.") from None
    return connection


def list_connections(actor: Actor) -> list[Connection]:
    """The patient's requests and conversations, newest first (none with a blocked patient)."""
    user = _patient(actor)
    excluded = blocked_ids(user)
    rows = db.session.scalars(
        select(Connection)
        .where(or_(Connection.requester_id == user.id, Connection.addressee_id == user.id))
        .order_by(Connection.created_at.desc(), Connection.id.desc())
    )
    return [c for c in rows if peer_of(c, user) not in excluded]


def decide(actor: Actor, connection_id: object, accept: bool, *, now: datetime) -> Connection:
    """The addressee accepts or declines a pending request."""
    user = _patient(actor)
    connection = get_connection(connection_id)
    if connection is None or connection.addressee_id != user.id:
        raise NotFound("No such connection request for you.")
    if connection.state != "pending":
        raise Conflict(f"This request was already {connection.state}.")
    if accept and db.session.scalar(
        select(Block.id).where(Block.blocker_id == user.id, Block.blocked_id == connection.requester_id)
    ):
        raise Conflict("You have blocked this patient; unblock them first.")
    connection.state, connection.decided_at = ("accepted" if accept else "declined"), now
    db.session.commit()
    return connection


def get_connection(connection_id: object) -> Connection | None:
    """A connection by id (an int or its decimal string, 1..2^63-1), or None."""
    parsed = parse_id(connection_id)
    if parsed is None:
        return None
    return db.session.scalar(select(Connection).where(Connection.id == id_value(parsed)))
