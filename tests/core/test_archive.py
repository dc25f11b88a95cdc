"""The block archive: one deterministic zip per block, and a chain checked from those files alone.

The chain (built once per module, core only):

    0  genesis (node-1, consensus parameters)
    1  key registrations: doctor, patient
    2  record 1
    3  records 2, 3, 4
    4  records 5, 6

Every kind of bad file must be caught and pinpointed: the exact file name, the
height and the reason (or the chain check), both by `verify_archive` (a report)
and by `blocks_for_restore` (an ArchiveError).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from dataclasses import dataclass

import pytest

from core.archive import (
    ArchivedBlock,
    ArchiveError,
    ArchiveReport,
    Limits,
    archive_name,
    attachment_hashes,
    blocks_for_restore,
    build_zip,
    parse_name,
    read_zip,
    verify_archive,
)
from core.crypto import NodeKey
from core.encoding import b64e, canonical, decode_canonical
from core.errors import CoreError
from core.ledger import StoredBlock, decode_header, decode_transaction, make_block, sign_transaction, validate_chain
from tests.core.chains import SLOT_MS, TS, build_blocks, record_payload, rewrite_header

MIB = 1 << 20
ENTRIES = ("header", "body", "block.json", "manifest.json")
# Reasons a damaged zip structure can give (as opposed to well-formed zips with wrong contents).
ZIP_REASONS = {
    "not a readable zip",
    "too large",
    "too many entries",
    "unsafe entry name",
    "duplicate entry",
    "unexpected entry",
    "missing entry",
    "zip bomb",
}


@dataclass(frozen=True)
class Chain:
    blocks: list[StoredBlock]
    node: NodeKey

    def name(self, height: int) -> str:
        return archive_name(height, self.blocks[height].hash)


@pytest.fixture(scope="module")
def chain(node_key, doctor_keys, patient_keys) -> Chain:
    blocks = build_blocks(node_key, doctor_keys, patient_keys)
    assert validate_chain(blocks).valid
    return Chain(blocks, node_key)


@pytest.fixture(scope="module")
def files(chain) -> dict[str, bytes]:
    """The honest archive: file name -> zip bytes, in height order."""
    return {chain.name(b.height): build_zip(b) for b in chain.blocks}


# Helpers that forge archive files the way an attacker (or a broken disk) would.


def _entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate names we forge
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return buffer.getvalue()


def _manifest(height: int, block_hash: str, entries: dict[str, bytes]) -> bytes:
    files = {name: hashlib.sha256(entries[name]).hexdigest() for name in ("header", "body", "block.json")}
    return canonical({"version": 1, "height": height, "hash": block_hash, "files": files})


def _forge(height: int, block_hash: str, header: bytes, body: bytes, block_json: bytes) -> bytes:
    """A well-formed zip of these entries with a manifest recomputed to match them."""
    entries = {"header": header, "body": body, "block.json": block_json}
    entries["manifest.json"] = _manifest(height, block_hash, entries)
    return _zip([(name, entries[name]) for name in ENTRIES])


def _honest(files: dict[str, bytes], chain: Chain, height: int) -> dict[str, bytes]:
    return _entries(files[chain.name(height)])


def _with(files: dict[str, bytes], *changes: tuple[str, bytes | None]) -> list[tuple[str, bytes]]:
    """The archive with files replaced, added (new name) or removed (None)."""
    result = dict(files)
    for name, data in changes:
        if data is None:
            del result[name]
        else:
            result[name] = data
    return list(result.items())


def _flip(data: bytes, position: int, mask: int = 0x01) -> bytes:
    mutated = bytearray(data)
    mutated[position] ^= mask
    return bytes(mutated)


def _assert_bad(
    archive: list[tuple[str, bytes]], file: str | None, height: int, check: str, blocks: int | None = None
) -> ArchiveReport:
    """verify_archive reports exactly (file, height, check), and blocks_for_restore raises the same."""
    report = verify_archive(archive)
    assert not report.valid
    assert (report.file, report.height, report.check) == (file, height, check), report.describe()
    if blocks is not None:
        assert report.blocks == blocks
    with pytest.raises(ArchiveError) as caught:
        blocks_for_restore(archive)
    assert (caught.value.name, caught.value.height, caught.value.reason) == (file or "", height, check)
    return report


def _assert_read_fails(name: str, data: bytes, reason: str, limits: Limits | None = None) -> ArchiveError:
    height = parse_name(name)[0]
    with pytest.raises(ArchiveError) as caught:
        read_zip(name, data, limits or Limits())
    assert (caught.value.name, caught.value.height, caught.value.reason) == (name, height, reason), caught.value
    return caught.value


# Names.


def test_archive_name_round_trip():
    digest = "ab" * 32
    assert archive_name(0, digest) == f"0-{digest}.zip"
    assert archive_name(12, digest) == f"12-{digest}.zip"
    assert parse_name(archive_name(12, digest)) == (12, digest)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "2-" + "ab" * 32,
        "2-" + "ab" * 32 + ".ZIP",
        "2-" + "ab" * 32 + ".zip.zip",
        "2-" + "ab" * 32 + ".tar.zip",
        "2-" + "AB" * 32 + ".zip",
        "2-" + "ab" * 31 + ".zip",
        "02-" + "ab" * 32 + ".zip",
        "-2-" + "ab" * 32 + ".zip",
        "+2-" + "ab" * 32 + ".zip",
        " 2-" + "ab" * 32 + ".zip",
        "2-" + "ab" * 32 + ".zip\n",
        "dir/2-" + "ab" * 32 + ".zip",
        "../2-" + "ab" * 32 + ".zip",
        "/2-" + "ab" * 32 + ".zip",
        "2_" + "ab" * 32 + ".zip",
        "99999999999999999999-" + "ab" * 32 + ".zip",
        "٢-" + "ab" * 32 + ".zip",  # an Arabic-Indic digit two
    ],
)
def test_invalid_name(name):
    with pytest.raises(ArchiveError) as caught:
        parse_name(name)
    assert (caught.value.name, caught.value.height, caught.value.reason) == (name, None, "bad name")


@pytest.mark.parametrize(("height", "digest"), [(-1, "ab" * 32), (2**63, "ab" * 32), (1, "AB" * 32), (1, "abc")])
def test_invalid_archive_name(height, digest):
    with pytest.raises(ArchiveError) as caught:
        archive_name(height, digest)
    assert caught.value.reason == "bad name"


# The format: round trip, determinism, contents.


def test_round_trip(chain, files):
    for stored in chain.blocks:
        assert read_zip(chain.name(stored.height), files[chain.name(stored.height)]) == ArchivedBlock(stored, {})


def test_deterministic(chain, files):
    stored = chain.blocks[3]
    copy = StoredBlock(stored.height, stored.hash, bytes(stored.header), tuple(stored.transactions))
    assert build_zip(stored) == build_zip(stored) == build_zip(copy) == files[chain.name(3)]
    with zipfile.ZipFile(io.BytesIO(files[chain.name(3)])) as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == list(ENTRIES)
    for info in infos:
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.external_attr >> 16 == 0o100644
        assert info.create_system == 3


def test_entries(chain, files):
    stored = chain.blocks[3]
    entries = _honest(files, chain, 3)
    assert entries["header"] == stored.header
    assert entries["body"] == b"[" + b",".join(stored.transactions) + b"]"
    manifest = decode_canonical(entries["manifest.json"])
    assert manifest == {
        "version": 1,
        "height": 3,
        "hash": stored.hash,
        "files": {name: hashlib.sha256(entries[name]).hexdigest() for name in ("header", "body", "block.json")},
    }
    readable = json.loads(entries["block.json"])
    assert readable["header"]["hash"] == stored.hash
    assert readable["header"]["height"] == 3
    hashes = [hashlib.sha256(tx).hexdigest() for tx in stored.transactions]
    assert [tx["hash"] for tx in readable["transactions"]] == hashes
    assert readable["transactions"][0]["kind"] == "record"
    assert entries["block.json"].startswith(b'{\n  "header": {\n')


# The whole archive.


def test_verify_archive_valid_in_any_order(chain, files):
    report = verify_archive(reversed(list(files.items())))
    assert report.valid
    assert (report.blocks, report.tip_hash, report.ignored) == (5, chain.blocks[-1].hash, ())
    assert report.to_dict() == {"valid": True, "blocks": 5, "tip_hash": chain.blocks[-1].hash, "ignored": []}
    assert report.describe() == f"archive valid: 5 blocks, tip {chain.blocks[-1].hash}"


def test_blocks_for_restore(chain, files):
    restored = blocks_for_restore(reversed(list(files.items())))
    assert restored == [ArchivedBlock(block, {}) for block in chain.blocks]
    assert validate_chain([archived.block for archived in restored]).valid


def test_extra_files_are_ignored(chain, files):
    extra = [
        ("README.txt", b"block archive"),
        (chain.name(2) + ".part", files[chain.name(2)][:100]),
        ("old/" + chain.name(3), b"junk"),
        ("03-" + chain.blocks[3].hash + ".zip", b"junk"),
    ]
    report = verify_archive([*files.items(), *extra])
    assert report.valid
    assert report.blocks == 5
    assert report.ignored == tuple(sorted(name for name, _ in extra))
    assert report.describe().endswith("; 4 other files ignored")
    assert [archived.block for archived in blocks_for_restore([*files.items(), *extra])] == chain.blocks


def test_archive_missing_its_tip_is_a_shorter_valid_chain(chain, files):
    """Only comparison with a node can tell a lost last block; the archive alone is still a valid chain."""
    report = verify_archive(_with(files, (chain.name(4), None)))
    assert report.valid
    assert (report.blocks, report.tip_hash) == (4, chain.blocks[3].hash)


# Damaged files.


def _data_span(data: bytes, entry: str) -> tuple[int, int]:
    """Where an entry's compressed bytes lie in the zip."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(entry)
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_length + extra_length
    return start, start + info.compress_size


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_invalid_corrupt_byte_in_the_middle(chain, files, entry, fraction):
    name = chain.name(2)
    start, end = _data_span(files[name], entry)
    position = start + int((end - start - 2) * fraction)
    report = verify_archive(_with(files, (name, _flip(files[name], position))))
    assert (report.valid, report.file, report.height, report.blocks) == (False, name, 2, 2)
    # The CRC-32 catches the change, unless the damaged stream inflates past the declared size first.
    assert report.check in {"not a readable zip", "zip bomb"}, report.describe()
    assert report.tip_hash == chain.blocks[1].hash


