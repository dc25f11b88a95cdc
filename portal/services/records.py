"""Writing and reading medical records.

A record's content exists only as ciphertext in its ledger transaction (and its
attachments as ciphertext blobs whose hashes the transaction commits to). Only the
patient and the author can unwrap the data key; everyone else gets Forbidden.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import joinedload, selectinload

from core.clinical import Vocabulary
from core.crypto import DataKey, Envelope, UserKeys, open_as_author, open_as_patient, seal
from core.encoding import b64d, b64e, canonical, decode_canonical
from core.errors import CoreError, EncodingError, GrantError, InvalidCode
from core.ledger import Transaction, decode_transaction, sign_transaction
from core.pre import open_reencrypted
from portal.extensions import db
from portal.models import AccessEntry, Attachment, LedgerTransaction, Record, User, epoch_ms
from portal.services import federation, ledger, paging, proxy
from portal.services.accounts import Actor, get_user, published_keys
from portal.services.context import NodeContext
from portal.services.errors import Forbidden, NotFound, ServiceError, TooLarge, ValidationFailed
from portal.services.grants import Access, decide, visible_records

CATEGORIES = (
    "general", "cardiology", "respiratory", "neurology", "oncology", "paediatrics",
    "psychiatry", "surgery", "laboratory", "imaging", "other",
)  # fmt: skip
CONTENT_TYPES = {"application/pdf": b"%PDF-", "image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}
BODY_AAD = b"medledger/record/v1\n"
ATTACHMENT_AAD = b"medledger/attachment/v1\n"
MAX_CODES = 30
MAX_PRESCRIPTIONS = 30


class RecordUnreadable(ServiceError):
    """Stored ciphertext that does not open: tampering or corruption, never the caller's fault."""

    status = 409
    code = "record_unreadable"


@dataclass(frozen=True)
class NewAttachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Written:
    """A record just written: what its writer is told (read before the commit, which expires
    every loaded row: reading them back cost a statement per write)."""

    id: str
    tx_hash: str


@dataclass(frozen=True)
class Limits:
    max_attachment_bytes: int
    max_attachments: int


def _sniff(data: bytes) -> str | None:
    for content_type, magic in CONTENT_TYPES.items():
        if data.startswith(magic):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _text(fields: Mapping[str, object], name: str, max_len: int, required: bool = True) -> str:
    value = fields.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationFailed(f"`{name}` must be text.")
    value = value.strip()
    if required and not value:
        raise ValidationFailed(f"`{name}` is required.")
    if len(value) > max_len:
        raise ValidationFailed(f"`{name}` is longer than {max_len} characters.")
    return value


def _code_list(fields: Mapping[str, object], name: str) -> list[str]:
    value = fields.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationFailed(f"`{name}` must be a list of codes.")
    if len(value) > MAX_CODES:
        raise ValidationFailed(f"At most {MAX_CODES} `{name}`.")
    return list(dict.fromkeys(v.strip() for v in value if v.strip()))


class UnknownCodes(ValidationFailed):
    """Every code the vocabularies do not know, at once: `fields` maps each one's place as sent
    (`diagnoses.1`) to its message; with one bad code the message is that code's alone."""

    def __init__(self, fields: dict[str, str]) -> None:
        if len(fields) == 1:
            message = next(iter(fields.values()))
        else:
            message = "; ".join(f"{text} (`{name}`)" for name, text in fields.items()) + "."
        super().__init__(message)
        self.fields = fields


def _coded(
    fields: Mapping[str, object], name: str, lookup: Callable[[str], object], unknown: dict[str, str]
) -> list[dict[str, str]]:
    """The known entries of a code list, each once, in the order sent; each unknown one is added
    to `unknown` under its position in the list as sent."""
    _code_list(fields, name)
    found, seen = [], set()
    for n, raw in enumerate(fields.get(name) or []):
        code = str(raw).strip()
        if not code or code in seen:
            continue
        seen.add(code)
        try:
            found.append(vars(lookup(code)))
        except InvalidCode as exc:
            unknown[f"{name}.{n}"] = str(exc)
    return found


