"""A patient's date of birth reaches a doctor at another hospital from her home node, across
real node processes on loopback, and never through the ledger."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.demo import PASSWORD
from portal.launcher import LocalNode, add_doctor, api, running, sign_in
from tests.multinode.test_consortium import free_base_port, wait_for

SLOT_MS = 500
BORN = "1977-05-06"


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """Override the suite's key pool: these nodes make their own keys in their own processes."""


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalNode]]:
    folder = tmp_path_factory.mktemp("identity-across")
    with running(Path(folder), 3, free_base_port(4), slot_ms=SLOT_MS, epoch_slots=30, miss_limit=3) as cluster:
        yield cluster


def test_a_remote_patients_date_of_birth_comes_from_her_home_node(hospitals: list[LocalNode]) -> None:
    home, second, _ = hospitals
    body = {"username": "ines", "password": PASSWORD, "display_name": "Ines Moreau", "date_of_birth": BORN}
    status, answer = api(home, "POST", "/auth/register", body)
    assert status == 201 and answer["user"]["date_of_birth"] == BORN, answer
    _, patient_id = sign_in(home, "ines")
    token, _ = add_doctor(second, "dr.adeyemi", "Dr. Tola Adeyemi")

    def named() -> bool:
        status, answer = api(second, "GET", f"/patients/{patient_id}", token=token)
        return status == 200 and answer["display_name"] == "Ines Moreau"

    wait_for(named, 30, "Ines's key on hospital 2's ledger and her name from her home node")
    status, answer = api(second, "GET", f"/patients/{patient_id}", token=token)
    assert (answer["date_of_birth"], answer["verified"], answer["mrn"]) == (BORN, False, None)
    assert answer["home_hospital"] == "Hospital 1"

    status, blocks = api(second, "GET", "/chain/blocks?from=0&limit=100")
    assert status == 200
    published = repr(blocks).encode()
    decoded = b"".join(
        base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
        for v in _strings(blocks)
        if len(v) % 4 != 1 and set(v) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    )
    for needle in (BORN.encode(), b"Ines Moreau"):
        assert needle not in published and needle not in decoded


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