@pytest.mark.parametrize(("mask", "step"), [(0x01, 1), (0xFF, 3)])
def test_invalid_corrupt_byte_anywhere_is_never_silent(chain, files, mask, step):
    """Every position: the file is rejected and pinpointed, or it still holds the very same block.

    A byte can be inert: zip metadata (dates, versions, attributes), the padding bits
    of a deflate stream, or a match distance pointing at an identical run of bytes.
    """
    name, original = chain.name(3), files[chain.name(3)]
    inert = 0
    for position in range(0, len(original), step):
        try:
            block = read_zip(name, _flip(original, position, mask)).block
        except ArchiveError as exc:
            assert (exc.name, exc.height) == (name, 3)
            assert exc.reason in ZIP_REASONS, (position, exc)
        else:
            assert block == chain.blocks[3], position
            inert += 1
    assert inert < len(original) // step // 20


@pytest.mark.parametrize("length", [1, 4, 21, 22, 100, 0.5, -1, -21, -22, -23, -100])
def test_invalid_truncated(chain, files, length):
    name = chain.name(2)
    data = files[name]
    cut = int(len(data) * length) if isinstance(length, float) else length
    _assert_bad(_with(files, (name, data[:cut])), name, 2, "not a readable zip", blocks=2)


@pytest.mark.parametrize(
    "change",
    [
        lambda data: b"junk" + data,
        lambda data: data + b"\n",
        lambda data: data + data,  # an FTP upload resumed from the start
        lambda data: data[:30] + b"x" + data[30:],
    ],
    ids=["bytes-before", "byte-after", "twice", "byte-inside"],
)
def test_invalid_extra_bytes(chain, files, change):
    name = chain.name(2)
    _assert_bad(_with(files, (name, change(files[name]))), name, 2, "not a readable zip", blocks=2)


