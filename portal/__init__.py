"""The MedLedger portal: Flask app factory."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from apiflask import APIFlask
from flask import Flask

from portal.config import CONFIGS, INSTANCE, Config, persistent_dev_secret
from portal.extensions import db, login_manager, migrate, socketio


def create_app(config_class: type[Config] | None = None) -> Flask:
    """Build the app. Without an argument the class is chosen by MEDLEDGER_CONFIG
    (production, development or testing; production by default)."""
    if config_class is None:
        name = os.environ.get("MEDLEDGER_CONFIG", "production")
        if name not in CONFIGS:
            raise RuntimeError(f"MEDLEDGER_CONFIG must be one of {', '.join(CONFIGS)}")
        config_class = CONFIGS[name]
    # APIFlask is Flask that also builds the OpenAPI document from the API's schemas (portal/openapi.py);
    # its own error pages and document routes are off: portal/errors.py answers every error.
    app = APIFlask(
        __name__, instance_path=str(INSTANCE), title="MedLedger", version="1",
        spec_path=None, docs_path=None, json_errors=False,
    )  # fmt: skip
    app.config.from_object(config_class)
    if not app.config["SECRET_KEY"] and app.config["ENV_NAME"] == "development":
        app.config["SECRET_KEY"] = persistent_dev_secret()
    if not app.config["SECRET_KEY"]:
        raise RuntimeError("SECRET_KEY is not set: production refuses to start without it (see .env.example)")
    register_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_socketio(app)
    register_errors(app)
    register_security(app)
    register_templates(app)
    register_cli(app)
    return app


def register_logging(app: Flask) -> None:
    logging.basicConfig(level=app.config["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def register_extensions(app: Flask) -> None:
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if uri not in ("sqlite://", "sqlite:///:memory:"):  # an in-memory database has one connection, no pool
        pool = {"pool_size": app.config["DATABASE_POOL_SIZE"], "max_overflow": app.config["DATABASE_MAX_OVERFLOW"],
                "pool_timeout": app.config["DATABASE_POOL_TIMEOUT"]}  # fmt: skip
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {**pool, **app.config["SQLALCHEMY_ENGINE_OPTIONS"]}
    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(app.root_path), "migrations"))
    login_manager.init_app(app)
    from portal import auth, limits, runtime

    limits.init_app(app)

    auth.register_login(login_manager)
    # Projection of stored blocks (services/federation.py) asks for this node's id and box key.
    app.extensions["medledger.federation"] = runtime.federation_self


def register_blueprints(app: Flask) -> None:
    from portal import admin, api, auth, chain, chat, doctor, health, node, pwa

    for module in (api, auth, doctor, admin, chain, chat, node, pwa, health):
        app.register_blueprint(module.bp)
    from portal import openapi

    openapi.init_app(app)  # type: ignore[arg-type]


def register_socketio(app: Flask) -> None:
    """After the blueprints: the chat's event handlers must be declared before the server is made.
    Threads, as gunicorn's gthread workers; several processes relay through the message queue.
    One client's events are handled one after another, in the order sent."""
    socketio.init_app(
        app,
        async_mode="threading",
        message_queue=app.config["SOCKETIO_MESSAGE_QUEUE"] or None,
        channel=app.config["SOCKETIO_CHANNEL"],
        async_handlers=False,
        max_http_buffer_size=app.config["CHAT_MAX_ENVELOPE_BYTES"] + 16 * 1024,
    )


def register_errors(app: Flask) -> None:
    from portal.errors import register

    register(app)


def register_security(app: Flask) -> None:
    from portal.security import register

    register(app)


def register_templates(app: Flask) -> None:
    @app.template_filter("ms_utc")
    def ms_utc(ms: object) -> str:
        """Ledger timestamps (epoch milliseconds) as readable UTC."""
        if not isinstance(ms, int) or isinstance(ms, bool):
            return str(ms)
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def register_cli(app: Flask) -> None:
    from portal.cli import medledger

    app.cli.add_command(medledger)
