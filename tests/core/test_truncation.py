"""check_truncation: a chain shorter than, or different from, what is final elsewhere."""

from __future__ import annotations

from core.ledger import FinalElsewhere, check_truncation

OURS = {0: "a" * 64, 1: "b" * 64, 2: "c" * 64}


def test_a_chain_reaching_every_final_height_is_ok() -> None:
    report = check_truncation(2, OURS.get, [FinalElsewhere("archive", 2, OURS[2]), FinalElsewhere("node-2", 1)])
    assert report.ok and report.final_elsewhere is None
    assert report.describe() == "chain not shorter than what is final elsewhere (tip at height 2)"


def test_invalid_chain_shorter_than_the_archive_and_a_peer() -> None:
    report = check_truncation(2, OURS.get, [FinalElsewhere("archive", 5, "d" * 64), FinalElsewhere("node-2", 7)])
    assert not report.ok and report.final_elsewhere == 7
    assert report.describe() == (
        "chain SHORTER than what is already final: tip at height 2, but peer node-2 has final height 7; "
        "the archive's newest zip is height 5"
    )


def test_invalid_chain_with_another_block_at_a_final_height() -> None:
    report = check_truncation(2, OURS.get, [FinalElsewhere("archive", 1, "e" * 64)])
    assert not report.ok and report.behind == ()
    assert report.describe() == f"chain DIFFERS from archive at final height 1: its block is {'e' * 64}"


def test_an_empty_chain_is_shorter_than_any_final_block() -> None:
    report = check_truncation(-1, {}.get, [FinalElsewhere("archive", 0, "a" * 64)])
    assert report.final_elsewhere == 0 and not report.ok


def test_nothing_known_elsewhere_is_ok() -> None:
    assert check_truncation(3, OURS.get, []).ok
