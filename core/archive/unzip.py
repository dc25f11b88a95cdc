"""Reading an untrusted zip without trusting anything it declares.

`zipfile` parses the central directory; everything else is checked here. Every
byte of the file must belong to exactly one entry (local header, name, extra
field, data, data descriptor), the central directory or its end record: no
bytes before, between or after, no overlapping entries, and each local header
must describe its entry as the directory does. Entries are inflated here, in
chunks, and never past their declared size (itself checked against the limits
first), so a zip bomb costs at most the limits in memory and stops within one
chunk of its first lie.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

from core.errors import ArchiveError

MIB = 1 << 20
CHUNK = 64 * 1024
# End of central directory record: signature, 4 x u16 (disks, entry counts), size, offset, comment length.
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
# Local file header: signature, version, flags, method, time, date, CRC, sizes, name and extra lengths.
_LOCAL = struct.Struct("<4s5H3L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
_DESCRIPTOR_SIZE = 12  # CRC and two sizes, after an optional signature
# A central directory entry is 46 bytes plus a name, an extra field and a comment of up to 64 KiB each.
_MAX_CENTRAL_ENTRY = 46 + 3 * 0xFFFF
_ENCRYPTED_FLAG = 0x1
_DESCRIPTOR_FLAG = 0x8
_UTF8_FLAG = 0x800

__all__ = ["DEFAULT_LIMITS", "Fail", "Limits", "read_entries"]

# Makes the ArchiveError for the file being read, so the checks need not carry its name and height.
Fail = Callable[[str, str], ArchiveError]


@dataclass(frozen=True)
class Limits:
    """What `read_zip` accepts at most from one archive file.

    `max_ratio` bounds an entry's declared size against its compressed size
    (a compressed size of 0 counts as 1). The defaults leave room for the
    attachments of a block: blobs of up to 64 MiB each, 1,024 of them (four entries
    are the block itself), 256 MiB in all.
    """

    max_zip_bytes: int = 256 * MIB
    max_entry_bytes: int = 64 * MIB
    max_total_bytes: int = 256 * MIB
    max_ratio: int = 200
    max_entries: int = 4 + 1024


DEFAULT_LIMITS = Limits()


def read_entries(
    name: str,
    height: int | None,
    data: bytes,
    expected: Collection[str],
    limits: Limits,
    optional: Callable[[str], bool] = lambda entry: False,
) -> dict[str, bytes]:
    """The contents of every entry named in `expected`, and of any others whose names
    `optional` accepts, read within `limits`.

    Every entry is checked against its declared CRC-32 and size. Raises
    ArchiveError(name, height, reason) with reason "too large", "not a readable
    zip", "too many entries", "unsafe entry name", "duplicate entry",
    "unexpected entry", "missing entry" or "zip bomb".
    """

    def fail(reason: str, detail: str) -> ArchiveError:
        return ArchiveError(name, height, reason, detail)

    if len(data) > limits.max_zip_bytes:
        raise fail("too large", f"the file is {len(data)} bytes, more than {limits.max_zip_bytes}")
    directory = _check_directory(data, limits, fail)
    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except Exception as exc:  # zipfile raises many kinds of errors on hostile bytes, not only BadZipFile
        raise fail("not a readable zip", str(exc) or type(exc).__name__) from exc
    _check_names(infos, expected, optional, limits, fail)
    _check_declared_sizes(infos, limits, fail)
    streams = _layout(data, infos, directory, fail)
    return {info.orig_filename: _inflate(raw, info, fail) for info, raw in streams}


def _check_directory(data: bytes, limits: Limits, fail: Fail) -> int:
    """The central directory's offset, once its end record closes the file and it is small enough.

    Bounding it comes before zipfile builds an object for each entry it lists.
    """
    start = data.rfind(_EOCD_SIGNATURE, max(0, len(data) - _EOCD.size - 0xFFFF))
    if start < 0 or start + _EOCD.size > len(data):
        raise fail("not a readable zip", "no end of central directory record")
    _, _, _, _, entries, size, offset, comment_length = _EOCD.unpack_from(data, start)
    if entries == 0xFFFF or 0xFFFFFFFF in (size, offset):
        raise fail("not a readable zip", "ZIP64 is not used by block archives")
    if start + _EOCD.size + comment_length != len(data):
        raise fail("not a readable zip", "the end record does not end the file")
    if offset + size != start:
        raise fail("not a readable zip", "the central directory is not where the end record says")
    if entries > limits.max_entries or size > limits.max_entries * _MAX_CENTRAL_ENTRY:
        raise fail("too many entries", f"the directory declares {entries} entries in {size} bytes")
    return offset


def _check_names(
    infos: list[zipfile.ZipInfo], expected: Collection[str], optional: Callable[[str], bool], limits: Limits, fail: Fail
) -> None:
    if len(infos) > limits.max_entries:
        raise fail("too many entries", f"{len(infos)} entries, at most {limits.max_entries}")
    seen: set[str] = set()
    for info in infos:
        entry = info.orig_filename
        if _unsafe(entry):
            raise fail("unsafe entry name", repr(entry))
        if entry in seen:
            raise fail("duplicate entry", repr(entry))
        if entry not in expected and not optional(entry):
            raise fail("unexpected entry", repr(entry))
        seen.add(entry)
    for entry in expected:
        if entry not in seen:
            raise fail("missing entry", repr(entry))


def _unsafe(entry: str) -> bool:
    return (
        entry.startswith("/")
        or any(char in entry for char in "\\:\x00")
        or any(part in ("", ".", "..") for part in entry.split("/"))
    )


def _check_declared_sizes(infos: list[zipfile.ZipInfo], limits: Limits, fail: Fail) -> None:
    total = 0
    for info in infos:
        entry = repr(info.orig_filename)
        if info.flag_bits & _ENCRYPTED_FLAG:
            raise fail("not a readable zip", f"{entry} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise fail("not a readable zip", f"{entry} uses compression method {info.compress_type}")
        if info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise fail(
                "zip bomb",
                f"{entry} declares {info.file_size} bytes from {info.compress_size} (ratio over {limits.max_ratio})",
            )
        if info.file_size > limits.max_entry_bytes:
            raise fail("too large", f"{entry} declares {info.file_size} bytes, more than {limits.max_entry_bytes}")
        total += info.file_size
    if total > limits.max_total_bytes:
        raise fail("too large", f"the entries declare {total} bytes, more than {limits.max_total_bytes}")


def _layout(
    data: bytes, infos: list[zipfile.ZipInfo], directory: int, fail: Fail
) -> list[tuple[zipfile.ZipInfo, memoryview]]:
    """Each entry's compressed bytes, once the entries are found to tile the file up to the directory."""
    streams = []
    position = 0
    for info in sorted(infos, key=lambda info: info.header_offset):
        if info.header_offset != position:
            raise fail("not a readable zip", f"{info.orig_filename!r} is not where the previous entry ends")
        raw, position = _local(data, info, fail)
        streams.append((info, raw))
    if position != directory:
        raise fail("not a readable zip", "the entries do not end where the central directory begins")
    return streams