def _prescriptions(fields: Mapping[str, object]) -> list[dict[str, str]]:
    value = fields.get("prescriptions") or []
    if not isinstance(value, list) or len(value) > MAX_PRESCRIPTIONS:
        raise ValidationFailed(f"`prescriptions` must be a list of at most {MAX_PRESCRIPTIONS} items.")
    result = []
    for item in value:
        if not isinstance(item, dict) or not set(item) <= {"drug", "dose", "frequency", "duration"}:
            raise ValidationFailed("Each prescription has `drug` and optionally `dose`, `frequency`, `duration`.")
        result.append(
            {
                "drug": _text(item, "drug", 200),
                **{k: _text(item, k, 100, required=False) for k in ("dose", "frequency", "duration")},
            }
        )
    return result


def safe_filename(name: str) -> str:
    """A file name fit for a header: control and invisible format characters become "_" (new
    uploads refuse them; records written before that may still hold some)."""
    return "".join("_" if unicodedata.category(c) in ("Cc", "Cf", "Cs") else c for c in name)


def _attachments(items: Sequence[NewAttachment], limits: Limits) -> list[dict[str, Any]]:
    if len(items) > limits.max_attachments:
        raise ValidationFailed(f"At most {limits.max_attachments} attachments.")
    described = []
    for n, item in enumerate(items):
        name = os.path.basename(item.filename.replace("\\", "/")).strip()[:200] or f"attachment-{n}"
        if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
            raise ValidationFailed(f"Attachment {safe_filename(name)!r} has control characters in its name; rename it.")
        if not item.data:
            raise ValidationFailed(f"Attachment {name!r} is empty.")
        if len(item.data) > limits.max_attachment_bytes:
            raise TooLarge(f"Attachment {name!r} is larger than {limits.max_attachment_bytes} bytes.")
        detected = _sniff(item.data)
        if detected is None:
            raise ValidationFailed(f"Attachment {name!r} is not a PDF, PNG, JPEG or WebP file.")
        if item.content_type and item.content_type.split(";")[0].strip().lower() not in (
            detected,
            "application/octet-stream",
        ):
            raise ValidationFailed(f"Attachment {name!r} is {detected}, not {item.content_type}.")
        described.append({"n": n, "filename": name, "content_type": detected, "size": len(item.data)})
    return described


def create_record(
    actor: Actor,
    patient_id: object,
    fields: Mapping[str, object],
    attachments: Sequence[NewAttachment],
    *,
    vocabulary: Vocabulary,
    limits: Limits,
    node: NodeContext,
    now: datetime,
) -> Written:
    """Validate, seal and sign a record written by a doctor for a patient; queue its transaction."""
    if actor.user.role != "doctor":
        raise Forbidden("Only doctors write records.")
    patient = get_user(patient_id, role="patient")
    category = _text(fields, "category", 40)
    if category not in CATEGORIES:
        raise ValidationFailed(f"`category` must be one of {', '.join(CATEGORIES)}.")
    unknown: dict[str, str] = {}
    diagnoses = _coded(fields, "diagnoses", vocabulary.diagnosis, unknown)
    symptoms = _coded(fields, "symptoms", vocabulary.symptom, unknown)
    if unknown:
        raise UnknownCodes(unknown)
    described = _attachments(attachments, limits)
    record_id = str(uuid.uuid4())
    body = {
        "v": 1,
        "record": record_id,
        "patient": patient.public_id,
        "author": actor.user.public_id,
        "title": _text(fields, "title", 200),
        "category": category,
        "diagnoses": diagnoses,
        "symptoms": symptoms,
        "notes": _text(fields, "notes", 20000, required=False),
        "prescriptions": _prescriptions(fields),
        "attachments": described,
        "created_at": epoch_ms(now),
    }
    envelope, blobs = seal(
        canonical(body),
        BODY_AAD + record_id.encode(),
        published_keys(patient),
        published_keys(actor.user),
        [(a.data, _attachment_aad(record_id, n)) for n, a in enumerate(attachments)],
    )
    digests = [hashlib.sha256(blob).hexdigest() for blob in blobs]
    payload = {
        "record": record_id,
        "patient": patient.public_id,
        "ctag": node.category_tag(category),
        "body": b64e(envelope.body),
        "capsule": b64e(envelope.capsule),
        "pkey": b64e(envelope.patient_key),
        "akey": b64e(envelope.author_key),
        "attachments": digests,
    }
    tx = sign_transaction("record", payload, actor.keys(), epoch_ms(now))
    ledger.queue(tx, now)
    record = Record(
        id=record_id,
        patient=patient,
        author=actor.user,
        tx_hash=tx.hash,
        created_at=now,
        category_tag=node.category_tag(category),
    )
    record.attachments = [
        Attachment(n=n, sha256=d, ciphertext=b) for n, (d, b) in enumerate(zip(digests, blobs, strict=True))
    ]
    db.session.add(record)
    db.session.commit()
    return Written(record_id, tx.hash)


