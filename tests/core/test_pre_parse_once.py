"""A record's capsule is parsed once: by a granted read however many fragments, and by the
patient's reads and lists after the first."""

from __future__ import annotations

import pytest

from core.crypto import UserKeys, open_as_patient, seal
from core.crypto.envelope import parse_capsule
from core.errors import GrantError
from core.pre import Threshold, make_key_fragments, open_reencrypted, reencrypt


def test_capsule_is_parsed_once_per_read(patient_keys: UserKeys, doctor_keys: UserKeys) -> None:
    envelope, _ = seal(b"body", b"aad", patient_keys.public, doctor_keys.public)
    patient, doctor = patient_keys.public.umbral, doctor_keys.public.umbral
    fragments = make_key_fragments(patient_keys, doctor, Threshold(2, 3))
    parse_capsule.cache_clear()
    capsule_fragments = [reencrypt(envelope.capsule, f, patient, doctor) for f in fragments[:2]]
    open_reencrypted(envelope, doctor_keys.umbral_secret, patient, capsule_fragments)
    info = parse_capsule.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_invalid_capsule_is_refused_every_time(patient_keys: UserKeys, doctor_keys: UserKeys) -> None:
    patient, doctor = patient_keys.public.umbral, doctor_keys.public.umbral
    fragment = make_key_fragments(patient_keys, doctor, Threshold(1, 1))[0]
    for _ in range(2):
        with pytest.raises(GrantError, match="malformed capsule"):
            reencrypt(b"\x00" * 98, fragment, patient, doctor)


def test_the_patients_reads_share_the_parsed_capsule(patient_keys: UserKeys, doctor_keys: UserKeys) -> None:
    envelope, _ = seal(b"body", b"aad", patient_keys.public, doctor_keys.public)
    parse_capsule.cache_clear()
    for _ in range(3):
        assert open_as_patient(envelope, patient_keys).open(envelope.body, b"aad") == b"body"
    info = parse_capsule.cache_info()
    assert (info.misses, info.hits) == (1, 2)
