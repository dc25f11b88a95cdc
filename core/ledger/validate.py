"""Chain validation that says where and why.

`ChainValidator.append` checks one stored block against everything before it,
as a sequence of small named checks; the first that fails raises InvalidBlock
with the block's height and the check's name:

    missing block, reordered, encoding, header hash, link, timestamp, body hash,
    producer signature, producer schedule, transaction, transaction signature,
    duplicate transaction

`validate_chain` runs it over a whole chain and turns the first failure into a
`ChainReport`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.encoding import b64d
from core.errors import CoreError, EncodingError, InvalidBlock, InvalidSignature, InvalidTransaction
from core.ledger.block import GENESIS_PREV_HASH, Block, BlockHeader, decode_header
from core.ledger.merkle import merkle_root
from core.ledger.registry import KeyRegistry
from core.ledger.transaction import Transaction, decode_transaction

if TYPE_CHECKING:
    from core.consensus.state import ConsensusState


@dataclass(frozen=True)
class StoredBlock:
    """A block as a node stores it: its position, the hash it is filed under, and raw bytes."""

    height: int
    hash: str
    header: bytes
    transactions: Sequence[bytes]


@dataclass(frozen=True)
class ChainReport:
    valid: bool
    blocks: int
    tip_hash: str | None
    height: int | None = None
    check: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"valid": self.valid, "blocks": self.blocks, "tip_hash": self.tip_hash}
        if not self.valid:
            data.update(height=self.height, check=self.check, detail=self.detail)
        return data

    def describe(self) -> str:
        if self.valid:
            return f"chain valid: {self.blocks} blocks, tip {self.tip_hash}"
        return f"chain INVALID at height {self.height}: {self.check}: {self.detail}"


@dataclass
class ChainValidator:
    """Validates blocks in order, keeping the state needed for the next one."""

    verify_signatures: bool = True
    registry: KeyRegistry = field(default_factory=KeyRegistry)
    tip: BlockHeader | None = None
    seen: set[str] = field(default_factory=set)
    consensus: ConsensusState | None = None

    @property
    def next_height(self) -> int:
        return 0 if self.tip is None else self.tip.height + 1

    def _position(self, stored: StoredBlock) -> None:
        if stored.height > self.next_height:
            raise InvalidBlock(self.next_height, "missing block", f"next stored block is {stored.height}")
        if stored.height < self.next_height:
            raise InvalidBlock(stored.height, "reordered", "height stored twice or out of order")

    def _header(self, stored: StoredBlock) -> BlockHeader:
        try:
            header = decode_header(stored.header)
        except EncodingError as exc:
            raise InvalidBlock(stored.height, "encoding", f"header: {exc}") from exc
        if header.height != stored.height:
            raise InvalidBlock(stored.height, "reordered", f"header says height {header.height}")
        if header.hash != stored.hash:
            raise InvalidBlock(stored.height, "header hash", "stored hash does not match the header")
        return header

    def _link(self, header: BlockHeader) -> None:
        expected = GENESIS_PREV_HASH if self.tip is None else self.tip.hash
        if header.prev_hash != expected:
            raise InvalidBlock(header.height, "link", "previous hash does not match the block before")
        if self.tip is not None and header.timestamp < self.tip.timestamp:
            raise InvalidBlock(header.height, "timestamp", "earlier than the block before")

    def _body(self, stored: StoredBlock, header: BlockHeader) -> list[Transaction]:
        txs = []
        for position, data in enumerate(stored.transactions):
            try:
                txs.append(decode_transaction(data))
            except (EncodingError, InvalidTransaction) as exc:
                raise InvalidBlock(header.height, "encoding", f"transaction {position}: {exc}") from exc
        if merkle_root([tx.hash for tx in txs]) != header.merkle_root:
            raise InvalidBlock(header.height, "body hash", "Merkle root does not match the transactions")
        return txs

    def _producer(self, header: BlockHeader, txs: list[Transaction]) -> None:
        registry = self.registry
        if header.height == 0:
            # The genesis block introduces the keys it is signed with.
            registry = KeyRegistry()
            for tx in txs:
                registry.apply(tx, 0, verify_signature=False)
        if not self.verify_signatures:
            return
        try:
            registry.node_verifier(header.producer).verify(header.signature, header.signing_bytes())
        except InvalidSignature as exc:
            raise InvalidBlock(header.height, "producer signature", str(exc)) from exc

    def _transactions(self, header: BlockHeader, txs: list[Transaction], added: list[str]) -> None:
        for position, tx in enumerate(txs):
            if tx.hash in self.seen:
                raise InvalidBlock(header.height, "duplicate transaction", f"transaction {position} ({tx.hash[:16]})")
            try:
                self.registry.apply(tx, header.height, self.verify_signatures)
            except InvalidSignature as exc:
                raise InvalidBlock(header.height, "transaction signature", f"transaction {position}: {exc}") from exc
            except (InvalidTransaction, EncodingError) as exc:
                raise InvalidBlock(header.height, "transaction", f"transaction {position}: {exc}") from exc
            self.seen.add(tx.hash)
            added.append(tx.hash)

    def append(self, stored: StoredBlock) -> Block:
        """Validate the next stored block; raises InvalidBlock naming the failed check."""
        self._position(stored)
        header = self._header(stored)
        self._link(header)
        txs = self._body(stored, header)
        try:
            self._producer(header, txs)
        except CoreError as exc:
            if isinstance(exc, InvalidBlock):
                raise
            raise InvalidBlock(header.height, "transaction", str(exc)) from exc
        consensus = self._schedule(header)
        # A rejected block must leave no trace: only key-changing kinds touch the registry,
        # so only then is it copied; the seen hashes added so far are taken back.
        registry = self.registry
        if any(tx.kind in ("genesis", "key", "admit") for tx in txs):
            self.registry = registry.copy()
        added: list[str] = []
        try:
            self._transactions(header, txs, added)
            consensus = self._consensus(header, txs, consensus)
        except InvalidBlock:
            self.registry = registry
            self.seen.difference_update(added)
            raise
        self.tip, self.consensus = header, consensus
        return Block(header, tuple(txs))

    def _schedule(self, header: BlockHeader) -> ConsensusState | None:
        """A copy of the consensus state entered into this block's slot, if it is the producer's."""
        if self.consensus is None:
            return None
        trial = self.consensus.copy()
        try:
            trial.check_producer(header)
        except InvalidTransaction as exc:
            raise InvalidBlock(header.height, "producer schedule", str(exc)) from exc
        return trial

    def _consensus(self, header: BlockHeader, txs: list[Transaction], trial: ConsensusState | None) -> ConsensusState:
        if trial is None:  # genesis: the consortium starts here
            from core.consensus import ConsensusState, Params  # consensus builds on this module

            payload = txs[0].payload
            nodes = {n["id"]: b64d(n["key"]) for n in payload["nodes"]}
            return ConsensusState.from_genesis(Params.from_dict(payload["params"]), nodes, header.hash)
        try:
            admitted = trial.apply(header, txs, self.registry)
        except InvalidTransaction as exc:
            raise InvalidBlock(header.height, "transaction", str(exc)) from exc
        for node in admitted:
            self.registry.add_node(node, trial.node_keys[node])
        return trial


def validate_chain(blocks: Iterable[StoredBlock], verify_signatures: bool = True) -> ChainReport:
    """Validate a whole chain from genesis; the report names the first bad height and check."""
    validator = ChainValidator(verify_signatures=verify_signatures)
    count = 0
    try:
        for stored in blocks:
            validator.append(stored)
            count += 1
    except InvalidBlock as exc:
        tip = validator.tip.hash if validator.tip else None
        return ChainReport(False, count, tip, exc.height, exc.check, exc.detail)
    if count == 0:
        return ChainReport(False, 0, None, 0, "missing block", "the chain has no genesis block")
    return ChainReport(True, count, validator.tip.hash if validator.tip else None)
