"""A consortium's genesis file: the genesis block every node stores, and the peers' URLs.

{"genesis": {"header": b64url, "transactions": [b64url]},
 "peers": [{"id": "node-1", "url": "http://127.0.0.1:7000"}, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from core.consensus import Params
from core.crypto import NodeKey
from core.encoding import b64d, b64e
from core.errors import CoreError, EncodingError
from core.ledger import Block, StoredBlock, decode_header
from core.ledger.validate import ChainValidator
from portal.services.ledger import genesis_block


@dataclass(frozen=True)
class GenesisFile:
    block: Block
    peers: dict[str, str]

    @property
    def params(self) -> Params:
        return Params.from_dict(self.block.transactions[0].payload["params"])


def write(path: Path, block: Block, peers: dict[str, str]) -> None:
    data: dict[str, Any] = {
        "genesis": {
            "header": b64e(block.header.encoded),
            "transactions": [b64e(t.encoded) for t in block.transactions],
        },
        "peers": [{"id": node_id, "url": url} for node_id, url in peers.items()],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def read(path: Path) -> GenesisFile:
    """Load and validate a genesis file; raises EncodingError saying what is wrong."""
    try:
        data = json.loads(path.read_text())
        header = b64d(data["genesis"]["header"])
        transactions = [b64d(t) for t in data["genesis"]["transactions"]]
        peers = {p["id"]: p["url"].rstrip("/") for p in data["peers"]}
    except (OSError, ValueError, KeyError, TypeError, EncodingError) as exc:
        raise EncodingError(f"{path} is not a MedLedger genesis file: {exc}") from exc
    for node_id, url in peers.items():
        if urlparse(url).scheme not in ("http", "https"):
            raise EncodingError(f"peer {node_id} has a non-HTTP URL")
    validator = ChainValidator()
    try:
        block = validator.append(StoredBlock(0, decode_header(header).hash, header, transactions))
    except CoreError as exc:
        raise EncodingError(f"{path}: invalid genesis block: {exc}") from exc
    return GenesisFile(block, peers)


def create(chain_id: str, nodes: list[tuple[NodeKey, str]], params: Params) -> tuple[Block, dict[str, str]]:
    """A genesis block for founding nodes (key, URL), signed by the first."""
    founders = [(key.node_id, key.public_raw) for key, _ in nodes]
    return genesis_block(chain_id, founders, params, nodes[0][0]), {key.node_id: url for key, url in nodes}