def _attachment_aad(record_id: str, n: int) -> bytes:
    return ATTACHMENT_AAD + f"{record_id}/{n}".encode()


class GrantUnusable(ServiceError):
    """The proxy could not re-encrypt under a grant: its fragments are gone or do not verify."""

    status = 409
    code = "grant_unusable"


def _payload(record: Record) -> dict[str, Any]:
    try:
        tx = decode_transaction(record.transaction.encoded)
    except CoreError:
        raise RecordUnreadable("The stored transaction of this record is damaged.") from None
    if tx.hash != record.tx_hash or tx.kind != "record" or tx.payload.get("record") != record.id:
        raise RecordUnreadable("The stored transaction of this record is damaged.")
    return tx.payload


def _envelope(payload: dict[str, Any]) -> Envelope:
    return Envelope(
        body=b64d(payload["body"]),
        capsule=b64d(payload["capsule"]),
        patient_key=b64d(payload["pkey"]),
        author_key=b64d(payload["akey"]),
    )


def _data_key(
    keys: UserKeys, record: Record, envelope: Envelope, access: Access, node: NodeContext | None,
    entry: Transaction | None,
) -> DataKey:  # fmt: skip
    if access.mode == "patient":
        return open_as_patient(envelope, keys)
    if access.mode == "author":
        return open_as_author(envelope, keys)
    if node is None or entry is None:
        raise ValueError("reads under a grant need the node context and the signed access entry")
    patient_public = published_keys(record.patient).umbral
    receiver = node.emergency_key().secret if access.emergency is not None else keys.umbral_secret
    grant = access.grant
    if grant is None:
        raise GrantUnusable("Your access could not be used: its grant is gone.")
    try:
        fragments = proxy.gather(
            grant, entry, envelope.capsule, patient_public, receiver.public_key().to_compressed_bytes(), node,
            access.emergency,
        )  # fmt: skip
        return open_reencrypted(envelope, receiver, patient_public, fragments)
    except GrantError as exc:
        raise GrantUnusable(f"Your access could not be used: {exc}.") from None


def _open(
    keys: UserKeys, record: Record, access: Access, node: NodeContext | None, entry: Transaction | None = None
) -> tuple[dict[str, Any], DataKey, dict[str, Any]]:
    payload = _payload(record)
    try:
        key = _data_key(keys, record, _envelope(payload), access, node, entry)
        body = decode_canonical(key.open(b64d(payload["body"]), BODY_AAD + record.id.encode()))
    except (CoreError, EncodingError):
        raise RecordUnreadable("This record could not be decrypted; its stored copy may be damaged.") from None
    return body, key, payload


def _access_entry(keys: UserKeys, record: Record, access: Access, part: int, now: datetime) -> Transaction | None:
    """The access entry a read by someone other than the patient makes, signed by the reader
    before the read: the proxies of other hospitals re-encrypt only against it."""
    if access.mode == "patient":
        return None
    entry_id = str(uuid.uuid4())
    payload = {"entry": entry_id, "record": record.id, "part": part, "mode": access.mode, "grant": access.grant_ref}
    return sign_transaction("access", payload, keys, epoch_ms(now))


