"""Database models. Nothing here holds a plaintext record or an unwrapped private key."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from flask_login import UserMixin
from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db


def utcnow() -> datetime:
    """Now in UTC, naive: every timestamp in the database is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch for a naive-UTC datetime, as used on the ledger."""
    return int(moment.replace(tzinfo=UTC).timestamp() * 1000)


class User(UserMixin, db.Model):
    """An account. Private keys are stored only sealed under the user key, which is stored
    only wrapped under a key derived from the password (and, per session, under the token).

    Accounts of other member hospitals appear here too, projected from their `key` transaction
    on the ledger: they have public keys and a home node but no username, password or sealed
    keys (`is_local` is False), and their name is fetched from their home node.

    A patient's identity (date of birth, hospital number, in-person check) is kept like the name:
    in this table at the home node, copied from the home node by others, never on the ledger."""

    __tablename__ = "users"
    # A hospital number names one patient at its hospital (NULLs never clash).
    __table_args__ = (UniqueConstraint("home_node", "mrn", name="uq_users_home_node_mrn"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuid.uuid4()))
    username: Mapped[str | None] = mapped_column(String(40), unique=True)
    display_name: Mapped[str] = mapped_column(String(120))
    role: Mapped[str] = mapped_column(String(16), index=True)
    hospital: Mapped[str | None] = mapped_column(String(120))
    licence_number: Mapped[str | None] = mapped_column(String(40))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    home_node: Mapped[str | None] = mapped_column(String(64), index=True)
    # When the name of another hospital's account was last fetched from its home node.
    resolved_at: Mapped[datetime | None]

    # A patient's date of birth (None: registered before it was asked), the hospital patient
    # number (MRN) their home hospital's front desk gave when it checked their identity in person,
    # and when; at other nodes these are copies of what the home node said.
    date_of_birth: Mapped[date | None]
    mrn: Mapped[str | None] = mapped_column(String(40))
    verified_at: Mapped[datetime | None]
    verified_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    kdf_salt: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    kdf_params: Mapped[str | None] = mapped_column(String(64))
    wrapped_user_key: Mapped[bytes | None] = mapped_column(LargeBinary(128))
    sealed_private_keys: Mapped[bytes | None] = mapped_column(LargeBinary(4096))

    rsa_public_key: Mapped[bytes] = mapped_column(LargeBinary(1024))
    umbral_public_key: Mapped[bytes] = mapped_column(LargeBinary(64))
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    key_tx_hash: Mapped[str] = mapped_column(String(64))

    # Two-factor sign-in (portal/services/two_factor.py): the TOTP secret sealed under the user
    # key (so only a sign-in with the password can check a code), one being set up, the last
    # time step used (a code works once), and the unused recovery codes' hashes (JSON list).
    totp_sealed: Mapped[bytes | None] = mapped_column(LargeBinary(128))
    totp_pending: Mapped[bytes | None] = mapped_column(LargeBinary(128))
    totp_last_step: Mapped[int | None]
    totp_recovery: Mapped[str | None] = mapped_column(Text)

    # A patient's recovery key (portal/services/recovery.py, docs/recovery.md): the user key
    # wrapped under a key derived from the 12 words, which are never stored. A new key waits in
    # the pending slot (with a check of the two words the patient is asked for, keyed by the
    # user key, and their positions) until confirmed; then it replaces the active one.
    recovery_wrapped_user_key: Mapped[bytes | None] = mapped_column(LargeBinary(128))
    recovery_set_at: Mapped[datetime | None]
    recovery_pending: Mapped[bytes | None] = mapped_column(LargeBinary(128))
    recovery_pending_check: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    recovery_pending_positions: Mapped[str | None] = mapped_column(String(8))
    # The last password reset without the password (how: "recovery_key", ...), told to the
    # owner once, at their next sign-in.
    recovered_at: Mapped[datetime | None]
    recovered_method: Mapped[str | None] = mapped_column(String(32))
    recovered_notice: Mapped[bool] = mapped_column(default=False, server_default=false())

    # Failed sign-ins since the last successful one, shown to the owner when they next sign in.
    failed_logins: Mapped[int] = mapped_column(default=0, server_default="0")
    last_failed_login_at: Mapped[datetime | None]

    # Set per request by the login loaders; Flask-Login stores it instead of the user id
    # so that logging out (deleting the session row) ends the cookie as well.
    session_token = None  # not mapped: str | None

    def get_id(self) -> str | None:
        return self.session_token

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_local(self) -> bool:
        """Registered at this node (it holds the sealed keys), not projected from the ledger."""
        return self.sealed_private_keys is not None


class AuthSession(db.Model):
    """A signed-in session (web cookie or API token). Holds the user key wrapped under a key
    derived from the token, which only the client has."""

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(8))
    wrapped_user_key: Mapped[bytes] = mapped_column(LargeBinary(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # The chat device this sign-in runs on (its id, once the app named it): removing that
    # device ends the session.
    chat_device: Mapped[str | None] = mapped_column(String(32))

    user: Mapped[User] = relationship()


class LedgerBlock(db.Model):
    """A block header as canonical bytes; its body is its transactions in order."""

    __tablename__ = "ledger_blocks"

    height: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    header: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerTransaction(db.Model):
    """A transaction as canonical bytes: pending (no block), committed, or rejected."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (
        UniqueConstraint("block_height", "position", name="uq_ledger_transactions_block_position"),
        Index("ix_ledger_transactions_status_received", "status", "received_at"),
    )

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    encoded: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reject_reason: Mapped[str | None] = mapped_column(String(200))
    block_height: Mapped[int | None] = mapped_column(ForeignKey("ledger_blocks.height"))
    position: Mapped[int | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Record(db.Model):
    """Index entry for one record; its content is only in the transaction's ciphertext."""

    __tablename__ = "records"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    tx_hash: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.hash"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Keyed hash of the category, so that grant scopes can be checked without the plaintext.
    category_tag: Mapped[str] = mapped_column(String(32))

    patient: Mapped[User] = relationship(foreign_keys=[patient_id])
    author: Mapped[User] = relationship(foreign_keys=[author_id])
    transaction: Mapped[LedgerTransaction] = relationship()
    attachments: Mapped[list[Attachment]] = relationship(order_by="Attachment.n", cascade="all, delete-orphan")


class Attachment(db.Model):
    """An attachment's ciphertext; its name, type and size are inside the record body."""

    __tablename__ = "attachments"

    record_id: Mapped[str] = mapped_column(ForeignKey("records.id", ondelete="CASCADE"), primary_key=True)
    n: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    sha256: Mapped[str] = mapped_column(String(64))
    # None until fetched from the peer that holds it (checked against `sha256`, from the ledger).
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)


