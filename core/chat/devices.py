"""A peer's devices: what changed since a client last looked (docs/chat-protocol.md, "Several devices").

A patient may use several devices, each with its own identity key on the ledger. A client
remembers, per peer, the devices it has sealed for (device id -> key fingerprint) and
compares them with the peer's current devices on the ledger: a new device is shown to the
user (the new-device notice) before anything is sealed for it, a device with another key
gets the changed-key warning, and a device no longer listed (removed, its key revoked) is
never sealed for again. pwa/chat-crypto.js `deviceChanges` applies the same rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from core.errors import MalformedChatMessage

FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")
DEVICE_RE = re.compile(r"[A-Za-z0-9_-]{0,22}")


@dataclass(frozen=True)
class DeviceChanges:
    """Device ids, each sorted: `added` (new devices: the notice), `changed` (a device's key
    changed: the changed-key warning), `removed` (no longer current: never sealed for again)."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]


def _checked(devices: Mapping[str, str], name: str) -> Mapping[str, str]:
    if not isinstance(devices, Mapping):
        raise MalformedChatMessage(f"{name} maps device ids to key fingerprints")
    for device, fingerprint in devices.items():
        ok_device = isinstance(device, str) and DEVICE_RE.fullmatch(device)
        if not ok_device or not isinstance(fingerprint, str) or not FINGERPRINT_RE.fullmatch(fingerprint):
            raise MalformedChatMessage(f"{name} maps device ids to key fingerprints")
    return devices


def device_changes(known: Mapping[str, str], current: Mapping[str, str]) -> DeviceChanges:
    """Compare the devices a client knows for a peer with the peer's current ones (both map a
    device id to its key's SHA-256 fingerprint, hex).

    A device that only took a device id (the same key, first registered without one, "") is
    neither added nor removed. Raises MalformedChatMessage for anything but such mappings.
    """
    known, current = _checked(known, "known"), _checked(current, "current")
    known_keys = set(known.values())
    current_keys = set(current.values())
    added = sorted(d for d, fp in current.items() if d not in known and fp not in known_keys)
    changed = sorted(d for d, fp in current.items() if d in known and known[d] != fp)
    removed = sorted(d for d, fp in known.items() if d not in current and fp not in current_keys)
    return DeviceChanges(tuple(added), tuple(changed), tuple(removed))
