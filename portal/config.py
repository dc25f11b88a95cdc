"""Configuration from the environment. Every setting is listed in `.env.example`."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = Path(os.environ.get("MEDLEDGER_INSTANCE", ROOT / "instance")).resolve()  # Flask wants it absolute
MIB = 1024 * 1024


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def persistent_dev_secret() -> str:
    """A secret kept under instance/ so local sessions survive restarts; never used in production."""
    path = INSTANCE / "dev-secret-key"
    if not path.exists():
        INSTANCE.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


class Config:
    """Production settings: nothing secret has a default."""

    ENV_NAME = "production"
    SECRET_KEY = os.environ.get("SECRET_KEY")
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL", f"sqlite:///{INSTANCE / 'medledger.db'}")
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    # Database connections per process (docs/ledger.md, "One node, several servers"): DATABASE_POOL_SIZE
    # kept open, DATABASE_MAX_OVERFLOW more under load, and a request that waits DATABASE_POOL_TIMEOUT
    # seconds for one is answered 503 with Retry-After. PostgreSQL's max_connections must hold every
    # process's pool plus overflow (2 workers x 30 by default).
    DATABASE_POOL_SIZE = int(os.environ.get("DATABASE_POOL_SIZE", "10"))
    DATABASE_MAX_OVERFLOW = int(os.environ.get("DATABASE_MAX_OVERFLOW", "20"))
    DATABASE_POOL_TIMEOUT = float(os.environ.get("DATABASE_POOL_TIMEOUT", "30"))

    NODE_ID = os.environ.get("NODE_ID", "node-1")
    NODE_KEY_PATH = os.environ.get("NODE_KEY_PATH", str(INSTANCE / "node.key"))
    NODE_KEY_PASSPHRASE = os.environ.get("NODE_KEY_PASSPHRASE")
    CHAIN_ID = os.environ.get("CHAIN_ID", "medledger-local")
    # A consortium's genesis file (see docs/consensus.md); without it the node is a consortium of one.
    GENESIS_PATH = os.environ.get("GENESIS_PATH")
    SLOT_MS = _int("SLOT_MS", 250)
    BLOCK_INTERVAL_SECONDS = float(os.environ.get("BLOCK_INTERVAL_SECONDS", 5))
    MAX_BLOCK_TRANSACTIONS = _int("MAX_BLOCK_TRANSACTIONS", 500)

    # Where final blocks are archived (docs/archive.md): ftp://user:password@host:21/path or ftps://...
    ARCHIVE_FTP_URL = os.environ.get("ARCHIVE_FTP_URL")
    ARCHIVE_CA_FILE = os.environ.get("ARCHIVE_CA_FILE")
    ARCHIVE_INTERVAL_SECONDS = float(os.environ.get("ARCHIVE_INTERVAL_SECONDS", 5))
    # How often the producer asks the archive and the peers what is final, to see a chain that
    # lost its newest blocks (docs/ledger.md "A chain shorter than what is final").
    CHAIN_CHECK_SECONDS = float(os.environ.get("CHAIN_CHECK_SECONDS", 30))
    # How often a producer that follows tries to lead its node's producer and archiver (docs/ledger.md,
    # "One node, several servers"): the longest a node goes without a producer once the leader died.
    LEADER_RETRY_SECONDS = float(os.environ.get("LEADER_RETRY_SECONDS", 1))
    # A leading producer whose heartbeat is older than this hangs: /healthz says `stalled` and a
    # follower ends its database connections and leads (docs/ledger.md, "Leader election").
    LEADER_STALE_SECONDS = float(os.environ.get("LEADER_STALE_SECONDS", 10))

    EMERGENCY_KEY_PATH = os.environ.get("EMERGENCY_KEY_PATH", str(INSTANCE / "emergency.key"))
    # Proxy re-encryption across the member nodes (docs/federation.md): a grant's key fragments go
    # to every member node (n), and any PRE_THRESHOLD of them re-encrypt; 0 means n // 2 + 1.
    PRE_THRESHOLD = _int("PRE_THRESHOLD", 0)
    # The hospital's name as other nodes show it (published on the ledger); the node id if unset.
    HOSPITAL_NAME = os.environ.get("HOSPITAL_NAME")
    # The category tag key the member hospitals share (hex, set at founding, docs/federation.md), so
    # that any member can check a grant's scope on any record; derived from SECRET_KEY if unset.
    CATEGORY_TAG_KEY = os.environ.get("CATEGORY_TAG_KEY")
    GRANT_DEFAULT_DAYS = _int("GRANT_DEFAULT_DAYS", 30)
    GRANT_MAX_DAYS = _int("GRANT_MAX_DAYS", 365)
    EMERGENCY_HOURS = float(os.environ.get("EMERGENCY_HOURS", 4))

    MAX_ATTACHMENT_BYTES = _int("MAX_ATTACHMENT_BYTES", 10 * MIB)
    MAX_ATTACHMENTS = _int("MAX_ATTACHMENTS", 5)
    # base64 in JSON costs 4/3; leave room for the rest of the record.
    MAX_CONTENT_LENGTH = _int("MAX_REQUEST_BYTES", 0) or (MAX_ATTACHMENT_BYTES * MAX_ATTACHMENTS * 4 // 3 + MIB)

    API_TOKEN_TTL_SECONDS = _int("API_TOKEN_TTL_SECONDS", 12 * 3600)
    WEB_SESSION_TTL_SECONDS = _int("WEB_SESSION_TTL_SECONDS", 8 * 3600)
    ARGON2_TIME_COST = _int("ARGON2_TIME_COST", 3)
    ARGON2_MEMORY_KIB = _int("ARGON2_MEMORY_KIB", 65536)

    # Sign-out after inactivity (docs/security.md): portal pages, and the app's API tokens; each
    # warns IDLE_WARNING_SECONDS before. Activity is a request with the session (a page, an API call).
    PORTAL_IDLE_MINUTES = float(os.environ.get("PORTAL_IDLE_MINUTES", 15))
    APP_IDLE_MINUTES = float(os.environ.get("APP_IDLE_MINUTES", 30))
    IDLE_WARNING_SECONDS = _int("IDLE_WARNING_SECONDS", 60)

    # Reverse proxies in front of gunicorn whose X-Forwarded-For/-Proto/-Host/-Port are believed
    # (0: none). Behind one TLS-terminating proxy set 1 and PREFERRED_URL_SCHEME=https: requests
    # it got over https are then seen as https, and answered with Strict-Transport-Security.
    TRUSTED_PROXIES = _int("TRUSTED_PROXIES", 0)
    PREFERRED_URL_SCHEME = os.environ.get("PREFERRED_URL_SCHEME", "http")
    HSTS_SECONDS = _int("HSTS_SECONDS", 365 * 24 * 3600)  # 0: never sent

    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = os.environ.get("SESSION_COOKIE_SECURE", "1") == "1"
    PERMANENT_SESSION_LIFETIME = WEB_SESSION_TTL_SECONDS

    # Matching and chat (docs/api.md "Matching and chat"). The matching, profile and pseudonym
    # keys are derived from SECRET_KEY with HKDF (one label each): changing SECRET_KEY makes
    # stored profiles unreadable and changes every pseudonym.
    MATCH_THRESHOLD = float(os.environ.get("MATCH_THRESHOLD", 0.5))
    MATCH_LIMIT = _int("MATCH_LIMIT", 50)
    CONNECT_RATE_PER_HOUR = _int("CONNECT_RATE_PER_HOUR", 10)
    PROFILE_RATE_PER_HOUR = _int("PROFILE_RATE_PER_HOUR", 30)
    MATCH_RATE_PER_HOUR = _int("MATCH_RATE_PER_HOUR", 120)
    BLOCK_RATE_PER_HOUR = _int("BLOCK_RATE_PER_HOUR", 30)
    CHAT_KEY_RATE_PER_HOUR = _int("CHAT_KEY_RATE_PER_HOUR", 10)
    CHAT_MAX_UNDELIVERED = _int("CHAT_MAX_UNDELIVERED", 500)
    CHAT_SEND_RATE_PER_MINUTE = _int("CHAT_SEND_RATE_PER_MINUTE", 120)
    CHAT_MAX_ENVELOPE_BYTES = _int("CHAT_MAX_ENVELOPE_BYTES", 64 * 1024)
    CHAT_MAX_HANDSHAKE_BYTES = _int("CHAT_MAX_HANDSHAKE_BYTES", 4 * 1024)
    # The front door (docs/security.md, *Abuse limits*). Rate counters live in Redis when
    # REDIS_URL is set (shared by every server of the node), else in each process's memory.
    REDIS_URL = os.environ.get("REDIS_URL", "")
    # Registrations per client address (Flask-Limiter syntax: "N per minute|hour|day", ";" between).
    REGISTER_RATE_LIMIT = os.environ.get("REGISTER_RATE_LIMIT", "5 per hour;20 per day")
    # Sign-in throttling per account name and per client address (the address gets
    # LOGIN_ADDRESS_FACTOR times the numbers): LOGIN_FREE failures answered at once, then a wait
    # doubling from 1 s per failure, then a lock of LOGIN_LOCKOUT_SECONDS at LOGIN_LOCKOUT
    # failures; LOGIN_WINDOW_SECONDS without failures forgets them.
    LOGIN_FREE = _int("LOGIN_FREE", 3)
    LOGIN_LOCKOUT = _int("LOGIN_LOCKOUT", 10)
    LOGIN_LOCKOUT_SECONDS = _int("LOGIN_LOCKOUT_SECONDS", 900)
    LOGIN_WINDOW_SECONDS = _int("LOGIN_WINDOW_SECONDS", 900)
    LOGIN_ADDRESS_FACTOR = _int("LOGIN_ADDRESS_FACTOR", 5)
    # Roles that must sign in with a second factor (TOTP; docs/security.md): production asks it of
    # doctors and admins; patients may turn it on. Comma-separated; empty: nobody must.
    TWO_FACTOR_REQUIRED_ROLES = os.environ.get("TWO_FACTOR_REQUIRED_ROLES", "doctor,admin")
    # Request bodies: every route but record uploads (MAX_REQUEST_BYTES) and node-to-node calls.
    SMALL_BODY_BYTES = _int("SMALL_BODY_BYTES", 64 * 1024)
    NODE_MAX_BODY_BYTES = _int("NODE_MAX_BODY_BYTES", 16 * MIB)
    # Socket.IO between several gunicorn workers or servers: a Redis URL, e.g. redis://127.0.0.1:6379/0.
    SOCKETIO_MESSAGE_QUEUE = os.environ.get("SOCKETIO_MESSAGE_QUEUE", "")
    # The queue's channel: one per node when several nodes share a Redis server.
    SOCKETIO_CHANNEL = os.environ.get("SOCKETIO_CHANNEL", "medledger-chat")

    LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")


class DevConfig(Config):
    """`make run`: embedded defaults, demo data allowed, plain-HTTP cookies on loopback."""

    ENV_NAME = "development"
    SECRET_KEY = os.environ.get("SECRET_KEY")  # else create_app uses instance/dev-secret-key
    TWO_FACTOR_REQUIRED_ROLES = os.environ.get("TWO_FACTOR_REQUIRED_ROLES", "")  # demo accounts sign in at once
    SESSION_COOKIE_SECURE = False


class TestConfig(Config):
    """Tests: a database per test, cheap password hashing, no background work."""

    ENV_NAME = "testing"
    TESTING = True
    SECRET_KEY = "test-secret-key-not-for-production"  # noqa: S105 (tests only)
    SQLALCHEMY_DATABASE_URI = os.environ.get("TEST_DATABASE_URL", "sqlite://")
    SESSION_COOKIE_SECURE = False
    ARGON2_TIME_COST = 1
    ARGON2_MEMORY_KIB = 1024
    MAX_ATTACHMENT_BYTES = 64 * 1024
    MAX_CONTENT_LENGTH = 512 * 1024
    REGISTER_RATE_LIMIT = "1000 per minute"  # fixtures register many accounts; tests of the limit lower it
    TWO_FACTOR_REQUIRED_ROLES = ""  # tests of two-factor sign-in set it


CONFIGS: dict[str, type[Config]] = {"production": Config, "development": DevConfig, "testing": TestConfig}
