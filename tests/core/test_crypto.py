"""AEAD, user and node keys, password keys and record envelopes."""

from __future__ import annotations

import dataclasses
import os
import pickle
import stat

import pytest
import umbral_pre as umbral
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.crypto import (
    DataKey,
    Envelope,
    KdfParams,
    NodeKey,
    UserKeys,
    aead,
    decrypt,
    derive_key,
    encrypt,
    fingerprint,
    load_node_key,
    open_as_author,
    open_as_patient,
    open_user_keys,
    random_key,
    seal,
    seal_user_keys,
)
from core.encoding import b64e, canonical
from core.errors import DecryptionError, EncodingError, InvalidSignature

KEY = bytes(range(32))
AAD = b"medledger/test/v1"
FAST = KdfParams(time_cost=1, memory_kib=1024, parallelism=1)


def _flip(data: bytes, position: int, mask: int = 0x01) -> bytes:
    mutated = bytearray(data)
    mutated[position] ^= mask
    return bytes(mutated)


def _assert_opaque(info: pytest.ExceptionInfo[DecryptionError]) -> None:
    assert type(info.value) is DecryptionError
    assert str(info.value) == "decryption failed"
    assert info.value.args == ("decryption failed",)


# AEAD


def test_random_key_is_32_fresh_bytes():
    first, second = random_key(), random_key()
    assert len(first) == 32 and len(second) == 32
    assert first != second


def test_encrypt_decrypt_round_trip():
    blob = encrypt(KEY, b"blood pressure 120/80", AAD)
    assert decrypt(KEY, blob, AAD) == b"blood pressure 120/80"


def test_encrypt_layout_is_nonce_ciphertext_tag():
    blob = encrypt(KEY, b"abc", AAD)
    assert len(blob) == aead.NONCE_BYTES + 3 + 16
    assert AESGCM(KEY).decrypt(blob[:12], blob[12:], AAD) == b"abc"


def test_decrypt_accepts_a_blob_made_elsewhere_with_the_same_layout():
    nonce = bytes(12)
    blob = nonce + AESGCM(KEY).encrypt(nonce, b"plain", AAD)
    assert decrypt(KEY, blob, AAD) == b"plain"


def test_encrypt_uses_a_fresh_nonce_each_time():
    assert encrypt(KEY, b"same", AAD) != encrypt(KEY, b"same", AAD)


def test_encrypt_empty_plaintext():
    assert decrypt(KEY, encrypt(KEY, b"", AAD), AAD) == b""


def test_invalid_decrypt_wrong_key():
    blob = encrypt(KEY, b"secret", AAD)
    with pytest.raises(DecryptionError) as info:
        decrypt(bytes(32), blob, AAD)
    _assert_opaque(info)


def test_invalid_decrypt_wrong_aad():
    blob = encrypt(KEY, b"secret", AAD)
    with pytest.raises(DecryptionError) as info:
        decrypt(KEY, blob, AAD + b"x")
    _assert_opaque(info)


@pytest.mark.parametrize("position", [0, 11, 12, 13, -17, -16, -1], ids=lambda p: f"byte{p}")
def test_invalid_decrypt_flipped_byte(position):
    blob = encrypt(KEY, b"secret record body", AAD)
    with pytest.raises(DecryptionError) as info:
        decrypt(KEY, _flip(blob, position), AAD)
    _assert_opaque(info)


@pytest.mark.parametrize("length", [0, 11, 12, 27, 28, 33], ids=lambda n: f"len{n}")
def test_invalid_decrypt_truncated(length):
    blob = encrypt(KEY, b"secret", AAD)
    assert len(blob) == 34
    with pytest.raises(DecryptionError) as info:
        decrypt(KEY, blob[:length], AAD)
    _assert_opaque(info)


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33)], ids=["empty", "16", "31", "33"])
def test_invalid_decrypt_bad_key_length(key):
    with pytest.raises(DecryptionError) as info:
        decrypt(key, encrypt(KEY, b"x", AAD), AAD)
    _assert_opaque(info)


# User keys