def test_other_zip_writers_are_accepted(chain, files):
    """Determinism is the writer's promise; a reader takes any well-formed zip of the same entries."""
    honest = _honest(files, chain, 2)

    class Pipe(io.RawIOBase):  # not seekable: zipfile writes data descriptors
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, chunk) -> int:
            self.data += chunk
            return len(chunk)

    pipe = Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in reversed(ENTRIES):
            archive.writestr(entry, honest[entry])
    assert zipfile.ZipFile(io.BytesIO(bytes(pipe.data))).infolist()[0].flag_bits & 0x08
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        for entry in ENTRIES:
            archive.writestr(entry, honest[entry])
    for data in (bytes(pipe.data), stored.getvalue()):
        assert read_zip(chain.name(2), data).block == chain.blocks[2]


def test_invalid_empty_file(chain, files):
    _assert_bad(_with(files, (chain.name(1), b"")), chain.name(1), 1, "not a readable zip", blocks=1)


@pytest.mark.parametrize(
    "data",
    [
        b"hello",
        b"%PDF-1.7\n" + bytes(2000),
        gzip.compress(b"[]", mtime=0),
        bytes(range(256)) * 8,
        b"PK\x03\x04" + bytes(100),
        b"PK\x05\x06" + b"\xff" * 18,
        b"PK\x05\x06" + bytes(8) + b"\x10" + bytes(9),
    ],
    ids=["text", "pdf", "gzip", "bytes", "local-header-only", "eocd-all-ones", "directory-out-of-range"],
)
def test_invalid_not_a_zip(chain, files, data):
    name = chain.name(2)
    report = _assert_bad(_with(files, (name, data)), name, 2, "not a readable zip")
    assert report.blocks == 2


# Files under the wrong name.


def test_invalid_empty_zip(chain, files):
    name = chain.name(2)
    _assert_bad(_with(files, (name, _zip([]))), name, 2, "missing entry", blocks=2)


def test_invalid_renamed_to_another_height(chain, files):
    wrong = archive_name(3, chain.blocks[2].hash)
    _assert_bad(_with(files, (chain.name(2), None), (wrong, files[chain.name(2)])), wrong, 3, "renamed")


def test_invalid_renamed_beyond_the_tip(chain, files):
    wrong = archive_name(9, chain.blocks[2].hash)
    _assert_bad(_with(files, (chain.name(2), None), (wrong, files[chain.name(2)])), wrong, 9, "renamed")


@pytest.mark.parametrize("digest", ["0" * 64, "other"], ids=["zeros", "hash-of-block-3"])
def test_invalid_renamed_to_another_hash(chain, files, digest):
    wrong = archive_name(2, chain.blocks[3].hash if digest == "other" else digest)
    _assert_bad(_with(files, (chain.name(2), None), (wrong, files[chain.name(2)])), wrong, 2, "renamed", blocks=2)


def test_invalid_two_files_swapped(chain, files):
    two, three = chain.name(2), chain.name(3)
    report = _assert_bad(_with(files, (two, files[three]), (three, files[two])), two, 2, "renamed")
    assert "block 3" in report.detail


def test_invalid_duplicate_height(chain, files):
    rival = rewrite_header(chain.blocks[2], chain.node, nonce="ab" * 16)  # a second, well-signed block 2
    rival_name = archive_name(2, rival.hash)
    expected = ", ".join(sorted([chain.name(2), rival_name]))
    report = _assert_bad(_with(files, (rival_name, build_zip(rival))), expected, 2, "duplicate height", blocks=2)
    assert chain.name(2) in report.detail
    assert rival_name in report.detail