class AccessRequest(db.Model):
    """A doctor asks a patient for access (a `request` transaction): the reason, scope and
    duration are sealed for the two of them, so only they can read what was asked."""

    __tablename__ = "access_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    doctor_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    sealed_reason: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    grant_id: Mapped[str | None] = mapped_column(String(36))
    tx_hash: Mapped[str | None] = mapped_column(String(64))
    decision_tx_hash: Mapped[str | None] = mapped_column(String(64))

    doctor: Mapped[User] = relationship(foreign_keys=[doctor_id])
    patient: Mapped[User] = relationship(foreign_keys=[patient_id])


class Grant(db.Model):
    """A patient's delegation to a doctor (or, for emergency opt-in, to the hospital's emergency
    key). Its key fragments are in `proxy_fragments` until it is revoked."""

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    doctor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    emergency: Mapped[bool] = mapped_column(default=False)
    # An emergency opt-in is made once per member hospital: the node whose emergency key it is for.
    hospital_node: Mapped[str | None] = mapped_column(String(64))
    # The salted scope, known to the patient's home node, the grantee's and the proxies (each
    # opens its sealed package on the ledger); None on a node that is none of those.
    scope: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    tx_hash: Mapped[str] = mapped_column(String(64))
    revoke_tx_hash: Mapped[str | None] = mapped_column(String(64))

    patient: Mapped[User] = relationship(foreign_keys=[patient_id])
    doctor: Mapped[User | None] = relationship(foreign_keys=[doctor_id])
    fragments: Mapped[list[ProxyFragment]] = relationship(order_by="ProxyFragment.share", passive_deletes=True)


class ProxyFragment(db.Model):
    """The proxy's store: one Umbral key fragment of a grant, held by one node. Useless without
    the grantee's secret key; deleted when the grant is revoked."""

    __tablename__ = "proxy_fragments"

    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"), primary_key=True)
    share: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    holder: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[int]
    fragment: Mapped[bytes] = mapped_column(LargeBinary)


class EmergencyAccess(db.Model):
    """A declared emergency (break-glass): short, shown to the patient, reviewed by an admin."""

    __tablename__ = "emergency_accesses"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    doctor_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id"))
    sealed_reason: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    tx_hash: Mapped[str] = mapped_column(String(64))
    reviewed_at: Mapped[datetime | None]
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    patient: Mapped[User] = relationship(foreign_keys=[patient_id])
    doctor: Mapped[User] = relationship(foreign_keys=[doctor_id])
    reviewed_by: Mapped[User | None] = relationship(foreign_keys=[reviewed_by_id])


