"""The hash-chained ledger: transactions, blocks, and chain validation."""

from core.ledger.block import GENESIS_PREV_HASH, Block, BlockHeader, decode_header, make_block
from core.ledger.kinds import key_payload
from core.ledger.merkle import merkle_root
from core.ledger.registry import KeyRegistry
from core.ledger.transaction import (
    Signer,
    Transaction,
    decode_transaction,
    sign_transaction,
)
from core.ledger.truncation import FinalElsewhere, TruncationReport, check_truncation
from core.ledger.validate import ChainReport, StoredBlock, validate_chain

__all__ = [
    "GENESIS_PREV_HASH",
    "Block",
    "BlockHeader",
    "ChainReport",
    "FinalElsewhere",
    "KeyRegistry",
    "Signer",
    "StoredBlock",
    "Transaction",
    "TruncationReport",
    "check_truncation",
    "decode_header",
    "decode_transaction",
    "key_payload",
    "make_block",
    "merkle_root",
    "sign_transaction",
    "validate_chain",
]