def test_invalid_same_file_twice(chain, files):
    name = chain.name(3)
    _assert_bad([*files.items(), (name, files[name])], f"{name}, {name}", 3, "duplicate height", blocks=3)


@pytest.mark.parametrize("height", [0, 2, 3])
def test_invalid_missing_height(chain, files, height):
    report = _assert_bad(_with(files, (chain.name(height), None)), None, height, "missing block", blocks=height)
    assert report.tip_hash == (chain.blocks[height - 1].hash if height else None)


def test_invalid_empty_archive():
    report = _assert_bad([], None, 0, "missing block", blocks=0)
    assert report.to_dict() == {
        "valid": False,
        "blocks": 0,
        "tip_hash": None,
        "ignored": [],
        "height": 0,
        "check": "missing block",
        "detail": "the archive has no genesis block",
        "file": None,
    }


def test_invalid_only_unrelated_files():
    report = _assert_bad([("notes.txt", b"x")], None, 0, "missing block")
    assert report.ignored == ("notes.txt",)


def test_first_bad_file_by_height_is_reported(chain, files):
    report = _assert_bad(
        _with(files, (chain.name(4), b""), (chain.name(1), b"junk")), chain.name(1), 1, "not a readable zip"
    )
    assert report.describe() == f"archive INVALID at height 1 in {chain.name(1)}: not a readable zip: {report.detail}"


# Zip bombs and hostile zips.


# Where zip header fields lie: (offset in the local header, offset in the central directory entry, format).
FIELDS = {"method": (8, 10, "<H"), "crc": (14, 16, "<L"), "size": (22, 24, "<L")}


def _patch(data: bytes, entry: str, **values: int) -> bytes:
    """The zip with `entry`'s header fields set to `values`, in its local header and in the central directory."""
    patched = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(entry).header_offset
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(entry)] != entry.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    for field, value in values.items():
        local_offset, central_offset, layout = FIELDS[field]
        struct.pack_into(layout, patched, local + local_offset, value)
        struct.pack_into(layout, patched, central + central_offset, value)
    return bytes(patched)


def _deflated_zeros(mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of `mib` MiB of zeros, and their CRC-32, without compressing them all.

    After a full flush the compressor starts afresh on a byte boundary, so one
    compressed MiB can be repeated; an empty final block ends the stream.
    """
    zeros = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    one = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return one * mib + final, crc


@pytest.fixture(scope="module")
def bomb(chain, files) -> bytes:
    """Block 2's archive with a body of 200 MiB of zeros, about 200 KB deflated.

    Written by zipfile with the deflated stream stored as is, then its header
    fields patched to say what it is: deflated, 200 MiB, and the right CRC-32.
    """
    honest = _honest(files, chain, 2)
    stream, crc = _deflated_zeros(200)
    entries = [("header", honest["header"]), ("body", stream), *((n, honest[n]) for n in ENTRIES[2:])]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    data = _patch(buffer.getvalue(), "body", method=zipfile.ZIP_DEFLATED, crc=crc, size=200 * MIB)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("body")
        assert (info.file_size, info.compress_type) == (200 * MIB, zipfile.ZIP_DEFLATED)
        assert info.compress_size < 300_000
        with archive.open("body") as body:
            assert body.read(MIB) == bytes(MIB)  # a real deflate stream of zeros
    return data


def _cheap(call, memory: int = 8 * MIB):
    """Run `call`, returning its exception and asserting it took little time and at most `memory` bytes."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        call()
    except ArchiveError as exc:
        caught = exc
    else:
        pytest.fail("not rejected")
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < 2.0
    assert peak < memory
    return caught


def test_invalid_zip_bomb(chain, files, bomb):
    name = chain.name(2)
    caught = _cheap(lambda: read_zip(name, bomb))
    assert (caught.name, caught.height, caught.reason) == (name, 2, "zip bomb")
    _assert_bad(_with(files, (name, bomb)), name, 2, "zip bomb", blocks=2)


@pytest.mark.parametrize("declared", [0, 1000, 64 * 1024])
def test_invalid_zip_bomb_with_falsified_size(chain, files, bomb, declared):
    name = chain.name(2)
    lying = _patch(bomb, "body", size=declared)
    with zipfile.ZipFile(io.BytesIO(lying)) as archive:
        assert archive.getinfo("body").file_size == declared
    caught = _cheap(lambda: read_zip(name, lying))
    assert (caught.name, caught.height, caught.reason) == (name, 2, "zip bomb")
    assert "past its declared" in caught.detail
    _assert_bad(_with(files, (name, lying)), name, 2, "zip bomb", blocks=2)


def test_invalid_honest_entry_with_falsified_small_size(chain, files):
    name = chain.name(3)
    lying = _patch(files[name], "block.json", size=100)
    _assert_read_fails(name, lying, "zip bomb")


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (Limits(max_zip_bytes=1000), "too large"),
        (Limits(max_entry_bytes=1000), "too large"),
        (Limits(max_total_bytes=3000), "too large"),
        (Limits(max_ratio=1), "zip bomb"),
        (Limits(max_entries=3), "too many entries"),
    ],
    ids=["zip", "entry", "total", "ratio", "entries"],
)
def test_invalid_over_limits(chain, files, limits, reason):
    name = chain.name(3)
    _assert_read_fails(name, files[name], reason, limits)
    assert read_zip(name, files[name]).block == chain.blocks[3]