def test_generate_user_keys_sizes(doctor_keys):
    assert doctor_keys.rsa_private.key_size == 3072
    assert doctor_keys.rsa_private.public_key().public_numbers().e == 65537
    assert len(doctor_keys.public.umbral) == 33
    assert doctor_keys.public.umbral[0] in (2, 3)


def test_user_key_id_is_sha256_of_rsa_der(doctor_keys):
    assert doctor_keys.key_id == fingerprint(doctor_keys.public.rsa_der)
    assert len(doctor_keys.key_id) == 64
    assert doctor_keys.public.rsa_key().public_numbers() == doctor_keys.rsa_private.public_key().public_numbers()


def test_distinct_users_have_distinct_keys(doctor_keys, patient_keys):
    assert doctor_keys.key_id != patient_keys.key_id
    assert doctor_keys.public.umbral != patient_keys.public.umbral


def test_user_signature_verifies_with_public_keys(doctor_keys, patient_keys):
    signature = doctor_keys.sign(b"message")
    doctor_keys.public.verifier().verify(signature, b"message")
    with pytest.raises(InvalidSignature, match=rf"^bad signature by {doctor_keys.key_id[:16]}$"):
        doctor_keys.public.verifier().verify(signature, b"messagE")
    with pytest.raises(InvalidSignature):
        patient_keys.public.verifier().verify(signature, b"message")


def test_seal_open_user_keys_round_trip(patient_keys):
    wrapping = random_key()
    blob = seal_user_keys(patient_keys, wrapping, b"account-1")
    opened = open_user_keys(blob, wrapping, b"account-1")
    assert isinstance(opened, UserKeys)
    assert opened.public == patient_keys.public
    assert opened.key_id == patient_keys.key_id
    assert opened.umbral_secret.to_be_bytes() == patient_keys.umbral_secret.to_be_bytes()


def test_invalid_open_user_keys_wrong_wrapping_key(patient_keys):
    blob = seal_user_keys(patient_keys, random_key(), b"account-1")
    with pytest.raises(DecryptionError) as info:
        open_user_keys(blob, random_key(), b"account-1")
    _assert_opaque(info)


def test_invalid_open_user_keys_wrong_aad(patient_keys):
    wrapping = random_key()
    blob = seal_user_keys(patient_keys, wrapping, b"account-1")
    with pytest.raises(DecryptionError) as info:
        open_user_keys(blob, wrapping, b"account-2")
    _assert_opaque(info)


