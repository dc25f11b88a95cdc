"""What services need from the running app: settings as typed values, the node key, the
vocabulary. Views pass these into services so services never read Flask state."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app

from core.clinical import Vocabulary, load_vocabulary
from core.crypto import BoxKey, KdfParams, NodeKey, load_node_key
from core.encoding import b64e
from core.ledger import sign_transaction
from core.matching import HpoGraph, Tokenizer
from core.pre import EmergencyKey
from portal import consortium, embedded_ftp
from portal.consortium import GenesisFile
from portal.extensions import db
from portal.ftp import ArchiveStore, FtpTarget
from portal.models import epoch_ms
from portal.services import federation, ledger
from portal.services.chat import ChatLimits
from portal.services.context import NodeContext
from portal.services.matching import MatchingContext, MatchingKeys, ProfileIndex, RateLimits
from portal.services.network import Peers
from portal.services.records import Limits

_lock = threading.Lock()


def kdf() -> KdfParams:
    cfg = current_app.config
    return KdfParams(time_cost=cfg["ARGON2_TIME_COST"], memory_kib=cfg["ARGON2_MEMORY_KIB"])


def limits() -> Limits:
    cfg = current_app.config
    return Limits(max_attachment_bytes=cfg["MAX_ATTACHMENT_BYTES"], max_attachments=cfg["MAX_ATTACHMENTS"])


def vocabulary() -> Vocabulary:
    return load_vocabulary()


def _passphrase() -> bytes | None:
    value = current_app.config["NODE_KEY_PASSPHRASE"]
    return value.encode() if value else None


def emergency_key() -> EmergencyKey:
    """The hospital's break-glass key, loaded (or created) once per process."""
    cached = current_app.extensions.get("medledger.emergency_key")
    if cached is None:
        with _lock:
            cached = EmergencyKey.load_or_create(Path(current_app.config["EMERGENCY_KEY_PATH"]), _passphrase())
            current_app.extensions["medledger.emergency_key"] = cached
    return cached


def node() -> NodeContext:
    """This node as the use cases see it."""
    cfg = current_app.config
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def load_emergency_key() -> EmergencyKey:
        with app.app_context():
            return emergency_key()

    return NodeContext(
        node_id=node_key().node_id,
        tag_key=category_tag_key(),
        pre_threshold=cfg["PRE_THRESHOLD"],
        box_public=box_key().public,
        emergency_key=load_emergency_key,
        peers=peers(),
        default_grant_days=cfg["GRANT_DEFAULT_DAYS"],
        max_grant_days=cfg["GRANT_MAX_DAYS"],
        emergency_duration=timedelta(hours=cfg["EMERGENCY_HOURS"]),
    )


def category_tag_key() -> bytes:
    """The key of records' category tags: CATEGORY_TAG_KEY, which the member hospitals share, or
    one derived from SECRET_KEY for a node alone."""
    shared = current_app.config["CATEGORY_TAG_KEY"]
    return bytes.fromhex(shared) if shared else derived_key(b"medledger/category-tag/v1")


def box_key() -> BoxKey:
    """This node's box key (derived from its node key), for what other nodes seal to it."""
    cached = current_app.extensions.get("medledger.box_key")
    if cached is None:
        cached = BoxKey.of(node_key())
        current_app.extensions["medledger.box_key"] = cached
    return cached


def federation_self() -> federation.Self:
    return federation.Self(node_key().node_id, box_key())


def hospital_name() -> str:
    return current_app.config["HOSPITAL_NAME"] or node_key().node_id


def genesis_file() -> GenesisFile | None:
    """The consortium's genesis file, if this node belongs to one (loaded once per process)."""
    path = current_app.config["GENESIS_PATH"]
    if not path:
        return None
    cached = current_app.extensions.get("medledger.genesis")
    if cached is None:
        cached = consortium.read(Path(path))
        current_app.extensions["medledger.genesis"] = cached
    return cached


def peers() -> Peers | None:
    """The other nodes of this node's consortium (None for a consortium of one)."""
    genesis = genesis_file()
    if genesis is None:
        return None
    cached = current_app.extensions.get("medledger.peers")
    if cached is None:
        me = node_key().node_id
        cached = Peers(node_key(), {n: url for n, url in genesis.peers.items() if n != me})
        current_app.extensions["medledger.peers"] = cached
    return cached


def archive_url() -> str | None:
    """Where final blocks go: ARCHIVE_FTP_URL, else the embedded server of `make run`."""
    configured = current_app.config["ARCHIVE_FTP_URL"]
    if configured:
        return configured
    if os.environ.get("EMBEDDED_FTP") == "1":
        return embedded_ftp.url(Path(current_app.instance_path))
    return None


def archiving() -> bool:
    """Whether this node archives final blocks (without asking where: that may wait for the
    embedded server to come up)."""
    return bool(current_app.config["ARCHIVE_FTP_URL"]) or os.environ.get("EMBEDDED_FTP") == "1"


def archive_target_text() -> str | None:
    """The archive target for people: its URL with the password hidden."""
    url = archive_url()
    return str(FtpTarget.from_url(url)) if url else None


