"""Actors shared by the core tests.

RSA-3072 generation takes about half a second per key pair, so each actor's keys
are made once per test session.
"""

from __future__ import annotations

import pytest

from core.crypto import NodeKey, UserKeys, generate_user_keys
from tests.core.chains import NODE


@pytest.fixture(scope="session")
def doctor_keys() -> UserKeys:
    return generate_user_keys()


@pytest.fixture(scope="session")
def patient_keys() -> UserKeys:
    return generate_user_keys()


@pytest.fixture(scope="session")
def stranger_keys() -> UserKeys:
    """A third user who is neither the patient nor the author of anything."""
    return generate_user_keys()


@pytest.fixture(scope="session")
def node_key() -> NodeKey:
    return NODE
