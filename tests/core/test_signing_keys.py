"""Users' Ed25519 signing keys (docs/ledger.md, *Users' signing keys*): a new account registers one
beside its RSA key and signs with it; an account made before them signs with RSA as before; the
ledger takes each signature only from the keys the account registered."""

from __future__ import annotations

import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from core.crypto import NodeKey, UserKeys, generate_user_keys
from core.crypto.keys import open_user_keys, seal_user_keys
from core.errors import InvalidSignature, InvalidTransaction
from core.ledger import KeyRegistry, key_payload, sign_transaction
from tests.core.test_ledger import _genesis_payload

TS = 1_700_000_000_000
ACCESS = {"entry": str(uuid.uuid4()), "record": str(uuid.uuid4()), "part": -1, "mode": "author", "grant": None}


def legacy(keys: UserKeys) -> UserKeys:
    """The same account as one made before signing keys: RSA and Umbral only."""
    return UserKeys(keys.rsa_private, keys.umbral_secret)


def registered(node_key: NodeKey, *accounts: UserKeys) -> KeyRegistry:
    registry = KeyRegistry()
    registry.apply(sign_transaction("genesis", _genesis_payload(node_key), node_key, TS), 0)
    for keys in accounts:
        public = keys.public
        payload = key_payload(str(uuid.uuid4()), "doctor", public.rsa_der, public.umbral, node_key, public.sign)
        registry.apply(sign_transaction("key", payload, keys, TS + 1), 1)
    return registry


def test_a_new_account_signs_with_its_ed25519_key(node_key: NodeKey) -> None:
    keys = generate_user_keys()
    registry = registered(node_key, keys)
    tx = sign_transaction("access", ACCESS, keys, TS + 2)
    assert len(tx.signature) == 64  # Ed25519, not the 384 bytes of RSA-PSS-3072
    registry.copy().apply(tx, 2)
    keys.public.verifier().verify(tx.signature, tx.signing_bytes())
    # Its RSA key still counts: the account's key registration was endorsed with both.
    rsa_signed = sign_transaction("access", ACCESS, legacy(keys), TS + 3)
    assert len(rsa_signed.signature) == 384
    registry.copy().apply(rsa_signed, 2)


def test_an_account_made_before_signing_keys_signs_with_rsa(node_key: NodeKey) -> None:
    keys = legacy(generate_user_keys())
    assert keys.public.sign is None
    registry = registered(node_key, keys)
    tx = sign_transaction("access", ACCESS, keys, TS + 2)
    assert len(tx.signature) == 384
    registry.copy().apply(tx, 2)


def test_only_the_registered_signing_key_is_taken(node_key: NodeKey) -> None:
    keys = generate_user_keys()
    registry = registered(node_key, keys)
    stranger = UserKeys(keys.rsa_private, keys.umbral_secret, ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(InvalidSignature):
        registry.copy().apply(sign_transaction("access", ACCESS, stranger, TS + 2), 2)
    # An account registered without a signing key takes no Ed25519 signature at all.
    old = legacy(generate_user_keys())
    registry = registered(node_key, old)
    with pytest.raises(InvalidSignature):
        registry.copy().apply(sign_transaction("access", ACCESS, UserKeys(old.rsa_private, old.umbral_secret,
                                                                         ed25519.Ed25519PrivateKey.generate()),
                                               TS + 2), 2)  # fmt: skip


def test_a_signing_key_must_be_an_ed25519_key_and_endorsed(node_key: NodeKey) -> None:
    keys = generate_user_keys()
    public = keys.public
    payload = key_payload(str(uuid.uuid4()), "doctor", public.rsa_der, public.umbral, node_key, public.sign)
    registry = registered(node_key)
    with pytest.raises(InvalidTransaction, match="sign must be a 32-byte Ed25519 public key"):
        registry.copy().apply(sign_transaction("key", {**payload, "sign": "AAAA"}, legacy(keys), TS + 1), 1)
    swapped = UserKeys(keys.rsa_private, keys.umbral_secret, ed25519.Ed25519PrivateKey.generate())
    forged = {**payload, "sign": key_payload("x", "doctor", b"", b"", node_key, swapped.public.sign)["sign"]}
    with pytest.raises(InvalidTransaction, match="endorse"):  # the home node endorsed another key
        registry.copy().apply(sign_transaction("key", forged, swapped, TS + 1), 1)


@pytest.mark.parametrize("keys", [generate_user_keys(), legacy(generate_user_keys())], ids=["signing", "legacy"])
def test_sealed_keys_keep_the_signing_key(keys: UserKeys) -> None:
    wrapping = bytes(32)
    opened = open_user_keys(seal_user_keys(keys, wrapping, b"aad"), wrapping, b"aad")
    assert opened.public == keys.public
    assert opened.sign(b"m") == keys.sign(b"m") if keys.signing is not None else len(opened.sign(b"m")) == 384
