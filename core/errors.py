"""One exception root for everything `core` raises."""

from __future__ import annotations


class CoreError(Exception):
    """Base class of every error raised by `core`."""


class EncodingError(CoreError):
    """Bytes are not in the one canonical encoding."""


class InvalidSignature(CoreError):
    """A signature does not verify under the claimed key."""


class DecryptionError(CoreError):
    """A ciphertext could not be opened.

    Deliberately carries no detail: wrong key, tampered ciphertext and wrong
    associated data all look the same to the caller.
    """

    def __init__(self) -> None:
        super().__init__("decryption failed")


class InvalidTransaction(CoreError):
    """A transaction is malformed, unsigned, or signed by an unknown key."""


class InvalidBlock(CoreError):
    """A block fails one named validation check at one height."""

    def __init__(self, height: int, check: str, detail: str) -> None:
        super().__init__(f"block {height}: {check}: {detail}")
        self.height = height
        self.check = check
        self.detail = detail


class GrantError(CoreError):
    """A grant's key fragment or a capsule fragment is forged, tampered or mismatched."""


class InvalidCode(CoreError):
    """A clinical code (ICD-10-CM, HPO) is unknown or malformed."""


class ArchiveError(CoreError):
    """An archive file cannot be trusted: a bad name, an unreadable or hostile zip, or a block that does not fit.

    `name` is the file's name, `height` the block height its name gives (None when
    the name does not parse), `reason` one short fixed phrase from docs/archive.md
    (or a chain check), `detail` the particulars.
    """

    def __init__(self, name: str, height: int | None, reason: str, detail: str = "") -> None:
        where = name or "archive"
        if height is not None:
            where += f" (height {height})"
        super().__init__(f"{where}: {reason}" + (f": {detail}" if detail else ""))
        self.name = name
        self.height = height
        self.reason = reason
        self.detail = detail
