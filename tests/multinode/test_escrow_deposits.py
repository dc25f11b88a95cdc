"""An escrow deposit while the holder is down, across real node processes on loopback: a
patient registers at hospital 1 while hospital 2 (the holder of her second share) is stopped;
her escrow says `delivering` and the share waits at home. Once hospital 2 is back, hospital 1's
block producer hands the share over by itself, without her signing in again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.launcher import LocalNode, add_patient, api, running
from tests.multinode.test_consortium import free_base_port, wait_for
from tests.multinode.test_escrow_across import escrow_state

SLOT_MS = 500


@pytest.fixture(autouse=True)
def fast_keys() -> None:
    """Override the suite's key pool: these nodes make their own keys in their own processes."""


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalNode]]:
    folder = tmp_path_factory.mktemp("escrow-deposits")
    with running(Path(folder), 2, free_base_port(3), slot_ms=SLOT_MS, epoch_slots=30, miss_limit=3) as cluster:
        yield cluster


def test_a_deposit_made_while_the_holder_is_down_is_delivered_when_it_is_back(hospitals: list[LocalNode]) -> None:
    home, holder = hospitals

    add_patient(home, "lena", "Lena Okafor")  # hospital 2 up: once its box key is known, her share goes there
    wait_for(lambda: escrow_state(home, "lena") == "held", 60, "hospital 2 holding a first share")
    holder.stop()
    try:
        token, _ = add_patient(home, "mira", "Mira Sato")  # made and sealed to hospital 2, which is down
        assert state(home, token) == "delivering"
    finally:
        holder.start()
    holder.wait_ready()
    wait_for(lambda: state(home, token) == "held", 60, "hospital 1 handing Mira's share to hospital 2")


def state(node: LocalNode, token: str) -> str:
    """The patient's escrow state, read with her existing session (no new sign-in)."""
    status, answer = api(node, "GET", "/account/escrow", token=token)
    assert status == 200, answer
    return answer["state"]