def _local(data: bytes, info: zipfile.ZipInfo, fail: Fail) -> tuple[memoryview, int]:
    """The entry's compressed bytes and where the entry ends, if its local header agrees with the directory."""
    entry = repr(info.orig_filename)
    start = info.header_offset
    if start + _LOCAL.size > len(data):
        raise fail("not a readable zip", f"{entry}: local header out of range")
    signature, _, flags, method, _, _, crc, compressed, size, name_length, extra_length = _LOCAL.unpack_from(
        data, start
    )
    if signature != _LOCAL_SIGNATURE:
        raise fail("not a readable zip", f"{entry}: bad local header")
    # Other tools read the local header: it must not describe a different entry than the directory does.
    # (With a data descriptor, the CRC and sizes follow the data instead.)
    local = (flags & _DESCRIPTOR_FLAG, method, crc, compressed, size)
    central = (info.flag_bits & _DESCRIPTOR_FLAG, info.compress_type, info.CRC, info.compress_size, info.file_size)
    compared = 2 if flags & _DESCRIPTOR_FLAG else 5
    if local[:compared] != central[:compared]:
        raise fail("not a readable zip", f"{entry}: local header disagrees with the directory")
    name_start = start + _LOCAL.size
    local_name = data[name_start : name_start + name_length].decode(
        "utf-8" if flags & _UTF8_FLAG else "cp437", errors="replace"
    )
    if local_name != info.orig_filename:
        raise fail("not a readable zip", f"{entry}: local header names {local_name!r}")
    begin = name_start + name_length + extra_length
    end = begin + info.compress_size
    if end > len(data):
        raise fail("not a readable zip", f"{entry}: data runs past the end of the file")
    after = end
    if flags & _DESCRIPTOR_FLAG:
        after += _DESCRIPTOR_SIZE + (len(_DESCRIPTOR_SIGNATURE) if data.startswith(_DESCRIPTOR_SIGNATURE, end) else 0)
    return memoryview(data)[begin:end], after


def _inflate(raw: memoryview, info: zipfile.ZipInfo, fail: Fail) -> bytes:
    """An entry's bytes, never more than its declared size (already within the limits)."""
    entry = repr(info.orig_filename)
    if info.compress_type == zipfile.ZIP_STORED:
        if len(raw) > info.file_size:
            raise fail("zip bomb", f"{entry} holds more than its declared {info.file_size} bytes")
        out = bytearray(raw)
    else:
        out = _deflated(raw, info, fail)
    if len(out) != info.file_size:
        raise fail("not a readable zip", f"{entry} is {len(out)} bytes, not the declared {info.file_size}")
    if zlib.crc32(out) != info.CRC:
        raise fail("not a readable zip", f"{entry} fails its CRC-32")
    return bytes(out)


def _deflated(raw: memoryview, info: zipfile.ZipInfo, fail: Fail) -> bytearray:
    entry = repr(info.orig_filename)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    position = 0
    try:
        while not inflater.eof:
            chunk: bytes | memoryview = inflater.unconsumed_tail
            if not chunk:
                chunk = raw[position : position + CHUNK]
                position += len(chunk)
            piece = inflater.decompress(chunk, CHUNK)
            if not chunk and not piece:
                break
            out += piece
            if len(out) > info.file_size:
                raise fail("zip bomb", f"{entry} inflates past its declared {info.file_size} bytes")
    except zlib.error as exc:
        raise fail("not a readable zip", f"{entry}: {exc}") from exc
    if not inflater.eof:
        raise fail("not a readable zip", f"{entry}: compressed data ends early")
    if inflater.unused_data or position < len(raw):
        raise fail("not a readable zip", f"{entry}: data after the compressed stream")
    return out
