"""Proxy re-encryption grants: fragments, re-encryption, opening, and every forgery rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.crypto import Envelope, UserKeys, open_as_patient, seal
from core.errors import DecryptionError, GrantError
from core.pre import (
    EmergencyKey,
    Threshold,
    check_capsule_fragment,
    make_key_fragments,
    open_reencrypted,
    reencrypt,
)

BODY_AAD = b"record-1"


@pytest.fixture(scope="module")
def sealed(patient_keys: UserKeys, doctor_keys: UserKeys) -> Envelope:
    envelope, _ = seal(b"the record", BODY_AAD, patient_keys.public, doctor_keys.public)
    return envelope


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]


ONE_OF_ONE = Threshold()


def grant(patient: UserKeys, receiver: UserKeys, threshold: Threshold = ONE_OF_ONE) -> list[bytes]:
    return make_key_fragments(patient, receiver.public.umbral, threshold)


def test_granted_receiver_opens_the_data_key(patient_keys: UserKeys, doctor_keys: UserKeys, sealed: Envelope) -> None:
    fragments = grant(patient_keys, doctor_keys)
    capsule_fragments = [
        reencrypt(sealed.capsule, f, patient_keys.public.umbral, doctor_keys.public.umbral) for f in fragments
    ]
    key = open_reencrypted(sealed, doctor_keys.umbral_secret, patient_keys.public.umbral, capsule_fragments)
    assert key.open(sealed.body, BODY_AAD) == b"the record"
    # the same data key the patient gets
    assert open_as_patient(sealed, patient_keys).open(sealed.body, BODY_AAD) == b"the record"


def test_threshold_two_of_three(patient_keys: UserKeys, doctor_keys: UserKeys, sealed: Envelope) -> None:
    fragments = grant(patient_keys, doctor_keys, Threshold(2, 3))
    assert len(fragments) == 3
    cfrags = [reencrypt(sealed.capsule, f, patient_keys.public.umbral, doctor_keys.public.umbral) for f in fragments]
    for pair in ([0, 1], [1, 2], [0, 2]):
        key = open_reencrypted(sealed, doctor_keys.umbral_secret, patient_keys.public.umbral, [cfrags[i] for i in pair])
        assert key.open(sealed.body, BODY_AAD) == b"the record"
    with pytest.raises(DecryptionError):
        open_reencrypted(sealed, doctor_keys.umbral_secret, patient_keys.public.umbral, cfrags[:1])


def test_fragments_verified_by_the_proxy_step_open_without_a_second_check(
    patient_keys: UserKeys, doctor_keys: UserKeys, stranger_keys: UserKeys, sealed: Envelope
) -> None:
    """`check_capsule_fragment` hands back what it verified; `open_reencrypted` takes it as it is,
    but only for the capsule, patient and receiver it was verified for."""
    patient, doctor = patient_keys.public.umbral, doctor_keys.public.umbral
    (fragment,) = grant(patient_keys, doctor_keys)
    cfrag = reencrypt(sealed.capsule, fragment, patient, doctor)
    verified = check_capsule_fragment(sealed.capsule, cfrag, patient, doctor)
    assert open_reencrypted(sealed, doctor_keys.umbral_secret, patient, [verified]).open(sealed.body, BODY_AAD) == (
        b"the record"
    )
    with pytest.raises(GrantError, match="verified for another capsule or receiver"):
        open_reencrypted(sealed, stranger_keys.umbral_secret, patient, [verified])
    other, _ = seal(b"another record", BODY_AAD, patient_keys.public, doctor_keys.public)
    with pytest.raises(GrantError, match="verified for another capsule or receiver"):
        open_reencrypted(other, doctor_keys.umbral_secret, patient, [verified])
    with pytest.raises(GrantError, match="does not verify"):
        check_capsule_fragment(sealed.capsule, flip(cfrag, 40), patient, doctor)


@pytest.mark.parametrize(("m", "n"), [(0, 1), (2, 1), (1, 256)])
def test_invalid_threshold(m: int, n: int) -> None:
    with pytest.raises(GrantError, match="threshold must satisfy"):
        Threshold(m, n)


def test_invalid_fragment_for_another_receiver(
    patient_keys: UserKeys, doctor_keys: UserKeys, stranger_keys: UserKeys, sealed: Envelope
) -> None:
    """The proxy refuses to use a doctor's fragment to re-encrypt for a third party."""
    [fragment] = grant(patient_keys, doctor_keys)
    with pytest.raises(GrantError, match="key fragment does not verify"):
        reencrypt(sealed.capsule, fragment, patient_keys.public.umbral, stranger_keys.public.umbral)