def _log_read(actor: Actor, record: Record, access: Access, tx: Transaction | None, now: datetime) -> None:
    """Log a read that succeeded, and commit: its access entry on the ledger and in the access
    log. The proxies of other hospitals queue the same entry before they answer, so the block
    holding it may have been stored (and projected) while this read was under way: under the
    chain lock, which every block store holds too, what is already stored is kept and only
    what is missing is added."""
    if tx is None:
        db.session.commit()
        return
    # Taken before the lock: taking it commits, which expires every loaded row.
    entry = {"id": tx.payload["entry"], "record_id": record.id, "reader_id": actor.user.id, "mode": access.mode,
             "grant_id": access.grant_ref, "part": tx.payload["part"], "at": now, "tx_hash": tx.hash}  # fmt: skip
    with ledger.chain_lock.hold():
        if db.session.get(LedgerTransaction, tx.hash) is None:
            ledger.queue(tx, now)
        if db.session.get(AccessEntry, entry["id"]) is None:
            db.session.add(AccessEntry(**entry))
        db.session.commit()


def _summary(record: Record, body: dict[str, Any]) -> dict[str, Any]:
    return {
        **metadata(record),
        "title": body["title"],
        "category": body["category"],
    }


def metadata(record: Record) -> dict[str, Any]:
    """What the index knows about a record without opening it."""
    return {
        "id": record.id,
        "created_at": record.created_at.isoformat() + "Z",
        "author": {
            "id": record.author.public_id,
            "display_name": record.author.display_name,
            "hospital": record.author.hospital,
        },
        "patient": {"id": record.patient.public_id, "display_name": record.patient.display_name},
        "tx_hash": record.tx_hash,
        "block_height": record.transaction.block_height,
    }


def category_of(record: Record, node: NodeContext) -> str | None:
    """A record's category read back from its keyed tag (None if no known category has it).
    Only for records the caller may open: the category is part of what they may read."""
    tags = {node.category_tag(c): c for c in CATEGORIES}
    return tags.get(record.category_tag or "")