class AccessEntry(db.Model):
    """One read of a record by someone other than its patient, mirrored by an `access`
    transaction on the ledger; or, with no record, an event on the patient's own account that
    they must hear of (their password reset with the recovery key: `reader` is the patient,
    `mode` how, mirrored by a `recover` transaction)."""

    __tablename__ = "access_entries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    record_id: Mapped[str | None] = mapped_column(ForeignKey("records.id"), index=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    mode: Mapped[str] = mapped_column(String(16))
    grant_id: Mapped[str | None] = mapped_column(String(36))
    part: Mapped[int] = mapped_column(default=-1)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    tx_hash: Mapped[str] = mapped_column(String(64))

    record: Mapped[Record | None] = relationship()
    reader: Mapped[User] = relationship()


class MemberNode(db.Model):
    """A member hospital's node as it describes itself on the ledger (`node_info`): its hospital's
    name, the box key that grant packages are sealed to and the emergency key that patients'
    emergency opt-ins re-encrypt to."""

    __tablename__ = "member_nodes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hospital: Mapped[str] = mapped_column(String(120))
    box_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    emergency_key: Mapped[bytes | None] = mapped_column(LargeBinary(33))
    tx_hash: Mapped[str] = mapped_column(String(64))


class ArchiveEntry(db.Model):
    """The archive outbox: one row per final block, until its zip is safely on the FTP server."""

    __tablename__ = "archive_entries"

    height: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending, uploaded, failed
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    uploaded_at: Mapped[datetime | None]