UNSAFE_NAMES = ["/header", "../header", "a/../header", "./header", "C:header", "dir\\header", "a//b", "/etc/passwd"]


@pytest.mark.parametrize("entry", UNSAFE_NAMES)
def test_invalid_unsafe_entry_name(chain, files, entry):
    honest = _honest(files, chain, 2)
    data = _zip([(entry, honest["header"]), *((n, honest[n]) for n in ENTRIES[1:])])
    _assert_bad(_with(files, (chain.name(2), data)), chain.name(2), 2, "unsafe entry name", blocks=2)


def test_invalid_unexpected_entry(chain, files):
    honest = _honest(files, chain, 2)
    data = _zip([*honest.items(), ("notes.txt", b"hello")])
    _assert_bad(_with(files, (chain.name(2), data)), chain.name(2), 2, "unexpected entry")


def test_invalid_duplicate_entry(chain, files):
    honest = _honest(files, chain, 2)
    data = _zip([*honest.items(), ("header", honest["header"])])
    _assert_bad(_with(files, (chain.name(2), data)), chain.name(2), 2, "duplicate entry")


def test_invalid_missing_entry(chain, files):
    honest = _honest(files, chain, 2)
    data = _zip([(name, honest[name]) for name in ENTRIES if name != "block.json"])
    _assert_bad(_with(files, (chain.name(2), data)), chain.name(2), 2, "missing entry")


@pytest.mark.parametrize("count", [Limits().max_entries + 1, 5000])
def test_invalid_too_many_entries(chain, files, count):
    honest = _honest(files, chain, 2)
    data = _zip([*honest.items(), *((f"x{i}", b"") for i in range(count - 4))])
    _assert_bad(_with(files, (chain.name(2), data)), chain.name(2), 2, "too many entries")


def test_invalid_encrypted_flag(chain, files):
    name = chain.name(2)
    patched = bytearray(files[name])
    central = patched.index(b"PK\x01\x02")
    patched[central + 8] |= 0x01
    patched[6] |= 0x01
    _assert_read_fails(name, bytes(patched), "not a readable zip")


# Well-formed zips with wrong contents (the manifest recomputed to match).


@pytest.mark.parametrize(
    "manifest",
    [
        lambda m: json.dumps(m, indent=1).encode(),
        lambda m: canonical({**m, "version": 2}),
        lambda m: canonical({**m, "version": True}),
        lambda m: canonical({**m, "extra": 1}),
        lambda m: canonical({k: v for k, v in m.items() if k != "files"}),
        lambda m: canonical({**m, "height": "2"}),
        lambda m: canonical({**m, "hash": m["hash"].upper()}),
        lambda m: canonical({**m, "files": {**m["files"], "manifest.json": "0" * 64}}),
        lambda m: canonical({**m, "files": {**m["files"], "body": 1}}),
        lambda m: b"[]",
        lambda m: b"\xff",
    ],
    ids=[
        "indented",
        "version-2",
        "version-true",
        "extra-field",
        "no-files",
        "height-string",
        "hash-uppercase",
        "extra-file",
        "hash-not-text",
        "array",
        "not-utf8",
    ],
)
def test_invalid_manifest(chain, files, manifest):
    name = chain.name(2)
    honest = _honest(files, chain, 2)
    forged = manifest(json.loads(honest["manifest.json"]))
    data = _zip([*((n, honest[n]) for n in ENTRIES[:3]), ("manifest.json", forged)])
    _assert_bad(_with(files, (name, data)), name, 2, "bad manifest", blocks=2)


@pytest.mark.parametrize("entry", ["header", "body", "block.json"])
def test_invalid_file_hash(chain, files, entry):
    """An entry replaced without updating the manifest."""
    name = chain.name(2)
    honest = _honest(files, chain, 2)
    changed = {**honest, entry: honest[entry] + b" "}
    data = _zip([(n, changed[n]) for n in ENTRIES])
    report = _assert_bad(_with(files, (name, data)), name, 2, "file hash")
    assert entry in report.detail


def test_invalid_header_not_decoding(chain, files):
    """A header of another version, filed under its own hash."""
    honest = _honest(files, chain, 2)
    junk = honest["header"].replace(b'"v":1', b'"v":2')
    name = archive_name(2, hashlib.sha256(junk).hexdigest())
    data = _forge(2, hashlib.sha256(junk).hexdigest(), junk, honest["body"], honest["block.json"])
    _assert_bad(_with(files, (chain.name(2), None), (name, data)), name, 2, "bad header")


def test_invalid_header_hash(chain, files):
    """Renamed and the manifest recomputed for the new name: the header itself gives it away."""
    wrong = archive_name(2, "0" * 64)
    honest = _honest(files, chain, 2)
    data = _forge(2, "0" * 64, honest["header"], honest["body"], honest["block.json"])
    _assert_bad(_with(files, (chain.name(2), None), (wrong, data)), wrong, 2, "header hash")


