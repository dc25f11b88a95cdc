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


class InvalidProfile(CoreError):
    """A symptom profile or its token form is malformed, or was tokenised under another key."""


class ChatError(CoreError):
    """The chat protocol refused a handshake message, an envelope or a call.

    `code` is a short stable name, the same one pwa/chat-crypto.js gives its
    ChatError, so a client can show the user a fixed message per case
    (docs/chat-protocol.md lists them).
    """

    code = "chat_error"


class MalformedChatMessage(ChatError):
    """A handshake message or envelope is not well formed: type, version, fields, sizes or encodings."""

    code = "malformed"


class WrongConversation(ChatError):
    """A handshake message names a conversation other than the one this handshake is for."""

    code = "wrong_conversation"


class IdentityKeyMismatch(ChatError):
    """A peer's identity key is not the one registered on the ledger (or a hello is addressed to another key)."""

    code = "identity_mismatch"


class HandshakeSignatureError(ChatError, InvalidSignature):
    """A handshake signature does not verify under the peer's registered identity key."""

    code = "bad_signature"


class KeyConfirmationError(ChatError):
    """A key confirmation MAC is wrong: the two sides did not derive the same keys over the same transcript."""

    code = "confirmation_failed"


class UnexpectedHandshakeMessage(ChatError):
    """A handshake message arrived in a state that does not expect it (replayed, repeated or out of turn)."""

    code = "unexpected_message"


class ReplayedMessage(ChatError):
    """A chat envelope's counter was already accepted: a replay."""

    code = "replayed"


class ReorderedMessage(ChatError):
    """A chat envelope's counter is ahead of the next expected one: reordered or a message is missing."""

    code = "out_of_order"


class SessionExhausted(ChatError):
    """A session's send counter reached its limit; a new handshake is needed."""

    code = "exhausted"


class ChatDecryptionError(ChatError, DecryptionError):
    """A chat envelope failed authentication. Opaque on purpose, like DecryptionError."""

    code = "decryption_failed"
