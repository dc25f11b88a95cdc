"""Payload rules for each transaction kind.

Each rule checks the payload's shape only; who may sign what is checked by
`KeyRegistry`. Adding a kind (grant, vote, access entry) adds a rule here and
never changes the transaction envelope.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from core.crypto.keys import NodeKey
from core.encoding import b64d, b64e, canonical, is_b64
from core.errors import EncodingError, InvalidTransaction

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
ROLES = ("patient", "doctor", "admin")
MAX_ATTACHMENTS = 20
MAX_SEALED = 64  # packages of one grant: one per member node at most
ENDORSE_DOMAIN = b"medledger/endorse/v1\n"
ENDORSED_FIELDS = ("account", "role", "rsa", "umbral", "home", "sign")  # "sign": only when registered


def _fields(payload: dict[str, Any], names: set[str]) -> None:
    if set(payload) != names:
        raise InvalidTransaction("payload must have exactly the fields " + ", ".join(sorted(names)))


def _binary(payload: dict[str, Any], name: str) -> bytes:
    try:
        return b64d(payload[name])
    except EncodingError as exc:
        raise InvalidTransaction(f"payload field {name!r} is not base64url") from exc


def _base64url(payload: dict[str, Any], name: str) -> None:
    """A field that must be base64url, whose bytes are not needed here."""
    if not (isinstance(payload[name], str) and is_b64(payload[name])):
        _binary(payload, name)  # raises, saying why


def check_genesis(payload: dict[str, Any]) -> None:
    from core.consensus.params import Params

    _fields(payload, {"chain", "nodes", "params"})
    Params.from_dict(payload["params"])
    if not isinstance(payload["chain"], str) or not payload["chain"]:
        raise InvalidTransaction("genesis needs a chain id")
    nodes = payload["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise InvalidTransaction("genesis needs at least one node")
    for node in nodes:
        if not isinstance(node, dict) or set(node) != {"id", "key"}:
            raise InvalidTransaction("each genesis node needs exactly id and key")
        if not isinstance(node["id"], str) or not NODE_ID_RE.match(node["id"]):
            raise InvalidTransaction("bad node id")
        if len(_binary(node, "key")) != 32:
            raise InvalidTransaction("node keys are 32-byte Ed25519 keys")


def endorsement_message(payload: dict[str, Any]) -> bytes:
    """What a home node signs to endorse an account's key registration: the account, its role,
    its public keys and the node itself (so an endorsement cannot be moved to another key)."""
    return ENDORSE_DOMAIN + canonical({name: payload[name] for name in ENDORSED_FIELDS if name in payload})


def key_payload(
    account: str, role: str, rsa_der: bytes, umbral: bytes, home: NodeKey, sign: bytes | None = None
) -> dict[str, Any]:
    """A `key` transaction's payload, endorsed by `home` (a NodeKey: its node id and signature);
    `sign` is the account's Ed25519 signing key, for accounts that have one."""
    payload = {"account": account, "role": role, "rsa": b64e(rsa_der), "umbral": b64e(umbral), "home": home.node_id}
    if sign is not None:
        payload["sign"] = b64e(sign)
    return {**payload, "endorsement": b64e(home.sign(endorsement_message(payload)))}


def check_key(payload: dict[str, Any]) -> None:
    """An account's public keys, its role and its home node, with that node's endorsement
    (checked by the registry against the node's key)."""
    fields = {"account", "role", "rsa", "umbral", "home", "endorsement"}
    _fields(payload, fields | ({"sign"} & set(payload)))
    if "sign" in payload and len(_binary(payload, "sign")) != 32:
        raise InvalidTransaction("sign must be a 32-byte Ed25519 public key")
    if not isinstance(payload["account"], str) or not UUID_RE.match(payload["account"]):
        raise InvalidTransaction("account must be a UUID")
    if payload["role"] not in ROLES:
        raise InvalidTransaction("unknown role")
    _binary(payload, "rsa")
    if len(_binary(payload, "umbral")) != 33:
        raise InvalidTransaction("umbral key must be a 33-byte compressed point")
    if not isinstance(payload["home"], str) or not NODE_ID_RE.match(payload["home"]):
        raise InvalidTransaction("home must be a node id")
    if len(_binary(payload, "endorsement")) != 64:
        raise InvalidTransaction("endorsement must be a 64-byte Ed25519 signature")