def test_invalid_header_height(chain, files):
    """Block 3, renamed to height 2 and the manifest recomputed."""
    wrong = archive_name(2, chain.blocks[3].hash)
    honest = _honest(files, chain, 3)
    data = _forge(2, chain.blocks[3].hash, honest["header"], honest["body"], honest["block.json"])
    _assert_bad(_with(files, (chain.name(2), None), (wrong, data)), wrong, 2, "header height")


def _body_cases(chain: Chain) -> dict[str, bytes]:
    txs = chain.blocks[3].transactions
    return {
        "spaces": b"[" + b", ".join(txs) + b"]",
        "object": b'{"txs":[' + b",".join(txs) + b"]}",
        "not-json": b"[" + b",".join(txs),
        "number-element": b"[" + b",".join(txs) + b",1]",
        "nested-array": b"[[" + b",".join(txs) + b"]]",
        "not-a-transaction": b"[" + b",".join(txs) + b',{"a":1}]',
        "tx-non-canonical-inside": b"[" + txs[0].replace(b'"kind":"record"', b'"kind":"record","kind":"record"') + b"]",
    }


@pytest.mark.parametrize(
    "case",
    ["spaces", "object", "not-json", "number-element", "nested-array", "not-a-transaction", "tx-non-canonical-inside"],
)
def test_invalid_body(chain, files, case):
    name = chain.name(3)
    honest = _honest(files, chain, 3)
    body = _body_cases(chain)[case]
    data = _forge(3, chain.blocks[3].hash, honest["header"], body, honest["block.json"])
    _assert_bad(_with(files, (name, data)), name, 3, "bad body", blocks=3)


@pytest.mark.parametrize("entry", ["body", "manifest.json"])
def test_invalid_dense_json(chain, files, entry):
    """Two million empty objects (6 MiB) would take some 200 MB decoded: refused before decoding."""
    name = chain.name(3)
    honest = _honest(files, chain, 3)
    dense = b"[" + b",".join([b"{}"] * 2_000_000) + b"]"
    if entry == "body":
        data = _forge(3, chain.blocks[3].hash, honest["header"], dense, honest["block.json"])
    else:
        data = _zip([*((n, honest[n]) for n in ENTRIES[:3]), ("manifest.json", dense)])
    # Deflated 500 to 1, so past the ratio; the copies of the 6 MiB inflated are all it may cost.
    caught = _cheap(lambda: read_zip(name, data, Limits(max_ratio=10_000)), memory=20 * MIB)
    assert (caught.name, caught.height, caught.reason) == (name, 3, f"bad {entry.removesuffix('.json')}")
    assert "JSON values" in caught.detail


def test_invalid_block_json_out_of_date(chain, files):
    """A transaction edited in the body, the manifest recomputed, but the readable copy left as it was."""
    name = chain.name(3)
    honest = _honest(files, chain, 3)
    txs = list(chain.blocks[3].transactions)
    txs[1] = txs[1].replace(b'"attachments":[]', b'"attachments":["' + b"0" * 64 + b'"]')
    body = b"[" + b",".join(txs) + b"]"
    data = _forge(3, chain.blocks[3].hash, honest["header"], body, honest["block.json"])
    _assert_bad(_with(files, (name, data)), name, 3, "block.json", blocks=3)


def test_invalid_block_json_edited(chain, files):
    name = chain.name(2)
    honest = _honest(files, chain, 2)
    readable = honest["block.json"].replace(b'"kind": "record"', b'"kind": "recorb"')
    assert readable != honest["block.json"]
    data = _forge(2, chain.blocks[2].hash, honest["header"], honest["body"], readable)
    _assert_bad(_with(files, (name, data)), name, 2, "block.json")


# Consistent files holding a tampered block: the chain check pinpoints them.


def test_invalid_tampered_header(chain, files):
    """Block 2's header edited (not re-signed), filed and archived under its new hash."""
    forged = rewrite_header(chain.blocks[2], nonce="cd" * 16)
    name = archive_name(2, forged.hash)
    report = _assert_bad(
        _with(files, (chain.name(2), None), (name, build_zip(forged))), name, 2, "producer signature", blocks=2
    )
    assert report.tip_hash == chain.blocks[1].hash


def test_invalid_tampered_header_resigned(chain, files):
    """With the node key the header verifies, but block 3 no longer links to it."""
    forged = rewrite_header(chain.blocks[2], chain.node, nonce="cd" * 16)
    archive = _with(files, (chain.name(2), None), (archive_name(2, forged.hash), build_zip(forged)))
    _assert_bad(archive, chain.name(3), 3, "link", blocks=3)


