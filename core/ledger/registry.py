"""Which keys may sign what, as established by the chain so far."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.crypto.keys import fingerprint, node_public_key_from_bytes
from core.crypto.signing import Verifier, account_verifier
from core.encoding import b64d
from core.errors import EncodingError, InvalidSignature, InvalidTransaction
from core.ledger.kinds import RULES, SIGNER_ROLES, endorsement_message
from core.ledger.transaction import Transaction


@dataclass
class KeyRegistry:
    """Known node and account keys, built by applying transactions in chain order."""

    chain_id: str | None = None
    nodes: dict[str, Verifier] = field(default_factory=dict)
    accounts: dict[str, Verifier] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    node_keys: dict[str, Verifier] = field(default_factory=dict)  # by key id, for node-signed transactions
    homes: dict[str, str] = field(default_factory=dict)  # account key id -> the node that endorsed it
    account_ids: dict[str, str] = field(default_factory=dict)  # account key id -> the account (UUID)

    def copy(self) -> KeyRegistry:
        """An independent registry to try transactions on without touching this one."""
        return KeyRegistry(
            self.chain_id, dict(self.nodes), dict(self.accounts), dict(self.roles), dict(self.node_keys),
            dict(self.homes), dict(self.account_ids),
        )  # fmt: skip

    def add_node(self, node_id: str, public_raw: bytes) -> None:
        """A node that may produce blocks and sign node transactions (a founder or one admitted)."""
        verifier = node_public_key_from_bytes(public_raw)
        self.nodes[node_id] = verifier
        self.node_keys[verifier.key_id] = verifier

    def node_verifier(self, node_id: str) -> Verifier:
        """The key of a known node; raises InvalidSignature for an unknown producer."""
        try:
            return self.nodes[node_id]
        except KeyError:
            raise InvalidSignature(f"unknown node {node_id!r}") from None

    def _signer(self, tx: Transaction) -> Verifier:
        if tx.kind == "genesis":
            node_key = b64d(tx.payload["nodes"][0]["key"])
            if fingerprint(node_key) != tx.signer:
                raise InvalidTransaction("genesis must be signed by its first node")
            return node_public_key_from_bytes(node_key)
        if tx.kind == "key":
            rsa_der = b64d(tx.payload["rsa"])
            if fingerprint(rsa_der) != tx.signer:
                raise InvalidTransaction("a key registration must be signed by the key it registers")
            if tx.signer in self.accounts:
                raise InvalidTransaction("key already registered")
            self._check_endorsement(tx)
            try:  # signed by a key it registers (RSA, or the Ed25519 signing key beside it)
                sign = b64d(tx.payload["sign"]) if "sign" in tx.payload else None
                return account_verifier(rsa_der, sign, tx.signer)
            except EncodingError as exc:
                raise InvalidTransaction(str(exc)) from exc
        if tx.kind == "node_info":
            named = self.nodes.get(tx.payload["node"])
            if named is None or named.key_id != tx.signer:
                raise InvalidTransaction("a node publishes only its own node info")
        if tx.signer in self.node_keys:
            return self.node_keys[tx.signer]
        if tx.signer not in self.accounts:
            raise InvalidTransaction("signer is not a registered key")
        return self.accounts[tx.signer]

    def _check_endorsement(self, tx: Transaction) -> None:
        """Every account key carries its home node's signature over the account, role and keys:
        no node can make a doctor or admin (or a patient) that its own key did not vouch for."""
        home = self.nodes.get(tx.payload["home"])
        if home is None:
            raise InvalidTransaction(f"key endorsed by unknown node {tx.payload['home']!r}")
        try:
            home.verify(b64d(tx.payload["endorsement"]), endorsement_message(tx.payload))
        except InvalidSignature:
            raise InvalidTransaction(f"the key's endorsement by {tx.payload['home']} does not verify") from None

    def _authorise(self, tx: Transaction, height: int) -> None:
        if tx.kind == "genesis" and (height != 0 or self.chain_id is not None):
            raise InvalidTransaction("genesis only in block 0")
        if tx.kind != "genesis" and self.chain_id is None:
            raise InvalidTransaction("transaction before genesis")
        allowed = SIGNER_ROLES.get(tx.kind)
        role = "node" if tx.signer in self.node_keys else self.roles.get(tx.signer)
        if allowed is not None and role not in allowed:
            raise InvalidTransaction(f"only {' or '.join(allowed)} keys sign {tx.kind} transactions")
        if tx.kind == "recover" and self.account_ids.get(tx.signer) != tx.payload["account"]:
            raise InvalidTransaction("an account's password reset is signed by that account's own key")

    def apply(self, tx: Transaction, height: int, verify_signature: bool = True) -> None:
        """Check `tx` against the rules for its kind and the keys known so far, then record its
        effects. Raises InvalidTransaction (shape, authority) or InvalidSignature."""
        rule = RULES.get(tx.kind)
        if rule is None:
            raise InvalidTransaction(f"unknown transaction kind {tx.kind!r}")
        rule(tx.payload)
        self._authorise(tx, height)
        verifier = self._signer(tx)
        if verify_signature:
            verifier.verify(tx.signature, tx.signing_bytes())
        if tx.kind == "genesis":
            self.chain_id = tx.payload["chain"]
            for node in tx.payload["nodes"]:
                self.add_node(node["id"], b64d(node["key"]))
        elif tx.kind == "key":
            self.accounts[tx.signer] = verifier
            self.roles[tx.signer] = tx.payload["role"]
            self.homes[tx.signer] = tx.payload["home"]
            self.account_ids[tx.signer] = tx.payload["account"]
