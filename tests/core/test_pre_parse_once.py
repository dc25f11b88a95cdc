"""A granted read parses the record's capsule and the public keys once, however many fragments."""

from __future__ import annotations

import pytest

from core.crypto import UserKeys, seal
from core.errors import GrantError
from core.pre import Threshold, make_key_fragments, open_reencrypted, reencrypt
from core.pre import grant as grant_module


def test_capsule_is_parsed_once_per_read(patient_keys: UserKeys, doctor_keys: UserKeys) -> None:
    envelope, _ = seal(b"body", b"aad", patient_keys.public, doctor_keys.public)
    patient, doctor = patient_keys.public.umbral, doctor_keys.public.umbral
    fragments = make_key_fragments(patient_keys, doctor, Threshold(2, 3))
    grant_module._parse_capsule.cache_clear()
    capsule_fragments = [reencrypt(envelope.capsule, f, patient, doctor) for f in fragments[:2]]
    open_reencrypted(envelope, doctor_keys.umbral_secret, patient, capsule_fragments)
    info = grant_module._parse_capsule.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_invalid_capsule_is_refused_every_time(patient_keys: UserKeys, doctor_keys: UserKeys) -> None:
    patient, doctor = patient_keys.public.umbral, doctor_keys.public.umbral
    fragment = make_key_fragments(patient_keys, doctor, Threshold(1, 1))[0]
    for _ in range(2):
        with pytest.raises(GrantError, match="malformed capsule"):
            reencrypt(b"\x00" * 98, fragment, patient, doctor)