def test_invalid_tampered_header_by_hand(chain, files):
    """The same, built by hand with plain zipfile: header edited, name and manifest recomputed."""
    forged = rewrite_header(chain.blocks[2], ts=TS + 2 * SLOT_MS + 1)
    honest = _honest(files, chain, 2)
    readable = json.loads(honest["block.json"])
    readable["header"] = decode_header(forged.header).to_dict()
    block_json = (json.dumps(readable, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    data = _forge(2, forged.hash, forged.header, honest["body"], block_json)
    assert data != build_zip(forged)  # a different zip writer, the same block
    name = archive_name(2, forged.hash)
    _assert_bad(_with(files, (chain.name(2), None), (name, data)), name, 2, "producer signature")


def test_invalid_transaction_edited(chain, files):
    """A record edited inside block 3, everything in the zip recomputed: the Merkle root gives it away."""
    stored = chain.blocks[3]
    txs = list(stored.transactions)
    value = decode_canonical(txs[1])
    value["payload"]["body"] = b64e(b"forged diagnosis")
    txs[1] = canonical(value)
    forged = StoredBlock(3, stored.hash, stored.header, txs)
    name = chain.name(3)
    report = _assert_bad(_with(files, (name, build_zip(forged))), name, 3, "body hash", blocks=3)
    assert report.tip_hash == chain.blocks[2].hash


def test_invalid_transaction_removed(chain, files):
    stored = chain.blocks[4]
    forged = StoredBlock(4, stored.hash, stored.header, list(stored.transactions[:1]))
    _assert_bad(_with(files, (chain.name(4), build_zip(forged))), chain.name(4), 4, "body hash", blocks=4)


# What build_zip refuses, and the error itself.


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: StoredBlock(b.height, "0" * 64, b.header, b.transactions), "header hash"),
        (lambda b: StoredBlock(3, b.hash, b.header, b.transactions), "header height"),
        (lambda b: StoredBlock(b.height, hashlib.sha256(b"{}").hexdigest(), b"{}", b.transactions), "bad header"),
        (lambda b: StoredBlock(b.height, b.hash, b.header, [b"junk"]), "bad body"),
        (lambda b: StoredBlock(b.height, b.hash, b.header, [b.transactions[0] + b" "]), "bad body"),
        (lambda b: StoredBlock(-1, b.hash, b.header, b.transactions), "bad name"),
    ],
    ids=["hash", "height", "header", "junk-tx", "non-canonical-tx", "negative-height"],
)
def test_invalid_block_to_build(chain, change, reason):
    with pytest.raises(ArchiveError) as caught:
        build_zip(change(chain.blocks[2]))
    assert caught.value.reason == reason


def test_archive_error_is_readable():
    error = ArchiveError("2-ab.zip", 2, "renamed", "the contents are block 3")
    assert isinstance(error, CoreError)
    assert str(error) == "2-ab.zip (height 2): renamed: the contents are block 3"
    assert str(ArchiveError("x.zip", None, "bad name")) == "x.zip: bad name"
    assert str(ArchiveError("", 4, "missing block", "no file for height 4")) == (
        "archive (height 4): missing block: no file for height 4"
    )


# Attachments: the ciphertext blobs of the records in a block travel in its file.

# Stand-ins for AES-GCM ciphertext, which does not compress: 64 KiB and 1 KiB of hash output.
BLOB_A = b"".join(hashlib.sha256(b"A%d" % n).digest() for n in range(2048))
BLOB_B = b"".join(hashlib.sha256(b"B%d" % n).digest() for n in range(32))
SHA_A, SHA_B = hashlib.sha256(BLOB_A).hexdigest(), hashlib.sha256(BLOB_B).hexdigest()


@pytest.fixture(scope="module")
def blob_chain(chain, doctor_keys) -> Chain:
    """The chain up to block 1, then block 2: a record with attachments A and B, and one listing B again."""
    first = {**record_payload(40), "attachments": [SHA_A, SHA_B]}
    second = {**record_payload(41), "attachments": [SHA_B]}
    txs = [
        sign_transaction("record", first, doctor_keys, TS + 10),
        sign_transaction("record", second, doctor_keys, TS + 11),
    ]
    made = make_block(2, chain.blocks[1].hash, txs, "node-1", chain.node, TS + SLOT_MS * 2)
    block = StoredBlock(2, made.header.hash, made.header.encoded, [tx.encoded for tx in txs])
    blocks = [*chain.blocks[:2], block]
    assert validate_chain(blocks).valid
    return Chain(blocks, chain.node)


@pytest.fixture(scope="module")
def blob_files(blob_chain) -> dict[str, bytes]:
    blobs = {SHA_A: BLOB_A, SHA_B: BLOB_B}
    return {blob_chain.name(b.height): build_zip(b, blobs if b.height == 2 else None) for b in blob_chain.blocks}


def _rezip(data: bytes, change: dict[str, bytes | None]) -> bytes:
    """The file's entries, in order, with some replaced, added or (None) removed."""
    entries = {**_entries(data), **change}
    return _zip([(name, body) for name, body in entries.items() if body is not None])


def test_attachment_hashes(blob_chain):
    assert attachment_hashes(blob_chain.blocks[2]) == sorted([SHA_A, SHA_B])
    assert attachment_hashes(blob_chain.blocks[1]) == []


def test_blobs_round_trip(blob_chain, blob_files):
    name = blob_chain.name(2)
    assert read_zip(name, blob_files[name]) == ArchivedBlock(blob_chain.blocks[2], {SHA_A: BLOB_A, SHA_B: BLOB_B})
    restored = blocks_for_restore(blob_files.items())
    assert [archived.blobs for archived in restored] == [{}, {}, {SHA_A: BLOB_A, SHA_B: BLOB_B}]
    assert verify_archive(blob_files.items()).valid


