"""Archive file names: `<height>-<block hash>.zip`, one block per file.

The name is the index of the archive: a reader finds a height without opening
anything, and `read_zip` checks that the file's contents agree with its name.
"""

from __future__ import annotations

import re

from core.errors import ArchiveError

NAME_RE = re.compile(r"(0|[1-9][0-9]{0,18})-([0-9a-f]{64})\.zip")
MAX_HEIGHT = 2**63 - 1

__all__ = ["archive_name", "parse_name"]


def archive_name(height: int, block_hash: str) -> str:
    """The file name for the block at `height` with hash `block_hash`: f"{height}-{block_hash}.zip".

    Guarantees `parse_name(archive_name(h, x)) == (h, x)`. Raises ArchiveError
    (reason "bad name") for a negative or too large height, or a hash that is not
    64 lowercase hex digits.
    """
    name = f"{height}-{block_hash}.zip"
    if isinstance(height, bool) or not isinstance(height, int) or not 0 <= height <= MAX_HEIGHT:
        raise ArchiveError(name, None, "bad name", "height must be an integer in [0, 2^63)")
    if not isinstance(block_hash, str) or not NAME_RE.fullmatch(f"0-{block_hash}.zip"):
        raise ArchiveError(name, height, "bad name", "block hash must be 64 lowercase hex digits")
    return name


def parse_name(name: str) -> tuple[int, str]:
    """(height, block hash) from an archive file name.

    Accepts exactly what `archive_name` produces: a decimal height without
    leading zeros, "-", 64 lowercase hex digits, ".zip"; no directories, no other
    dots, no whitespace. Raises ArchiveError (height None, reason "bad name") for
    anything else.
    """
    match = NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None or int(match[1]) > MAX_HEIGHT:
        raise ArchiveError(str(name), None, "bad name", "expected <height>-<64 hex block hash>.zip")
    return int(match[1]), match[2]