def check_node_info(payload: dict[str, Any]) -> None:
    """A member node publishes its box key (X25519, for what is sealed to it), its emergency key
    (Umbral, the receiver of patients' emergency opt-ins) and its hospital's name. The registry
    checks that the node named signed it."""
    _fields(payload, {"node", "box", "emergency", "hospital"})
    if not isinstance(payload["node"], str) or not NODE_ID_RE.match(payload["node"]):
        raise InvalidTransaction("bad node id")
    if len(_binary(payload, "box")) != 32:
        raise InvalidTransaction("box must be a 32-byte X25519 key")
    if len(_binary(payload, "emergency")) != 33:
        raise InvalidTransaction("emergency must be a 33-byte compressed Umbral public key")
    hospital = payload["hospital"]
    if not isinstance(hospital, str) or not 1 <= len(hospital) <= 120 or not hospital.isprintable():
        raise InvalidTransaction("hospital must be 1-120 printable characters")


def check_record(payload: dict[str, Any]) -> None:
    """A sealed record: for which patient (their account id), a keyed tag of its category
    (the consortium's tag key, so any member can check a grant's scope), and ciphertext."""
    _fields(payload, {"record", "patient", "ctag", "body", "capsule", "pkey", "akey", "attachments"})
    if not isinstance(payload["record"], str) or not UUID_RE.match(payload["record"]):
        raise InvalidTransaction("record must be a UUID")
    _uuid(payload, "patient")
    if not isinstance(payload["ctag"], str) or not HEX32_RE.match(payload["ctag"]):
        raise InvalidTransaction("ctag must be 32 hex digits")
    for name in ("body", "capsule", "pkey", "akey"):
        _base64url(payload, name)
    attachments = payload["attachments"]
    if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
        raise InvalidTransaction("attachments must be a list of at most 20 hashes")
    if not all(isinstance(h, str) and HEX64_RE.match(h) for h in attachments):
        raise InvalidTransaction("attachment hashes must be SHA-256 hex")


def _uuid(payload: dict[str, Any], name: str, optional: bool = False) -> None:
    value = payload[name]
    if optional and value is None:
        return
    if not isinstance(value, str) or not UUID_RE.match(value):
        raise InvalidTransaction(f"{name} must be a UUID")


def _hex64(payload: dict[str, Any], name: str) -> None:
    if not isinstance(payload[name], str) or not HEX64_RE.match(payload[name]):
        raise InvalidTransaction(f"{name} must be SHA-256 hex")