def history(
    actor: Actor,
    patient_id: object,
    *,
    node: NodeContext,
    now: datetime,
    category: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> paging.Page[dict[str, Any]]:
    """A page (all of them if `limit` is None) of a patient's records a doctor may open now (see
    `grants.visible_records`, which refuses a doctor with no access), newest first, in `category`
    if given, each with its category (from its tag) and, for the records this doctor wrote, its
    title. Titles of other doctors' records stay sealed: a title is read only by opening the
    record, and that read is logged in the patient's access log."""
    if category is not None and category not in CATEGORIES:
        raise ValidationFailed(f"`category` must be one of {', '.join(CATEGORIES)}.")
    tagged = [(r, category_of(r, node)) for r in visible_records(actor, patient_id, node=node, now=now).items]
    chosen = [(r, c) for r, c in tagged if category is None or c == category]
    keys = actor.keys()

    def entry(item: tuple[Record, str | None]) -> dict[str, Any]:
        record, record_category = item
        title = None
        if record.author_id == actor.user.id:
            try:
                title = _open(keys, record, Access("author"), None)[0]["title"]
            except RecordUnreadable:
                title = "(unreadable: damaged copy)"
        return {**metadata(record), "category": record_category, "title": title}

    return paging.paged_list(chosen, len(chosen) if limit is None else limit, offset).map(entry)


def get_record(actor: Actor, record_id: object, *, node: NodeContext, now: datetime) -> dict[str, Any]:
    """The decrypted record for its patient, its author, or a doctor with a grant or emergency
    access covering it; Forbidden (with the reason) for anyone else. Reads by anyone but the
    patient are logged on the ledger."""
    record = _find(record_id)
    access = decide(actor, record, node=node, now=now)
    keys = actor.keys()
    entry = _access_entry(keys, record, access, -1, now)
    body, _, _ = _open(keys, record, access, node, entry)
    answer = {
        **_summary(record, body),
        **{k: body[k] for k in ("diagnoses", "symptoms", "notes", "prescriptions")},
        "attachments": [{k: a[k] for k in ("n", "filename", "content_type", "size")} for a in body["attachments"]],
        "access": {"mode": access.mode, "grant": access.grant_ref},
    }
    # Built before the read is logged: the commit expires every loaded row, and reading them
    # again for the answer cost six more statements. It is returned only once the read is logged.
    _log_read(actor, record, access, entry, now)
    return answer


def get_attachment(
    actor: Actor, record_id: object, n: int, *, node: NodeContext, now: datetime
) -> tuple[dict[str, Any], bytes]:
    """An attachment's metadata and decrypted bytes, under the same rule (and logging) as the record."""
    record = _find(record_id)
    access = decide(actor, record, node=node, now=now)
    keys = actor.keys()
    entry = _access_entry(keys, record, access, n, now)
    body, key, payload = _open(keys, record, access, node, entry)
    if not 0 <= n < len(body["attachments"]):
        raise NotFound("No such attachment.")
    blob = db.session.get(Attachment, (record.id, n))
    if blob is not None and blob.ciphertext is None:
        blob.ciphertext = federation.fetch_blob(payload["attachments"][n], node.peers)
    if (
        blob is None
        or blob.ciphertext is None
        or hashlib.sha256(blob.ciphertext).hexdigest() != payload["attachments"][n]
    ):
        raise RecordUnreadable("The attachment is not here and no other hospital gave a copy matching the ledger.")
    try:
        data = key.open(blob.ciphertext, _attachment_aad(record.id, n))
    except CoreError:
        raise RecordUnreadable("The stored attachment could not be decrypted.") from None
    meta = {**body["attachments"][n], "filename": safe_filename(body["attachments"][n]["filename"])}
    _log_read(actor, record, access, entry, now)  # last: a download that fails logs no read
    return meta, data


def list_records(actor: Actor, limit: int = paging.DEFAULT_LIMIT, offset: int = 0) -> paging.Page[dict[str, Any]]:
    """A page of a patient's own records or a doctor's authored ones, newest first (ties by id),
    counted and cut in SQL; only the page's titles are decrypted."""
    column = {"patient": Record.patient_id, "doctor": Record.author_id}.get(actor.user.role)
    if column is None:
        raise Forbidden("Admins do not read records.")
    page = paging.paged(
        select(Record)
        .where(column == actor.user.id)
        .order_by(Record.created_at.desc(), Record.id.desc())
        # `metadata` names each record's author and patient: loaded with the page, not one by one.
        .options(selectinload(Record.transaction), selectinload(Record.author), selectinload(Record.patient)),
        limit,
        offset,
    )
    keys = actor.keys()
    access = Access("patient" if actor.user.role == "patient" else "author")

    def summary(record: Record) -> dict[str, Any]:
        try:
            body, _, _ = _open(keys, record, access, None)
        except RecordUnreadable:
            body = {"title": "(unreadable: damaged copy)", "category": "unknown"}
        return _summary(record, body)

    return page.map(summary)


def patients_written_for(actor: Actor) -> list[dict[str, Any]]:
    """The patients a doctor wrote records for, with how many and the latest date, by name."""
    if actor.user.role != "doctor":
        raise Forbidden("Only doctors write records.")
    rows = db.session.execute(
        select(Record.patient_id, func.count(Record.id), func.max(Record.created_at))
        .where(Record.author_id == actor.user.id)
        .group_by(Record.patient_id)
    ).all()
    patients = {u.id: u for u in db.session.scalars(select(User).where(User.id.in_([r[0] for r in rows])))}
    written = [{"patient": patients[pid], "count": count, "last": last} for pid, count, last in rows]
    return sorted(written, key=lambda w: ((w["patient"].display_name or "").casefold(), w["patient"].id))


def _find(record_id: object) -> Record:
    if not isinstance(record_id, str) or len(record_id) != 36:
        raise NotFound("No such record.")
    # A read names the record's author and patient and opens its transaction: one statement, not four.
    loads = [joinedload(Record.transaction), joinedload(Record.author), joinedload(Record.patient)]
    record = db.session.get(Record, record_id, options=loads)
    if record is None:
        raise NotFound("No such record.")
    return record