class Pseudonym(db.Model):
    """A patient's stable pseudonym for matching and chat ("amber-heron-4821"): a keyed hash of
    the account id, kept here so that it can be looked up and stays unique."""

    __tablename__ = "pseudonyms"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class SymptomProfile(db.Model):
    """A patient's symptom profile: the profile itself only sealed (AES-256-GCM under a key held
    by the node, not the database) and the keyed matching tokens; never a term id or name."""

    __tablename__ = "symptom_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    tokens: Mapped[str] = mapped_column(Text)
    discoverable: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Block(db.Model):
    """One patient blocks another: they never match, connect or message again."""

    __tablename__ = "blocks"
    __table_args__ = (UniqueConstraint("blocker_id", "blocked_id", name="uq_blocks_pair"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    blocker_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    blocked_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Connection(db.Model):
    """A request to talk between two matched patients; once accepted it is a conversation."""

    __tablename__ = "connections"
    # One connection per pair of patients, whoever asked: (lower user id, higher user id).
    __table_args__ = (UniqueConstraint("low_user_id", "high_user_id", name="uq_connections_pair"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    addressee_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    low_user_id: Mapped[int]
    high_user_id: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, accepted, declined
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]


class ChatMessage(db.Model):
    """A relayed handshake message or chat envelope, stored as the client sent it (ciphertext
    for messages) until the recipient acknowledges it, and kept for history."""

    __tablename__ = "chat_messages"
    __table_args__ = (
        Index("ix_chat_messages_recipient_delivered", "recipient_id", "delivered_at", "id"),
        Index("ix_chat_messages_sender_sent", "sender_id", "sent_at"),
        Index("ix_chat_messages_connection_order", "connection_id", "id"),
        # A client's message id, per copy (one per recipient device): a resent "send" is answered
        # from the first one (NULLs never clash).
        UniqueConstraint(
            "connection_id", "sender_id", "recipient_id", "recipient_device", "cid", name="uq_chat_messages_cid"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    sender_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    recipient_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The devices it goes between (chat device ids): "" is any of the sender's devices, or every
    # device of the recipient. The recipient is the peer, or the sender (a copy for their other
    # device).
    sender_device: Mapped[str] = mapped_column(String(32), default="", server_default="")
    recipient_device: Mapped[str] = mapped_column(String(32), default="", server_default="")
    kind: Mapped[str] = mapped_column(String(16))  # handshake, message
    body: Mapped[str] = mapped_column(Text)
    cid: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


class ChatKey(db.Model):
    """A patient's chat identity public key (P-256), as registered by a `chat_key` transaction
    that this node signs. The transaction names no account: only `subject`, a salted hash of the
    patient's pseudonym, which the patient's peers can check and nobody else can link. Each of a
    patient's devices has its own key; a removed device's key is revoked (`chat_key_revoke`)."""

    __tablename__ = "chat_keys"
    __table_args__ = (UniqueConstraint("current_user_id", "device", name="uq_chat_keys_current_user_id_device"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The user id while this is its device's current key, NULL once superseded or revoked: at
    # most one current key per device.
    current_user_id: Mapped[int | None]
    # The device's id (base64url of 16 bytes); "" for a key registered before devices had ids.
    device: Mapped[str] = mapped_column(String(32), default="", server_default="")
    key: Mapped[str] = mapped_column(String(100))
    fingerprint: Mapped[str] = mapped_column(String(64))
    salt: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(64))
    tx_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    superseded_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoke_tx_hash: Mapped[str | None] = mapped_column(String(64))


class RateEvent(db.Model):
    """One rate-limited action by a user (profile save, match query, ...), kept for the window
    it counts in and then deleted."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_user_action_at", "user_id", "action", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class LoginThrottle(db.Model):
    """Failed sign-ins against one account name or from one client address (the key is a hash,
    so names typed by strangers are not kept), and until when the next attempt must wait."""

    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failure_at: Mapped[datetime] = mapped_column(default=utcnow)
    blocked_until: Mapped[datetime | None] = mapped_column(index=True)


class IdempotentRequest(db.Model):
    """A write done under an Idempotency-Key (portal/idempotency.py): a hash of the account, route
    and key names it; the answer is sealed under a key derived from the client's key."""

    __tablename__ = "idempotent_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of the request body
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    status: Mapped[int | None]  # None: written, answer not stored yet (or lost)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    content_type: Mapped[str | None] = mapped_column(String(120))
    location: Mapped[str | None] = mapped_column(String(500))


class NodeStatus(db.Model):
    """What the leading producer publishes for every server of the node (docs/ledger.md, *Leader
    election*): its heartbeat, and what it last learnt from peers and the archive. Small JSON
    values of states, heights, hashes and node names only; `updated_at` is the database's clock
    on PostgreSQL, so servers with skewed clocks agree on a value's age."""

    __tablename__ = "node_status"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChatSocket(db.Model):
    """A live /chat connection (its Socket.IO sid) and the signed-in session it was opened
    with, so that signing out closes it in whichever process holds it."""

    __tablename__ = "chat_sockets"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True)
    connected_at: Mapped[datetime] = mapped_column(default=utcnow)


class Escrow(db.Model):
    """Hospital-assisted recovery at an account's home node (portal/services/escrow.py): the home
    share of the user key, sealed under a key derived from the node key (never in the database),
    and which member node holds the other share. `pending` is that other share sealed to the
    holder's box key until the holder has taken it. Opted out: `enabled` False, no share."""

    __tablename__ = "escrows"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    holder: Mapped[str | None] = mapped_column(String(64))
    share: Mapped[bytes | None] = mapped_column(LargeBinary(128))
    pending: Mapped[bytes | None] = mapped_column(LargeBinary(256))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class HeldShare(db.Model):
    """Another hospital's escrow share that this node holds, sealed to this node's box key as it
    was received: released only to the account's home node, for an approved recovery case."""

    __tablename__ = "escrow_held_shares"

    account: Mapped[str] = mapped_column(String(36), primary_key=True)
    home_node: Mapped[str] = mapped_column(String(64), primary_key=True)
    share: Mapped[bytes] = mapped_column(LargeBinary(256))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class RecoveryCase(db.Model):
    """A recovery opened at an account's home node after an in-person identity check, and its
    copy at the node holding the other share while that node's admin decides. The recovery code
    is kept only as a hash, and the user key only wrapped under a key derived from the code."""

    __tablename__ = "recovery_cases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account: Mapped[str] = mapped_column(String(36), index=True)
    home_node: Mapped[str] = mapped_column(String(64))
    holder_node: Mapped[str] = mapped_column(String(64))
    # At the home node: open, approved, issued, expired, completed, cancelled. At the holder: waiting, released.
    status: Mapped[str] = mapped_column(String(16), index=True)
    identity_check: Mapped[str] = mapped_column(String(200))
    opened_by_node: Mapped[str] = mapped_column(String(64))
    opened_by_account: Mapped[str] = mapped_column(String(36))
    opened_by_name: Mapped[str] = mapped_column(String(120))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The opener's RSA-PSS signature, with their own key, over the case's approval statement
    # (services/escrow.py, approval_statement): the holder checks it before it releases a share.
    opened_signature: Mapped[bytes | None] = mapped_column(LargeBinary(512))
    approved_by_node: Mapped[str | None] = mapped_column(String(64))
    approved_by_account: Mapped[str | None] = mapped_column(String(36))
    approved_by_name: Mapped[str | None] = mapped_column(String(120))
    approved_at: Mapped[datetime | None]
    peer_share: Mapped[bytes | None] = mapped_column(LargeBinary(256))
    code_hash: Mapped[str | None] = mapped_column(String(64))
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary(128))
    code_expires_at: Mapped[datetime | None]
    issued_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    tx_hash: Mapped[str | None] = mapped_column(String(64))