def _timestamp(payload: dict[str, Any], name: str) -> None:
    value = payload[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidTransaction(f"{name} must be a time in milliseconds")


def check_grant(payload: dict[str, Any]) -> None:
    """A patient delegates reading: to whom (account), what (scope commitment), until when, the
    request it answers (if any), a commitment to the key fragments, and one package per node
    concerned (each proxy's fragment, the scope for the grantee's hospital), sealed to that node.
    An emergency opt-in names no grantee but the `hospital` whose emergency key receives it."""
    _fields(
        payload, {"grant", "grantee", "hospital", "scope", "expires", "fragments", "emergency", "request", "sealed"}
    )
    _uuid(payload, "grant")
    _uuid(payload, "grantee", optional=True)  # None: a hospital's emergency key
    _uuid(payload, "request", optional=True)
    _hex64(payload, "scope")
    _hex64(payload, "fragments")
    _timestamp(payload, "expires")
    if not isinstance(payload["emergency"], bool) or payload["emergency"] != (payload["grantee"] is None):
        raise InvalidTransaction("emergency grants, and only they, have no grantee")
    hospital = payload["hospital"]
    named = isinstance(hospital, str) and NODE_ID_RE.match(hospital) is not None
    if payload["emergency"] != (hospital is not None) or not (hospital is None or named):
        raise InvalidTransaction("emergency grants, and only they, name the hospital node they are for")
    sealed = payload["sealed"]
    if not isinstance(sealed, dict) or not 1 <= len(sealed) <= MAX_SEALED:
        raise InvalidTransaction(f"sealed must map 1-{MAX_SEALED} node ids to packages")
    for node, package in sealed.items():
        if not NODE_ID_RE.match(node):
            raise InvalidTransaction("bad node id in sealed")
        _binary({"package": package}, "package")


def check_request(payload: dict[str, Any]) -> None:
    """A doctor asks a patient for access: the reason, scope and duration travel only in `note`,
    sealed for the two of them."""
    _fields(payload, {"request", "patient", "note"})
    _uuid(payload, "request")
    _uuid(payload, "patient")
    if len(_binary(payload, "note")) > 16_384:
        raise InvalidTransaction("note is too long")


def check_revoke(payload: dict[str, Any]) -> None:
    _fields(payload, {"grant"})
    _uuid(payload, "grant")


def check_decline(payload: dict[str, Any]) -> None:
    _fields(payload, {"request"})
    _uuid(payload, "request")


def check_access(payload: dict[str, Any]) -> None:
    """A read of a record by someone other than its patient."""
    _fields(payload, {"entry", "record", "part", "mode", "grant"})
    _uuid(payload, "entry")
    _uuid(payload, "record")
    _uuid(payload, "grant", optional=True)
    if payload["mode"] not in ("author", "grant", "emergency"):
        raise InvalidTransaction("mode must be author, grant or emergency")
    if (payload["mode"] == "author") != (payload["grant"] is None):
        raise InvalidTransaction("reads under a grant or an emergency name it; an author's read does not")
    if not isinstance(payload["part"], int) or isinstance(payload["part"], bool) or not -1 <= payload["part"] < 100:
        raise InvalidTransaction("part is -1 for the record or an attachment number")


def check_emergency(payload: dict[str, Any]) -> None:
    """A doctor breaks the glass for a patient: which access, whose, under which emergency opt-in
    (the grant to the doctor's hospital), until when, and the written reason sealed for the
    patient, the doctor and the hospital (ciphertext only)."""
    _fields(payload, {"access", "patient", "grant", "expires", "note"})
    _uuid(payload, "access")
    _uuid(payload, "patient")
    _uuid(payload, "grant")
    _timestamp(payload, "expires")
    if len(_binary(payload, "note")) > 16_384:
        raise InvalidTransaction("note is too long")


def check_vote(payload: dict[str, Any]) -> None:
    """An account's votes for up to K hospital nodes (replacing its earlier vote)."""
    _fields(payload, {"nodes"})
    nodes = payload["nodes"]
    if not isinstance(nodes, list) or not nodes or len(set(nodes)) != len(nodes):
        raise InvalidTransaction("a vote names one or more distinct nodes")
    if not all(isinstance(n, str) and NODE_ID_RE.match(n) for n in nodes):
        raise InvalidTransaction("bad node id in vote")


def check_evidence(payload: dict[str, Any]) -> None:
    """Proof against a producer (checked against the chain's state): two headers it signed for
    one slot {"a", "b"}, or a header it signed with a body that holds a malformed or wrongly
    signed transaction {"header", "transactions"}."""
    if "a" in payload:
        _fields(payload, {"a", "b"})
        _binary(payload, "a")
        _binary(payload, "b")
        return
    _fields(payload, {"header", "transactions"})
    _binary(payload, "header")
    body = payload["transactions"]
    if not isinstance(body, list) or not body or len(body) > 1000:
        raise InvalidTransaction("evidence needs the block's transactions")
    for index in range(len(body)):
        _binary({"tx": body[index]}, "tx")


def check_admit(payload: dict[str, Any]) -> None:
    """A member node's vote to admit a new hospital node (id, Ed25519 key, URL)."""
    _fields(payload, {"node", "key", "url"})
    if not isinstance(payload["node"], str) or not NODE_ID_RE.match(payload["node"]):
        raise InvalidTransaction("bad node id")
    if len(_binary(payload, "key")) != 32:
        raise InvalidTransaction("node keys are 32-byte Ed25519 keys")
    url = payload["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 200:
        raise InvalidTransaction("url must be an http(s) URL")


def check_chat_key(payload: dict[str, Any]) -> None:
    """A node registers a patient's chat identity key without naming the patient: `subject` is
    SHA-256 hex of salt || the patient's pseudonym (UTF-8), `salt` 16 random bytes (base64url),
    `key` the P-256 public key as the 65-byte uncompressed point (base64url), `fingerprint`
    SHA-256 hex of those 65 bytes, and (since patients use several devices) `device`, the
    id of the device that holds the key (16 random bytes, base64url). The registry checks that
    a member node signed it."""
    _fields(payload, {"subject", "salt", "key", "fingerprint"} | ({"device"} & set(payload)))
    if "device" in payload:
        _chat_device(payload)
    _hex64(payload, "subject")
    if len(_binary(payload, "salt")) != 16:
        raise InvalidTransaction("salt must be 16 bytes")
    _hex64(payload, "fingerprint")
    point = _binary(payload, "key")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise InvalidTransaction("key must be a P-256 point") from exc
    if len(point) != 65 or point[0] != 4:
        raise InvalidTransaction("key must be an uncompressed P-256 point (65 bytes)")
    if hashlib.sha256(point).hexdigest() != payload["fingerprint"]:
        raise InvalidTransaction("fingerprint is not the SHA-256 of the key")


def _chat_device(payload: dict[str, Any]) -> None:
    if not isinstance(payload["device"], str) or len(_binary(payload, "device")) != 16:
        raise InvalidTransaction("device must be 16 bytes")


def check_chat_key_revoke(payload: dict[str, Any]) -> None:
    """A node revokes a patient's chat key (a lost device, removed from another one): `subject`
    and `salt` as in `chat_key` (a fresh salt), the revoked key's `fingerprint` and its `device`.
    Peers stop sealing for that key once they see it."""
    _fields(payload, {"subject", "salt", "fingerprint", "device"})
    _hex64(payload, "subject")
    if len(_binary(payload, "salt")) != 16:
        raise InvalidTransaction("salt must be 16 bytes")
    _hex64(payload, "fingerprint")
    _chat_device(payload)


def check_escrow_recovery(payload: dict[str, Any]) -> None:
    """A home node re-assembled an account's escrowed user key to let it set a new password
    (docs/recovery.md): which case, whose account, by which method, and the two approvals (each
    an admin account and its node). Names and the identity document never appear here."""
    _fields(payload, {"case", "account", "method", "opened_by", "approved_by"})
    _uuid(payload, "case")
    _uuid(payload, "account")
    if payload["method"] != "escrow":
        raise InvalidTransaction("method must be escrow")
    for name in ("opened_by", "approved_by"):
        approval = payload[name]
        if not isinstance(approval, dict) or set(approval) != {"node", "account"}:
            raise InvalidTransaction(f"{name} must name exactly node and account")
        _uuid(approval, "account")
        if not isinstance(approval["node"], str) or not NODE_ID_RE.match(approval["node"]):
            raise InvalidTransaction(f"{name} must name a node id")
    if payload["opened_by"] == payload["approved_by"]:
        raise InvalidTransaction("a recovery needs two different approvers")


def check_recover(payload: dict[str, Any]) -> None:
    """A patient set a new password without the old one (docs/recovery.md): whose account, how
    ("recovery_key"), when. Signed by the account's own key, which only the recovery key could
    unlock; no secret is in it."""
    _fields(payload, {"account", "method", "at"})
    _uuid(payload, "account")
    if payload["method"] != "recovery_key":
        raise InvalidTransaction("method must be recovery_key")
    _timestamp(payload, "at")


RULES: dict[str, Callable[[dict[str, Any]], None]] = {
    "genesis": check_genesis,
    "key": check_key,
    "record": check_record,
    "grant": check_grant,
    "revoke": check_revoke,
    "decline": check_decline,
    "access": check_access,
    "emergency": check_emergency,
    "vote": check_vote,
    "evidence": check_evidence,
    "admit": check_admit,
    "chat_key": check_chat_key,
    "chat_key_revoke": check_chat_key_revoke,
    "request": check_request,
    "node_info": check_node_info,
    "recover": check_recover,
    "escrow_recovery": check_escrow_recovery,
}

# Which role's key may sign each kind (genesis and key have their own rules in the registry).
SIGNER_ROLES: dict[str, tuple[str, ...]] = {
    "record": ("doctor",),
    "grant": ("patient",),
    "revoke": ("patient",),
    "decline": ("patient",),
    "access": ("doctor",),
    "emergency": ("doctor",),
    "vote": ("patient", "doctor", "admin"),
    "evidence": ("patient", "doctor", "admin", "node"),
    "admit": ("node",),
    "chat_key": ("node",),  # a member node, for a patient it does not name
    "chat_key_revoke": ("node",),  # likewise
    "request": ("doctor",),
    "node_info": ("node",),  # the node it describes (checked by the registry)
    "recover": ("patient",),  # the account's own key
    "escrow_recovery": ("node",),  # the account's home node
}