def test_blobs_are_stored_entries_before_the_manifest(blob_chain, blob_files):
    stored = blob_chain.blocks[2]
    data = blob_files[blob_chain.name(2)]
    assert build_zip(stored, {SHA_B: BLOB_B, SHA_A: BLOB_A}) == data  # deterministic whatever the mapping's order
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    blobs = [f"blobs/{sha}" for sha in sorted([SHA_A, SHA_B])]
    assert [info.filename for info in infos] == ["header", "body", "block.json", *blobs, "manifest.json"]
    assert [info.compress_type for info in infos if info.filename.startswith("blobs/")] == [zipfile.ZIP_STORED] * 2
    manifest = decode_canonical(_entries(data)["manifest.json"])
    assert set(manifest["files"]) == {"header", "body", "block.json"}  # a blob is named by its own hash


def test_other_zip_writers_may_order_blobs_freely(blob_chain, blob_files):
    name = blob_chain.name(2)
    entries = _entries(blob_files[name])
    shuffled = _zip(sorted(entries.items(), reverse=True))
    assert read_zip(name, shuffled).blobs == {SHA_A: BLOB_A, SHA_B: BLOB_B}


@pytest.mark.parametrize(
    ("blobs", "reason"),
    [
        ({SHA_A: BLOB_A}, "missing blob"),
        ({}, "missing blob"),
        ({SHA_A: BLOB_A, SHA_B: BLOB_A}, "blob hash"),
        ({SHA_A: BLOB_A, SHA_B: BLOB_B, hashlib.sha256(b"x").hexdigest(): b"x"}, "unreferenced blob"),
        ({SHA_A: BLOB_A, SHA_B: BLOB_B, "AB" * 32: b"x"}, "unexpected entry"),
    ],
    ids=["one-missing", "none", "wrong-bytes", "extra", "bad-name"],
)
def test_invalid_blobs_to_build(blob_chain, blobs, reason):
    stored = blob_chain.blocks[2]
    with pytest.raises(ArchiveError) as caught:
        build_zip(stored, blobs)
    assert (caught.value.name, caught.value.height, caught.value.reason) == (blob_chain.name(2), 2, reason)


def test_invalid_tampered_blob(blob_chain, blob_files):
    name = blob_chain.name(2)
    tampered = _rezip(blob_files[name], {f"blobs/{SHA_A}": _flip(BLOB_A, 100)})
    report = _assert_bad(_with(blob_files, (name, tampered)), name, 2, "blob hash", blocks=2)
    assert f"'blobs/{SHA_A}' hashes to {hashlib.sha256(_flip(BLOB_A, 100)).hexdigest()}" == report.detail
    assert report.describe().startswith(f"archive INVALID at height 2 in {name}: blob hash: 'blobs/{SHA_A}'")


def test_invalid_missing_blob(blob_chain, blob_files):
    name = blob_chain.name(2)
    report = _assert_bad(
        _with(blob_files, (name, _rezip(blob_files[name], {f"blobs/{SHA_B}": None}))), name, 2, "missing blob"
    )
    first = decode_transaction(blob_chain.blocks[2].transactions[0])
    assert report.detail == f"no 'blobs/{SHA_B}' for an attachment of transaction {first.hash}"


def test_invalid_file_without_blobs(blob_chain, blob_files):
    """A file as archived before blobs were (the block alone) is reported, not taken as complete."""
    name = blob_chain.name(2)
    data = _rezip(blob_files[name], {f"blobs/{SHA_A}": None, f"blobs/{SHA_B}": None})
    _assert_bad(_with(blob_files, (name, data)), name, 2, "missing blob")


def test_invalid_unreferenced_blob(blob_chain, blob_files):
    """A blob that hashes to its name but that no record of this block lists (here: one of another block)."""
    name = blob_chain.name(2)
    stray = b"a blob of some other block"
    data = _rezip(blob_files[name], {f"blobs/{hashlib.sha256(stray).hexdigest()}": stray})
    _assert_bad(_with(blob_files, (name, data)), name, 2, "unreferenced blob")
    moved = _rezip(blob_files[blob_chain.name(1)], {f"blobs/{SHA_A}": BLOB_A})
    _assert_bad(_with(blob_files, (blob_chain.name(1), moved)), blob_chain.name(1), 1, "unreferenced blob")


@pytest.mark.parametrize("entry", ["blobs/" + "AB" * 32, "blobs/abc", "blobs/" + "a" * 64 + ".bin", "blob/" + "a" * 64])
def test_invalid_blob_entry_name(blob_chain, blob_files, entry):
    name = blob_chain.name(2)
    _assert_bad(_with(blob_files, (name, _rezip(blob_files[name], {entry: b"x"}))), name, 2, "unexpected entry")


@pytest.mark.parametrize(
    ("limits", "reason"),
    [(Limits(max_entry_bytes=len(BLOB_A) - 1), "too large"), (Limits(max_entries=5), "too many entries")],
    ids=["blob-size", "blob-count"],
)
def test_invalid_blobs_over_limits(blob_chain, blob_files, limits, reason):
    name = blob_chain.name(2)
    _assert_read_fails(name, blob_files[name], reason, limits)
    report = verify_archive(blob_files.items(), limits)
    assert (report.valid, report.file, report.height, report.check) == (False, name, 2, reason)


def test_invalid_blob_zip_bomb(blob_chain, blob_files):
    """A blob entry that inflates far past its size is stopped like any other entry."""
    name = blob_chain.name(2)
    zeros = bytes(300 * MIB // 100)
    data = _rezip(blob_files[name], {f"blobs/{hashlib.sha256(zeros).hexdigest()}": zeros})
    _assert_read_fails(name, data, "zip bomb")
