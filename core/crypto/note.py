"""Short sealed notes (a request's reason, an emergency's reason) for a few named readers.

Each reader gets the note encrypted to their Umbral public key. The note is bound to
the id of what it belongs to, so it cannot be moved onto another request.
"""

from __future__ import annotations

from collections.abc import Mapping

import umbral_pre as umbral

from core.encoding import b64d, b64e, canonical, decode_canonical
from core.errors import CoreError, DecryptionError, EncodingError


def seal_note(text: str, subject: str, readers: Mapping[str, bytes]) -> bytes:
    """Encrypt `text` (about `subject`) for each reader label -> Umbral public key."""
    plain = canonical({"subject": subject, "text": text})
    sealed = {}
    for label, public in readers.items():
        capsule, ciphertext = umbral.encrypt(umbral.PublicKey.from_compressed_bytes(public), plain)
        sealed[label] = {"capsule": b64e(bytes(capsule)), "ct": b64e(ciphertext)}
    return canonical(sealed)


def open_note(blob: bytes, subject: str, label: str, secret: umbral.SecretKey) -> str:
    """The note's text for reader `label`; raises DecryptionError if it does not open or belongs
    to another subject."""
    try:
        entry = decode_canonical(blob)[label]
        capsule = umbral.Capsule.from_bytes(b64d(entry["capsule"]))
        note = decode_canonical(umbral.decrypt_original(secret, capsule, b64d(entry["ct"])))
    except (CoreError, EncodingError, KeyError, TypeError, ValueError) as exc:
        raise DecryptionError() from exc
    if note.get("subject") != subject or not isinstance(note.get("text"), str):
        raise DecryptionError()
    return note["text"]
