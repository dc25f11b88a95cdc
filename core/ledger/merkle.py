"""Merkle root over transaction hashes (RFC 6962 shape, domain-separated leaves and nodes).

Leaf = SHA-256(0x00 || tx hash), node = SHA-256(0x01 || left || right); a list of
n > 1 items splits at the largest power of two below n, so no item is ever
duplicated (the ambiguity behind CVE-2012-2459 cannot arise). The root of an empty
body is SHA-256 of the empty string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _root(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _root(leaves[:split]) + _root(leaves[split:])).digest()


def merkle_root(tx_hashes: Sequence[str]) -> str:
    """Hex Merkle root of hex transaction hashes, in order."""
    if not tx_hashes:
        return hashlib.sha256(b"").hexdigest()
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest() for h in tx_hashes]
    return _root(leaves).hex()
