"""Checking a whole archive (a set of block files) and restoring a chain from it.

Problems are reported in this order, each at its lowest height, because a chain
cannot be judged over files that are themselves unsound:

1. a file `read_zip` rejects (its reason, a wrong, stray or missing attachment blob included);
2. two files for one height ("duplicate height");
3. a height with no file below the highest one, or no genesis ("missing block");
4. the first block `ChainValidator` rejects (its check: link, body hash, ...).

Files whose names are not `<height>-<hash>.zip` are not blocks: they are listed
in `ignored` and otherwise left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from core.archive.blobs import ArchivedBlock
from core.archive.bundle import read_zip
from core.archive.name import parse_name
from core.archive.unzip import DEFAULT_LIMITS, Limits
from core.errors import ArchiveError, InvalidBlock
from core.ledger import StoredBlock
from core.ledger.validate import ChainValidator

__all__ = ["ArchiveReport", "blocks_for_restore", "verify_archive"]


@dataclasses.dataclass(frozen=True)
class ArchiveReport:
    """The outcome of `verify_archive`; like `ChainReport`, plus the file at fault and the ignored names.

    `blocks` and `tip_hash` describe the chain prefix that validated below the
    reported height (the whole chain when valid). `check` is a `read_zip` reason,
    "duplicate height", "missing block" or a chain check; `file` names the file at
    fault (two names joined by ", " for a duplicate height; None for a missing block).
    """

    valid: bool
    blocks: int
    tip_hash: str | None
    height: int | None = None
    check: str | None = None
    detail: str | None = None
    file: str | None = None
    ignored: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "valid": self.valid,
            "blocks": self.blocks,
            "tip_hash": self.tip_hash,
            "ignored": list(self.ignored),
        }
        if not self.valid:
            data.update(height=self.height, check=self.check, detail=self.detail, file=self.file)
        return data

    def describe(self) -> str:
        ignored = f"; {len(self.ignored)} other files ignored" if self.ignored else ""
        if self.valid:
            return f"archive valid: {self.blocks} blocks, tip {self.tip_hash}{ignored}"
        where = f" in {self.file}" if self.file else ""
        return f"archive INVALID at height {self.height}{where}: {self.check}: {self.detail}{ignored}"


@dataclasses.dataclass(frozen=True)
class _Problem:
    height: int
    check: str
    detail: str
    file: str | None


def verify_archive(files: Iterable[tuple[str, bytes]], limits: Limits = DEFAULT_LIMITS) -> ArchiveReport:
    """Check that `files` (name, bytes), in any order, hold exactly one valid chain from genesis.

    Never raises for bad input: every problem, zip bombs included, becomes a
    report naming the file, height and reason or chain check (see the module
    docstring for which problem is reported first). Each file is read and
    dropped in turn, blobs included once checked, so memory is the blocks plus one
    file within `limits`.
    """
    return _examine(files, limits, keep_blobs=False)[1]


def blocks_for_restore(files: Iterable[tuple[str, bytes]], limits: Limits = DEFAULT_LIMITS) -> list[ArchivedBlock]:
    """The archive's blocks in height order from genesis, all validated as one chain, each
    with its attachments' ciphertext (checked against the hashes its transactions list).

    Raises ArchiveError(file name, height, reason) for exactly the problem
    `verify_archive` would report (name "" for a missing block; for a duplicate
    height both names, joined by ", ").
    """
    chain, report = _examine(files, limits, keep_blobs=True)
    if not report.valid:
        raise ArchiveError(report.file or "", report.height, report.check or "", report.detail or "")
    return chain


def _examine(
    files: Iterable[tuple[str, bytes]], limits: Limits, keep_blobs: bool
) -> tuple[list[ArchivedBlock], ArchiveReport]:
    ignored: list[str] = []
    names: dict[int, list[str]] = {}
    good: dict[int, StoredBlock] = {}
    blobs: dict[int, Mapping[str, bytes]] = {}
    bad: list[ArchiveError] = []
    for name, data in files:
        try:
            height, _ = parse_name(name)
        except ArchiveError as exc:
            ignored.append(exc.name)
            continue
        names.setdefault(height, []).append(name)
        try:
            archived = read_zip(name, data, limits)
        except ArchiveError as exc:
            bad.append(exc)
            continue
        good[height] = archived.block
        if keep_blobs:
            blobs[height] = archived.blobs
    problem = _file_problem(bad, names)
    end = problem.height if problem else max(names, default=-1) + 1
    chain, tip, failure = _validate(good, names, end)
    if problem is None and failure is not None:
        problem = _Problem(failure.height, failure.check, failure.detail, names[failure.height][0])
    if problem is None and not chain:
        problem = _Problem(0, "missing block", "the archive has no genesis block", None)
    report = ArchiveReport(problem is None, len(chain), tip, ignored=tuple(sorted(ignored)))
    if problem is not None:
        report = dataclasses.replace(
            report, height=problem.height, check=problem.check, detail=problem.detail, file=problem.file
        )
    return [ArchivedBlock(block, blobs.get(block.height, {})) for block in chain], report


def _file_problem(bad: list[ArchiveError], names: dict[int, list[str]]) -> _Problem | None:
    if bad:
        first = min(bad, key=lambda exc: (exc.height or 0, exc.name))
        return _Problem(first.height or 0, first.reason, first.detail, first.name)
    duplicates = sorted(height for height, files in names.items() if len(files) > 1)
    if duplicates:
        height = duplicates[0]
        files = sorted(names[height])
        return _Problem(height, "duplicate height", f"{' and '.join(files)} are both height {height}", ", ".join(files))
    missing = next((height for height in range(max(names, default=-1) + 1) if height not in names), None)
    if missing is not None:
        return _Problem(missing, "missing block", f"no file for height {missing}", None)
    return None


def _validate(
    good: dict[int, StoredBlock], names: dict[int, list[str]], end: int
) -> tuple[list[StoredBlock], str | None, InvalidBlock | None]:
    """The longest valid chain from genesis below `end` over heights held by exactly one sound file."""
    validator = ChainValidator()
    chain: list[StoredBlock] = []
    for height in range(end):
        if height not in good or len(names[height]) != 1:
            break
        try:
            validator.append(good[height])
        except InvalidBlock as exc:
            return chain, validator.tip.hash if validator.tip else None, exc
        chain.append(good[height])
    return chain, validator.tip.hash if validator.tip else None, None