def test_third_party_cannot_open_capsule_fragments(
    patient_keys: UserKeys, doctor_keys: UserKeys, stranger_keys: UserKeys, sealed: Envelope
) -> None:
    [fragment] = grant(patient_keys, doctor_keys)
    cfrag = reencrypt(sealed.capsule, fragment, patient_keys.public.umbral, doctor_keys.public.umbral)
    with pytest.raises(GrantError, match="capsule fragment does not verify"):
        open_reencrypted(sealed, stranger_keys.umbral_secret, patient_keys.public.umbral, [cfrag])


def test_invalid_forged_fragment_from_another_patient(
    patient_keys: UserKeys, doctor_keys: UserKeys, stranger_keys: UserKeys, sealed: Envelope
) -> None:
    """A fragment signed by someone else cannot pass as the patient's."""
    [forged] = grant(stranger_keys, doctor_keys)
    with pytest.raises(GrantError, match="key fragment does not verify"):
        reencrypt(sealed.capsule, forged, patient_keys.public.umbral, doctor_keys.public.umbral)


@pytest.mark.parametrize("position", [0, 1, 33, 64, 100, 200, 309])
def test_invalid_tampered_key_fragment(
    patient_keys: UserKeys, doctor_keys: UserKeys, sealed: Envelope, position: int
) -> None:
    [fragment] = grant(patient_keys, doctor_keys)
    with pytest.raises(GrantError):
        reencrypt(sealed.capsule, flip(fragment, position), patient_keys.public.umbral, doctor_keys.public.umbral)


@pytest.mark.parametrize("position", [0, 1, 40, 98, 150, 250, 380])
def test_invalid_tampered_capsule_fragment(
    patient_keys: UserKeys, doctor_keys: UserKeys, sealed: Envelope, position: int
) -> None:
    [fragment] = grant(patient_keys, doctor_keys)
    cfrag = reencrypt(sealed.capsule, fragment, patient_keys.public.umbral, doctor_keys.public.umbral)
    with pytest.raises(GrantError, match="capsule fragment does not verify"):
        open_reencrypted(sealed, doctor_keys.umbral_secret, patient_keys.public.umbral, [flip(cfrag, position)])


def test_invalid_capsule_fragment_of_another_record(
    patient_keys: UserKeys, doctor_keys: UserKeys, sealed: Envelope
) -> None:
    other, _ = seal(b"another record", b"record-2", patient_keys.public, doctor_keys.public)
    [fragment] = grant(patient_keys, doctor_keys)
    cfrag = reencrypt(other.capsule, fragment, patient_keys.public.umbral, doctor_keys.public.umbral)
    with pytest.raises(GrantError, match="capsule fragment does not verify"):
        open_reencrypted(sealed, doctor_keys.umbral_secret, patient_keys.public.umbral, [cfrag])


def test_invalid_malformed_inputs(patient_keys: UserKeys, doctor_keys: UserKeys, sealed: Envelope) -> None:
    [fragment] = grant(patient_keys, doctor_keys)
    with pytest.raises(GrantError, match="malformed capsule"):
        reencrypt(b"junk", fragment, patient_keys.public.umbral, doctor_keys.public.umbral)
    with pytest.raises(GrantError, match="not an Umbral public key"):
        reencrypt(sealed.capsule, fragment, b"\x02" + bytes(32), doctor_keys.public.umbral)
    with pytest.raises(GrantError):
        reencrypt(sealed.capsule, b"", patient_keys.public.umbral, doctor_keys.public.umbral)


def test_emergency_key_file(tmp_path: Path, patient_keys: UserKeys, sealed: Envelope) -> None:
    plain = EmergencyKey.load_or_create(tmp_path / "plain.key", None)
    assert EmergencyKey.load_or_create(tmp_path / "plain.key", None).public == plain.public
    locked = EmergencyKey.load_or_create(tmp_path / "locked.key", b"passphrase")
    assert (tmp_path / "locked.key").stat().st_mode & 0o777 == 0o600
    assert locked.secret.to_be_bytes() not in (tmp_path / "locked.key").read_bytes()
    assert EmergencyKey.load_or_create(tmp_path / "locked.key", b"passphrase").public == locked.public
    with pytest.raises(DecryptionError):
        EmergencyKey.load_or_create(tmp_path / "locked.key", b"wrong")
    assert "secret" in repr(locked) and locked.secret.to_be_bytes().hex() not in repr(locked)
    # break-glass: the patient's fragment to the emergency key lets the hospital open the record
    [fragment] = make_key_fragments(patient_keys, locked.public, Threshold())
    cfrag = reencrypt(sealed.capsule, fragment, patient_keys.public.umbral, locked.public)
    key = open_reencrypted(sealed, locked.secret, patient_keys.public.umbral, [cfrag])
    assert key.open(sealed.body, BODY_AAD) == b"the record"
