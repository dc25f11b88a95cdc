"""One block as one deterministic zip, and back again from untrusted bytes.

Entries, always in this order, dated 1980-01-01 00:00:00, mode 0644, deflated:

    header         the canonical header bytes (hashed to the block hash)
    body           b"[" + b",".join(canonical transaction bytes) + b"]"
    block.json     an indented rendering for people: the header and each transaction, with hashes
    manifest.json  canonical {"files": {entry: sha256 hex}, "hash", "height", "version": 1}

`header` and `body` are the block; `block.json` must be exactly what they render
to, and the manifest exactly what they hash to, so there is one archive per block.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Sequence
from typing import Any

from core.archive.name import archive_name, parse_name
from core.archive.unzip import DEFAULT_LIMITS, Fail, Limits, read_entries
from core.encoding import canonical, decode_canonical
from core.errors import ArchiveError, EncodingError, InvalidTransaction
from core.ledger import BlockHeader, StoredBlock, decode_header, decode_transaction

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


def build_zip(block: StoredBlock) -> bytes:
    """The archive file for `block`, to be stored as `archive_name(block.height, block.hash)`.

    Deterministic: the same block always gives the same bytes (for a given zlib).
    Guarantees `read_zip(archive_name(block.height, block.hash), build_zip(block)) == block`
    (with the transactions as a list). Raises ArchiveError when the block is not
    self-consistent (reason "bad name", "header hash", "bad header", "header
    height", "bad body") or does not fit the default Limits ("too large", "zip bomb").
    """
    name = archive_name(block.height, block.hash)

    def fail(reason: str, detail: str) -> ArchiveError:
        return ArchiveError(name, block.height, reason, detail)

    header = _check_header(block.header, block.height, block.hash, fail)
    transactions = list(block.transactions)
    contents = {
        "header": block.header,
        "body": b"[" + b",".join(transactions) + b"]",
        "block.json": _render(header, transactions, fail),
    }
    contents["manifest.json"] = _manifest(block.height, block.hash, contents)
    data = _zip(contents)
    # Reading it back is the one place that defines "valid", so a writer can never disagree with it.
    read_zip(name, data)
    return data


def read_zip(name: str, data: bytes, limits: Limits = DEFAULT_LIMITS) -> StoredBlock:
    """The block archived in `data`, which was fetched as the file `name` and is not trusted.

    Guarantees the returned block's header bytes hash to the hash in `name`, its
    header height is the height in `name`, and its transactions are exactly the
    elements of the canonical body; every entry matched the manifest and
    `block.json` matched the block. It does NOT check the block against the chain
    (signatures, links, Merkle root): that is `verify_archive`'s job.

    Raises ArchiveError(name, height from the name or None, reason), reason one of:
    "bad name", "too large", "not a readable zip", "too many entries", "unsafe
    entry name", "duplicate entry", "unexpected entry", "missing entry", "zip bomb",
    "bad manifest", "file hash", "renamed", "header hash", "bad header", "header
    height", "bad body", "block.json" (checked in this order).
    """
    height, block_hash = parse_name(name)

    def fail(reason: str, detail: str) -> ArchiveError:
        return ArchiveError(name, height, reason, detail)

    entries = read_entries(name, height, data, ENTRIES, limits)
    manifest = _read_manifest(entries["manifest.json"], fail)
    for entry in HASHED:
        if hashlib.sha256(entries[entry]).hexdigest() != manifest["files"][entry]:
            raise fail("file hash", f"{entry!r} does not match the manifest")
    if (manifest["height"], manifest["hash"]) != (height, block_hash):
        raise fail("renamed", f"the contents are block {manifest['height']} {manifest['hash']}")
    header = _check_header(entries["header"], height, block_hash, fail)
    transactions = _split_body(entries["body"], fail)
    if entries["block.json"] != _render(header, transactions, fail):
        raise fail("block.json", "does not match the header and body")
    return StoredBlock(height, block_hash, entries["header"], transactions)


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


def _render(header: BlockHeader, transactions: Sequence[bytes], fail: Fail) -> bytes:
    """block.json: the header and each transaction as readable JSON, with their hashes."""
    rendered: list[dict[str, Any]] = []
    for position, data in enumerate(transactions):
        try:
            rendered.append(decode_transaction(data).to_dict())
        except (EncodingError, InvalidTransaction) as exc:
            raise fail("bad body", f"transaction {position}: {exc}") from exc
    document = {"header": header.to_dict(), "transactions": rendered}
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _manifest(height: int, block_hash: str, contents: dict[str, bytes]) -> bytes:
    files = {entry: hashlib.sha256(contents[entry]).hexdigest() for entry in HASHED}
    return canonical({"version": VERSION, "height": height, "hash": block_hash, "files": files})


def _zip(contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry in ENTRIES:
            info = zipfile.ZipInfo(entry, date_time=DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = UNIX
            info.external_attr = FILE_MODE
            archive.writestr(info, contents[entry], compresslevel=COMPRESSLEVEL)
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
