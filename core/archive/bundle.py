"""One block as one deterministic zip, and back again from untrusted bytes.

Entries, always in this order, dated 1980-01-01 00:00:00, mode 0644:

    header         the canonical header bytes (hashed to the block hash)
    body           b"[" + b",".join(canonical transaction bytes) + b"]"
    block.json     an indented rendering for people: the header and each transaction, with hashes
    blobs/<sha256> the ciphertext of each attachment the record transactions list (by hash, stored)
    manifest.json  canonical {"files": {entry: sha256 hex}, "hash", "height", "version": 1}

`header` and `body` are the block; `block.json` must be exactly what they render
to, the manifest exactly what they hash to, and the blobs exactly the attachments the
body lists, each hashing to its name, so there is one archive per block. The other
entries are deflated; ciphertext does not compress, so blobs are stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

from core.archive.blobs import BLOB_PREFIX, ArchivedBlock, blob_entry, is_blob_entry, references
from core.archive.name import archive_name, parse_name
from core.archive.unzip import DEFAULT_LIMITS, Fail, Limits, read_entries
from core.encoding import canonical, decode_canonical
from core.errors import ArchiveError, EncodingError, InvalidTransaction
from core.ledger import BlockHeader, StoredBlock, Transaction, decode_header, decode_transaction

VERSION = 1
ENTRIES = ("header", "body", "block.json", "manifest.json")
HASHED = ("header", "body", "block.json")
MANIFEST_FIELDS = {"files", "hash", "height", "version"}
DATE_TIME = (1980, 1, 1, 0, 0, 0)
UNIX = 3
FILE_MODE = 0o100644 << 16  # a regular file, rw-r--r--
COMPRESSLEVEL = 9
HEX64_RE = re.compile(r"[0-9a-f]{64}")
# Decoded JSON can take 30 times its size in memory. A million values is 2,000 times what a block
# of 500 transactions holds, and keeps a hostile entry to about 100 MB however densely it is packed.
MAX_JSON_VALUES = 1_000_000

__all__ = ["build_zip", "read_zip"]


def build_zip(block: StoredBlock, blobs: Mapping[str, bytes] | None = None) -> bytes:
    """The archive file for `block` and the ciphertext of its attachments (`blobs`: SHA-256 hex
    to bytes, exactly the hashes `attachment_hashes(block)` lists), to be stored as
    `archive_name(block.height, block.hash)`.

    Deterministic: the same block and blobs always give the same bytes (for a given zlib);
    a block without attachments gives the same file as before blobs were archived.
    Guarantees `read_zip(archive_name(block.height, block.hash), build_zip(block, blobs))
    == ArchivedBlock(block, blobs)` (with the transactions as a list). Raises ArchiveError
    when the block is not self-consistent (reason "bad name", "header hash", "bad header",
    "header height", "bad body"), a blob is wrong or missing ("blob hash", "unreferenced
    blob", "missing blob"), or it does not fit the default Limits ("too large", "too many
    entries", "zip bomb").
    """
    name = archive_name(block.height, block.hash)

    def fail(reason: str, detail: str) -> ArchiveError:
        return ArchiveError(name, block.height, reason, detail)

    header = _check_header(block.header, block.height, block.hash, fail)
    transactions = list(block.transactions)
    contents = {
        "header": block.header,
        "body": b"[" + b",".join(transactions) + b"]",
        "block.json": _render(header, _decode(transactions, fail)),
    }
    contents["manifest.json"] = _manifest(block.height, block.hash, contents)
    data = _zip(contents, {blob_entry(sha256): bytes(blob) for sha256, blob in sorted((blobs or {}).items())})
    # Reading it back is the one place that defines "valid", so a writer can never disagree with it.
    read_zip(name, data)
    return data


def read_zip(name: str, data: bytes, limits: Limits = DEFAULT_LIMITS) -> ArchivedBlock:
    """The block archived in `data`, which was fetched as the file `name` and is not trusted,
    with its attachments' ciphertext.

    Guarantees the returned block's header bytes hash to the hash in `name`, its
    header height is the height in `name`, and its transactions are exactly the
    elements of the canonical body; every entry matched the manifest and
    `block.json` matched the block; the blobs are exactly the attachments the record
    transactions list, each hashing to its hash. It does NOT check the block against
    the chain (signatures, links, Merkle root): that is `verify_archive`'s job.

    Raises ArchiveError(name, height from the name or None, reason), reason one of:
    "bad name", "too large", "not a readable zip", "too many entries", "unsafe
    entry name", "duplicate entry", "unexpected entry", "missing entry", "zip bomb",
    "bad manifest", "file hash", "renamed", "header hash", "bad header", "header
    height", "bad body", "block.json", "blob hash", "unreferenced blob", "missing
    blob" (checked in this order).
    """
    height, block_hash = parse_name(name)

    def fail(reason: str, detail: str) -> ArchiveError:
        return ArchiveError(name, height, reason, detail)

    entries = read_entries(name, height, data, ENTRIES, limits, optional=is_blob_entry)
    manifest = _read_manifest(entries["manifest.json"], fail)
    for entry in HASHED:
        if hashlib.sha256(entries[entry]).hexdigest() != manifest["files"][entry]:
            raise fail("file hash", f"{entry!r} does not match the manifest")
    if (manifest["height"], manifest["hash"]) != (height, block_hash):
        raise fail("renamed", f"the contents are block {manifest['height']} {manifest['hash']}")
    header = _check_header(entries["header"], height, block_hash, fail)
    transactions = _split_body(entries["body"], fail)
    decoded = _decode(transactions, fail)
    if entries["block.json"] != _render(header, decoded):
        raise fail("block.json", "does not match the header and body")
    blobs = _check_blobs(entries, references(decoded), fail)
    return ArchivedBlock(StoredBlock(height, block_hash, entries["header"], transactions), blobs)


def _check_header(data: bytes, height: int, block_hash: str, fail: Fail) -> BlockHeader:
    """The decoded header, if it hashes to `block_hash` and is the header of block `height`."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != block_hash:
        raise fail("header hash", f"the header hashes to {digest}")
    _bounded("header", data, fail)
    try:
        header = decode_header(data)
    except EncodingError as exc:
        raise fail("bad header", str(exc)) from exc
    if header.height != height:
        raise fail("header height", f"the header says height {header.height}")
    return header


def _decode(transactions: Sequence[bytes], fail: Fail) -> list[Transaction]:
    decoded = []
    for position, data in enumerate(transactions):
        try:
            decoded.append(decode_transaction(data))
        except (EncodingError, InvalidTransaction) as exc:
            raise fail("bad body", f"transaction {position}: {exc}") from exc
    return decoded


def _render(header: BlockHeader, transactions: Sequence[Transaction]) -> bytes:
    """block.json: the header and each transaction as readable JSON, with their hashes."""
    document = {"header": header.to_dict(), "transactions": [tx.to_dict() for tx in transactions]}
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _check_blobs(entries: dict[str, bytes], listed: dict[str, str], fail: Fail) -> dict[str, bytes]:
    """The blobs by hash, once each hashes to its name and they are exactly the `listed` attachments."""
    blobs = {}
    for entry in sorted(e for e in entries if is_blob_entry(e)):
        sha256 = entry.removeprefix(BLOB_PREFIX)
        digest = hashlib.sha256(entries[entry]).hexdigest()
        if digest != sha256:
            raise fail("blob hash", f"{entry!r} hashes to {digest}")
        if sha256 not in listed:
            raise fail("unreferenced blob", f"{entry!r} is not an attachment of any record in this block")
        blobs[sha256] = entries[entry]
    for sha256, tx_hash in sorted(listed.items()):
        if sha256 not in blobs:
            raise fail("missing blob", f"no {blob_entry(sha256)!r} for an attachment of transaction {tx_hash}")
    return blobs


def _manifest(height: int, block_hash: str, contents: dict[str, bytes]) -> bytes:
    files = {entry: hashlib.sha256(contents[entry]).hexdigest() for entry in HASHED}
    return canonical({"version": VERSION, "height": height, "hash": block_hash, "files": files})


def _zip(contents: dict[str, bytes], blobs: dict[str, bytes]) -> bytes:
    """The entries in their fixed order: the block, the blobs (sorted, stored), the manifest last."""
    ordered = [(entry, contents[entry], zipfile.ZIP_DEFLATED) for entry in HASHED]
    ordered += [(entry, blob, zipfile.ZIP_STORED) for entry, blob in blobs.items()]
    ordered.append(("manifest.json", contents["manifest.json"], zipfile.ZIP_DEFLATED))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry, data, method in ordered:
            info = zipfile.ZipInfo(entry, date_time=DATE_TIME)
            info.compress_type = method
            info.create_system = UNIX
            info.external_attr = FILE_MODE
            archive.writestr(info, data, compresslevel=COMPRESSLEVEL)
    return buffer.getvalue()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and HEX64_RE.fullmatch(value) is not None


def _bounded(entry: str, data: bytes, fail: Fail) -> None:
    """Refuse JSON text with more than MAX_JSON_VALUES values before decoding it."""
    # Every value or key but the first in a container follows one of these (inside strings they only overcount).
    values = sum(data.count(char) for char in (b",", b":", b"[", b"{"))
    if values > MAX_JSON_VALUES:
        raise fail(f"bad {entry}", f"more than {MAX_JSON_VALUES} JSON values")


def _read_manifest(data: bytes, fail: Fail) -> dict[str, Any]:
    _bounded("manifest", data, fail)
    try:
        value = decode_canonical(data)
    except EncodingError as exc:
        raise fail("bad manifest", f"not canonical JSON: {exc}") from exc
    if not isinstance(value, dict) or set(value) != MANIFEST_FIELDS:
        raise fail("bad manifest", "fields must be exactly " + ", ".join(sorted(MANIFEST_FIELDS)))
    if not _is_int(value["version"]) or value["version"] != VERSION:
        raise fail("bad manifest", f"unknown version {value['version']!r}")
    if not _is_int(value["height"]) or value["height"] < 0 or not _is_hex64(value["hash"]):
        raise fail("bad manifest", "bad height or hash")
    files = value["files"]
    if not isinstance(files, dict) or set(files) != set(HASHED) or not all(map(_is_hex64, files.values())):
        raise fail("bad manifest", "files must map " + ", ".join(HASHED) + " to SHA-256 hex")
    return value


def _split_body(body: bytes, fail: Fail) -> list[bytes]:
    """The transactions' bytes: the elements of a canonical JSON array of objects, re-encoded."""
    _bounded("body", body, fail)
    try:
        value = decode_canonical(body)
    except EncodingError as exc:
        raise fail("bad body", f"not canonical JSON: {exc}") from exc
    if not isinstance(value, list):
        raise fail("bad body", "not a JSON array")
    parts = []
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            raise fail("bad body", f"element {position} is not an object")
        parts.append(canonical(item))
    if b"[" + b",".join(parts) + b"]" != body:
        raise fail("bad body", "does not split into the transactions' encodings")
    return parts