def test_invalid_open_user_keys_tampered(patient_keys):
    wrapping = random_key()
    blob = seal_user_keys(patient_keys, wrapping, b"account-1")
    with pytest.raises(DecryptionError) as info:
        open_user_keys(_flip(blob, len(blob) // 2), wrapping, b"account-1")
    _assert_opaque(info)


def _ed25519_der() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    "plain",
    [
        b"not json",
        b"{}",
        b"[]",
        canonical({"rsa": "!!", "umbral": b64e(bytes(32))}),
        canonical({"rsa": b64e(b"not der"), "umbral": b64e(bytes(32))}),
        canonical({"rsa": b64e(_ed25519_der()), "umbral": b64e(umbral.SecretKey.random().to_be_bytes())}),
    ],
    ids=["not-json", "empty-object", "list", "bad-base64", "bad-der", "not-rsa"],
)
def test_invalid_open_user_keys_authentic_but_malformed(plain):
    """Even correctly encrypted garbage gives the one opaque error, not a parser's exception."""
    wrapping = random_key()
    with pytest.raises(DecryptionError) as info:
        open_user_keys(aead.encrypt(wrapping, plain, AAD), wrapping, AAD)
    _assert_opaque(info)


def test_invalid_open_user_keys_bad_umbral_secret(patient_keys):
    rsa_der = patient_keys.rsa_private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    wrapping = random_key()
    plain = canonical({"rsa": b64e(rsa_der), "umbral": b64e(b"\x01" * 31)})
    with pytest.raises(DecryptionError) as info:
        open_user_keys(aead.encrypt(wrapping, plain, AAD), wrapping, AAD)
    _assert_opaque(info)


# Secrets refuse to leak


@pytest.fixture(scope="module")
def secrets(doctor_keys, node_key):
    return {"UserKeys": doctor_keys, "NodeKey": node_key, "DataKey": DataKey(KEY)}


@pytest.mark.parametrize("name", ["UserKeys", "NodeKey", "DataKey"])
def test_secret_repr_and_str_hide_key_material(secrets, name):
    secret = secrets[name]
    assert repr(secret) == f"<{name} (secret)>"
    assert str(secret) == f"<{name} (secret)>"
    assert f"{secret}" == f"<{name} (secret)>"
    assert "secret" in repr([secret])


@pytest.mark.parametrize("name", ["UserKeys", "NodeKey", "DataKey"])
def test_invalid_hash_of_secret(secrets, name):
    with pytest.raises(TypeError, match="unhashable"):
        hash(secrets[name])


@pytest.mark.parametrize("name", ["UserKeys", "NodeKey", "DataKey"])
def test_invalid_pickle_of_secret(secrets, name):
    with pytest.raises(TypeError, match=rf"^{name} holds secrets and cannot be pickled$"):
        pickle.dumps(secrets[name])


def test_repr_of_data_key_has_no_key_bytes():
    key = bytes.fromhex("ab" * 32)
    text = repr(DataKey(key)) + str(DataKey(key))
    assert "ab" * 4 not in text and "abab" not in text
    assert str(key) not in text


# Record envelopes


@pytest.fixture(scope="module")
def sealed(patient_keys, doctor_keys):
    body = b'{"diagnosis":"J45.909"}'
    attachments = [(b"x-ray image bytes", b"att/0"), (b"lab report pdf", b"att/1")]
    envelope, blobs = seal(body, b"body/rec-1", patient_keys.public, doctor_keys.public, attachments)
    return envelope, blobs


def test_seal_opens_for_patient_and_author_with_the_same_key(sealed, patient_keys, doctor_keys):
    envelope, blobs = sealed
    as_patient = open_as_patient(envelope, patient_keys)
    as_author = open_as_author(envelope, doctor_keys)
    for key in (as_patient, as_author):
        assert key.open(envelope.body, b"body/rec-1") == b'{"diagnosis":"J45.909"}'
        assert key.open(blobs[0], b"att/0") == b"x-ray image bytes"
        assert key.open(blobs[1], b"att/1") == b"lab report pdf"


def test_seal_holds_nothing_in_clear(sealed):
    envelope, blobs = sealed
    assert b"J45.909" not in envelope.body
    assert all(b"x-ray" not in blob and b"lab report" not in blob for blob in blobs)
    assert len(envelope.author_key) == 384


def test_seal_without_attachments(patient_keys, doctor_keys):
    envelope, blobs = seal(b"body", b"aad", patient_keys.public, doctor_keys.public)
    assert blobs == []
    assert open_as_patient(envelope, patient_keys).open(envelope.body, b"aad") == b"body"


def test_seal_uses_a_fresh_data_key_each_time(patient_keys, doctor_keys):
    first, _ = seal(b"body", b"aad", patient_keys.public, doctor_keys.public)
    second, _ = seal(b"body", b"aad", patient_keys.public, doctor_keys.public)
    assert first.capsule != second.capsule
    with pytest.raises(DecryptionError):
        open_as_patient(first, patient_keys).open(second.body, b"aad")


def test_invalid_open_as_patient_by_stranger(sealed, stranger_keys):
    with pytest.raises(DecryptionError) as info:
        open_as_patient(sealed[0], stranger_keys)
    _assert_opaque(info)


def test_invalid_open_as_patient_by_author(sealed, doctor_keys):
    with pytest.raises(DecryptionError) as info:
        open_as_patient(sealed[0], doctor_keys)
    _assert_opaque(info)


def test_invalid_open_as_author_by_stranger(sealed, stranger_keys):
    with pytest.raises(DecryptionError) as info:
        open_as_author(sealed[0], stranger_keys)
    _assert_opaque(info)


def test_invalid_open_as_author_by_patient(sealed, patient_keys):
    with pytest.raises(DecryptionError) as info:
        open_as_author(sealed[0], patient_keys)
    _assert_opaque(info)


CAPSULE_POSITIONS = [0, 1, 2, 5, 10, 20, 33, 40, 50, 60, 70, 80, 90, 98, 104]


@pytest.mark.parametrize("position", CAPSULE_POSITIONS, ids=lambda p: f"byte{p}")
def test_invalid_open_as_patient_tampered_capsule(sealed, patient_keys, position):
    envelope = sealed[0]
    assert len(envelope.capsule) == 105
    tampered = dataclasses.replace(envelope, capsule=_flip(envelope.capsule, position))
    with pytest.raises(DecryptionError) as info:
        open_as_patient(tampered, patient_keys)
    _assert_opaque(info)


@pytest.mark.parametrize("capsule", [b"", b"\x00" * 105, b"junk"], ids=["empty", "zeros", "junk"])
def test_invalid_open_as_patient_garbage_capsule(sealed, patient_keys, capsule):
    with pytest.raises(DecryptionError) as info:
        open_as_patient(dataclasses.replace(sealed[0], capsule=capsule), patient_keys)
    _assert_opaque(info)


@pytest.mark.parametrize("position", [0, 12, 30, -17, -1], ids=lambda p: f"byte{p}")
def test_invalid_open_as_patient_tampered_patient_key(sealed, patient_keys, position):
    envelope = sealed[0]
    tampered = dataclasses.replace(envelope, patient_key=_flip(envelope.patient_key, position))
    with pytest.raises(DecryptionError) as info:
        open_as_patient(tampered, patient_keys)
    _assert_opaque(info)


@pytest.mark.parametrize("length", [0, 10, -1], ids=["empty", "short", "minus-one"])
def test_invalid_open_as_patient_truncated_patient_key(sealed, patient_keys, length):
    envelope = sealed[0]
    tampered = dataclasses.replace(envelope, patient_key=envelope.patient_key[:length])
    with pytest.raises(DecryptionError) as info:
        open_as_patient(tampered, patient_keys)
    _assert_opaque(info)


@pytest.mark.parametrize("position", [0, 1, 100, 200, 383], ids=lambda p: f"byte{p}")
def test_invalid_open_as_author_tampered_author_key(sealed, doctor_keys, position):
    envelope = sealed[0]
    tampered = dataclasses.replace(envelope, author_key=_flip(envelope.author_key, position))
    with pytest.raises(DecryptionError) as info:
        open_as_author(tampered, doctor_keys)
    _assert_opaque(info)


@pytest.mark.parametrize("author_key", [b"", b"\x00" * 384, b"\x01" * 100], ids=["empty", "zeros", "short"])
def test_invalid_open_as_author_garbage_author_key(sealed, doctor_keys, author_key):
    with pytest.raises(DecryptionError) as info:
        open_as_author(dataclasses.replace(sealed[0], author_key=author_key), doctor_keys)
    _assert_opaque(info)


@pytest.mark.parametrize("position", [0, 12, 20, -1], ids=lambda p: f"byte{p}")
def test_invalid_open_tampered_body(sealed, patient_keys, position):
    envelope = sealed[0]
    key = open_as_patient(envelope, patient_keys)
    with pytest.raises(DecryptionError) as info:
        key.open(_flip(envelope.body, position), b"body/rec-1")
    _assert_opaque(info)


def test_invalid_open_body_with_another_records_aad(sealed, patient_keys):
    envelope = sealed[0]
    with pytest.raises(DecryptionError) as info:
        open_as_patient(envelope, patient_keys).open(envelope.body, b"body/rec-2")
    _assert_opaque(info)


def test_invalid_open_swapped_attachments(sealed, patient_keys):
    envelope, blobs = sealed
    key = open_as_patient(envelope, patient_keys)
    for blob, wrong_aad in ((blobs[0], b"att/1"), (blobs[1], b"att/0"), (blobs[0], b"body/rec-1")):
        with pytest.raises(DecryptionError) as info:
            key.open(blob, wrong_aad)
        _assert_opaque(info)


def test_invalid_open_attachment_as_body(sealed, patient_keys):
    envelope, blobs = sealed
    with pytest.raises(DecryptionError) as info:
        open_as_patient(
            Envelope(blobs[0], envelope.capsule, envelope.patient_key, envelope.author_key), patient_keys
        ).open(blobs[0], b"body/rec-1")
    _assert_opaque(info)


def test_invalid_seal_for_bad_patient_umbral_key(doctor_keys):
    bad = dataclasses.replace(doctor_keys.public, umbral=b"\x02" + b"\xff" * 32)
    with pytest.raises(EncodingError, match=r"^not an Umbral public key$"):
        seal(b"body", b"aad", bad, doctor_keys.public)


# Node keys


def test_node_key_signs_and_verifies(node_key):
    signature = node_key.sign(b"header")
    assert len(signature) == 64
    node_key.verifier().verify(signature, b"header")
    assert node_key.verifier().kind == "ed25519"
    assert node_key.key_id == fingerprint(node_key.public_raw)
    with pytest.raises(InvalidSignature):
        node_key.verifier().verify(signature, b"headeR")


@pytest.mark.parametrize("passphrase", [None, b"correct horse"], ids=["plain", "encrypted"])
def test_node_key_save_load_round_trip(tmp_path, node_key, passphrase):
    path = tmp_path / "keys" / "node.pem"
    node_key.save(path, passphrase)
    loaded = load_node_key(path, passphrase)
    assert loaded.node_id == "node-1"
    assert loaded.public_raw == node_key.public_raw
    node_key.verifier().verify(loaded.sign(b"m"), b"m")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_node_key_file_is_encrypted_with_a_passphrase(tmp_path, node_key):
    path = tmp_path / "node.pem"
    node_key.save(path, b"pw")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert path.read_bytes().startswith(b"# node-id: node-1\n")


def test_invalid_load_node_key_wrong_passphrase(tmp_path, node_key):
    path = tmp_path / "node.pem"
    node_key.save(path, b"right")
    with pytest.raises(DecryptionError) as info:
        load_node_key(path, b"wrong")
    _assert_opaque(info)


def test_invalid_load_node_key_missing_passphrase(tmp_path, node_key):
    path = tmp_path / "node.pem"
    node_key.save(path, b"right")
    with pytest.raises(DecryptionError):
        load_node_key(path, None)


def test_invalid_load_node_key_not_a_node_key_file(tmp_path):
    path = tmp_path / "other.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(EncodingError, match=r"is not a MedLedger node key$"):
        load_node_key(path, None)


def test_invalid_node_key_save_refuses_to_overwrite(tmp_path, node_key):
    path = tmp_path / "node.pem"
    node_key.save(path, None)
    with pytest.raises(FileExistsError):
        node_key.save(path, None)


# Password keys


def test_derive_key_is_deterministic():
    salt = bytes(16)
    first = derive_key("hunter2", salt, FAST)
    assert len(first) == 32
    assert derive_key("hunter2", salt, FAST) == first


def test_derive_key_depends_on_salt_password_and_params():
    salt = bytes(16)
    base = derive_key("hunter2", salt, FAST)
    assert derive_key("hunter2", b"\x01" + bytes(15), FAST) != base
    assert derive_key("hunter3", salt, FAST) != base
    assert derive_key("hunter2", salt, dataclasses.replace(FAST, time_cost=2)) != base


def test_derived_key_wraps_user_keys(patient_keys):
    wrapping = derive_key("pässword", b"salt-of-16-bytes", FAST)
    blob = seal_user_keys(patient_keys, wrapping, b"account-1")
    assert open_user_keys(blob, derive_key("pässword", b"salt-of-16-bytes", FAST), b"account-1").public == (
        patient_keys.public
    )
    with pytest.raises(DecryptionError):
        open_user_keys(blob, derive_key("password", b"salt-of-16-bytes", FAST), b"account-1")


def test_kdf_params_dict_round_trip():
    params = KdfParams(time_cost=4, memory_kib=2048, parallelism=3)
    assert params.to_dict() == {"t": 4, "m": 2048, "p": 3}
    assert KdfParams.from_dict(params.to_dict()) == params
    assert KdfParams().to_dict() == {"t": 3, "m": 65536, "p": 2}


def test_node_key_matches_rfc8032_test_1():
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = NodeKey("node-1", ed25519.Ed25519PrivateKey.from_private_bytes(seed))
    assert key.public_raw.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