def archive_store() -> Callable[[], ArchiveStore] | None:
    """A factory of connections to the archive (None when archiving is off)."""
    url = archive_url()
    if url is None:
        return None
    target = FtpTarget.from_url(url, current_app.config["ARCHIVE_CA_FILE"])
    return lambda: ArchiveStore(target)


def max_skew_ms() -> int:
    """How far in the future a peer's block may be stamped: half a slot and half a second."""
    genesis = genesis_file()
    return (genesis.params.slot_ms if genesis else current_app.config["SLOT_MS"]) // 2 + 500


def ensure_chain(now: datetime) -> None:
    """Block 0: the consortium's genesis from its file, or a consortium of one made here."""
    genesis = genesis_file()
    key = node_key()
    if genesis is None:
        ledger.ensure_genesis(key, current_app.config["CHAIN_ID"], now, current_app.config["SLOT_MS"])
        publish_node_info(now)
        return
    founders = {n["id"]: n["key"] for n in genesis.block.transactions[0].payload["nodes"]}
    if key.node_id in founders and founders[key.node_id] != b64e(key.public_raw):
        raise RuntimeError(f"node {key.node_id} is a founder of this consortium, but with another key")
    if ledger.tip() is None:
        ledger.install(genesis.block, now)  # a joining node syncs from here until members admit it
    publish_node_info(now)


def publish_node_info(now: datetime) -> None:
    """Queue this node's `node_info` (box key, emergency key, hospital name) unless the ledger or
    the pool has it."""
    key = node_key()
    payload = {
        "node": key.node_id,
        "box": b64e(box_key().public),
        "emergency": b64e(emergency_key().public),
        "hospital": hospital_name(),
    }
    if ledger.has_node_info(key.key_id, payload):
        return
    ledger.queue(sign_transaction("node_info", payload, key, epoch_ms(now)), now)
    db.session.commit()


def node_key(create: bool = False) -> NodeKey:
    """This node's signing key, loaded once per process. With `create`, a missing key is made
    (used by `node init` and by the development and test setups)."""
    cached = current_app.extensions.get("medledger.node_key")
    if cached is not None:
        return cached
    with _lock:
        path = Path(current_app.config["NODE_KEY_PATH"])
        if not path.exists():
            if not (create or current_app.config["ENV_NAME"] != "production"):
                raise RuntimeError(f"no node key at {path}; run `flask --app wsgi medledger node init`")
            NodeKey.generate(current_app.config["NODE_ID"]).save(path, _passphrase())
        key = load_node_key(path, _passphrase())
        current_app.extensions["medledger.node_key"] = key
        return key


def matching_context() -> MatchingContext:
    """Keys, tokenizer and the per-process index (built once per app and process)."""
    cfg = current_app.config
    cached = current_app.extensions.get("medledger.matching")
    if cached is None:
        with _lock:
            cached = current_app.extensions.get("medledger.matching")
            if cached is None:
                keys = matching_keys()
                tokenizer = Tokenizer(keys.token, HpoGraph.load())
                cached = (keys, tokenizer, ProfileIndex(tokenizer))
                current_app.extensions["medledger.matching"] = cached
    keys, tokenizer, index = cached
    return MatchingContext(
        keys=keys,
        tokenizer=tokenizer,
        vocabulary=vocabulary(),
        index=index,
        threshold=cfg["MATCH_THRESHOLD"],
        limit=cfg["MATCH_LIMIT"],
        rates=RateLimits(
            connect=cfg["CONNECT_RATE_PER_HOUR"],
            profile=cfg["PROFILE_RATE_PER_HOUR"],
            match=cfg["MATCH_RATE_PER_HOUR"],
            block=cfg["BLOCK_RATE_PER_HOUR"],
            chat_key=cfg["CHAT_KEY_RATE_PER_HOUR"],
        ),
    )


def pseudonym_key() -> bytes:
    """The key that turns an account into its matching pseudonym."""
    return matching_keys().pseudonym


def matching_keys() -> MatchingKeys:
    """The matching token, profile sealing and pseudonym keys (derived once per app)."""
    keys = current_app.extensions.get("medledger.matching_keys")
    if keys is None:
        keys = MatchingKeys(
            token=derived_key(b"medledger/matching-token/v1"),
            profile=derived_key(b"medledger/symptom-profile/v1"),
            pseudonym=derived_key(b"medledger/pseudonym/v1"),
        )
        current_app.extensions["medledger.matching_keys"] = keys
    return keys


def derived_key(label: bytes) -> bytes:
    """A key for one purpose, HKDF-SHA256 of SECRET_KEY under `label`: never stored, so the
    database alone opens nothing it protects. Changing SECRET_KEY changes every such key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(
        current_app.config["SECRET_KEY"].encode()
    )


def chat_limits() -> ChatLimits:
    """Size and rate limits of the chat relay."""
    cfg = current_app.config
    return ChatLimits(
        max_envelope_bytes=cfg["CHAT_MAX_ENVELOPE_BYTES"],
        max_handshake_bytes=cfg["CHAT_MAX_HANDSHAKE_BYTES"],
        send_rate_per_minute=cfg["CHAT_SEND_RATE_PER_MINUTE"],
        max_undelivered=cfg["CHAT_MAX_UNDELIVERED"],
    )
