"""Is this chain shorter than what is already final elsewhere?

Validation of a stored chain cannot see blocks that are simply gone from its end: what is
left is a valid, shorter chain. Only a height known to be final somewhere else (the
archive's newest zip, a peer's final height) shows the loss. Final blocks never change, so
a chain below such a height has lost final blocks, and a different hash at a height both
have means a different chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["FinalElsewhere", "TruncationReport", "check_truncation"]


@dataclass(frozen=True)
class FinalElsewhere:
    """A height known to be final outside this chain: `source` is "archive" or a peer's node id;
    `hash` is the block hash at `height` when the source names it (archive file names do)."""

    source: str
    height: int
    hash: str | None = None

    def describe(self) -> str:
        if self.source == "archive":
            return f"the archive's newest zip is height {self.height}"
        return f"peer {self.source} has final height {self.height}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "height": self.height}


@dataclass(frozen=True)
class TruncationReport:
    """`behind`: sources final above our tip (the chain lost final blocks or has not caught up);
    `differs`: sources naming another hash at a height we hold."""

    tip_height: int
    behind: tuple[FinalElsewhere, ...] = ()
    differs: tuple[FinalElsewhere, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.behind and not self.differs

    @property
    def final_elsewhere(self) -> int | None:
        """The highest height final elsewhere that this chain lacks (None if it lacks none)."""
        return max((f.height for f in self.behind), default=None)

    def describe(self) -> str:
        if self.ok:
            return f"chain not shorter than what is final elsewhere (tip at height {self.tip_height})"
        lines = []
        if self.behind:
            where = "; ".join(f.describe() for f in sorted(self.behind, key=lambda f: -f.height))
            lines.append(f"chain SHORTER than what is already final: tip at height {self.tip_height}, but {where}")
        for found in self.differs:
            lines.append(f"chain DIFFERS from {found.source} at final height {found.height}: its block is {found.hash}")
        return "\n".join(lines)


def check_truncation(
    tip_height: int, our_hash_at: Callable[[int], str | None], known: Iterable[FinalElsewhere]
) -> TruncationReport:
    """Compare a chain whose tip is at `tip_height` (-1: empty) with heights final elsewhere.

    `our_hash_at(height)` gives our block hash at a height at or below the tip. Never raises
    for what the sources say: a source above the tip is `behind`, one naming another hash at
    a height we hold `differs`."""
    behind, differs = [], []
    for found in known:
        if found.height > tip_height:
            behind.append(found)
        elif found.hash is not None and our_hash_at(found.height) != found.hash:
            differs.append(found)
    return TruncationReport(tip_height, tuple(behind), tuple(differs))
