"""The block archive: one deterministic zip per final block, and checking a chain from those files alone.

Pure functions over bytes (no network, no database); the FTP side lives in the
portal. Format and rejection reasons: docs/archive.md.
"""

from core.archive.blobs import ArchivedBlock, attachment_hashes
from core.archive.bundle import build_zip, read_zip
from core.archive.name import archive_name, parse_name
from core.archive.unzip import Limits
from core.archive.verify import ArchiveReport, blocks_for_restore, verify_archive
from core.errors import ArchiveError

__all__ = [
    "ArchiveError",
    "ArchiveReport",
    "ArchivedBlock",
    "Limits",
    "archive_name",
    "attachment_hashes",
    "blocks_for_restore",
    "build_zip",
    "parse_name",
    "read_zip",
    "verify_archive",
]
