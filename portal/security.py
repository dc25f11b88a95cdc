"""Response headers and CSRF protection for the cookie-authenticated pages, the reverse proxy,
the owner-only database files, and sign-out after inactivity (portal/idle.py).

The API is bearer-token only, so it needs no CSRF token; the pages check one on
every unsafe request. Strict-Transport-Security goes only on answers to https requests: an
https request is one that reached gunicorn over TLS or, behind TRUSTED_PROXIES reverse proxies,
one whose proxy says so (X-Forwarded-Proto); never one over plain http.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from flask import Flask, Response, abort, current_app, request, session
from sqlalchemy.engine import make_url
from werkzeug.middleware.proxy_fix import ProxyFix

CSP = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'; connect-src 'self'"
)
# The patient app shows a PDF attachment in a frame from an object URL of the bytes it fetched
# with its token (pwa/views.js); it frames nothing else. The portal's pages frame only this site
# (default-src 'self'): its record page frames the attachment's own inline answer.
APP_CSP = f"{CSP}; frame-src blob:"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _check_csrf() -> None:
    if request.method not in UNSAFE or request.path.startswith(("/api/", "/node/")):
        return
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    if not hmac.compare_digest(sent, session.get("csrf", "")) or not sent:
        abort(400, "The form has expired; reload the page and try again.")


def _headers(response: Response) -> Response:
    app = request.path.startswith("/app/")
    response.headers.setdefault("Content-Security-Policy", APP_CSP if app else CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # DENY unless the answer says otherwise: only an attachment's inline preview, which the
    # portal's record page frames (portal/attachments.py), is SAMEORIGIN.
    response.headers.setdefault("X-Frame-Options", "DENY")
    if not app or request.path.endswith((".html", "/")):
        response.headers.setdefault("Cache-Control", "no-store")
    hsts = current_app.config["HSTS_SECONDS"]
    if request.is_secure and hsts > 0:
        response.headers["Strict-Transport-Security"] = f"max-age={hsts}; includeSubDomains"
    return response


def private_files(app: Flask) -> None:
    """The instance folder owner-only (0700), and a SQLite database file owner-only (0600) before
    SQLite first opens it: its -wal and -shm files take the database file's mode. Existing ones
    are tightened too."""
    instance = Path(app.instance_path)
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    name = url.database if url.get_backend_name() == "sqlite" else None
    database = Path(name).absolute() if name and name != ":memory:" and not name.startswith("file:") else None
    if database is not None and database.parent.resolve() == instance.resolve():
        instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    _owner_only(instance, 0o700)
    if database is None:
        return
    database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(database, os.O_RDWR | os.O_CREAT, 0o600))
    for path in (database, *(Path(f"{database}-{suffix}") for suffix in ("wal", "shm", "journal"))):
        _owner_only(path, 0o600)


def _owner_only(path: Path, mode: int) -> None:
    """Tighten `path` to `mode` if it exists and this process owns it (else it is not ours to change)."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return
    if found.st_uid == os.geteuid() and found.st_mode & 0o777 != mode:
        path.chmod(mode)


def register(app: Flask) -> None:
    hops = app.config["TRUSTED_PROXIES"]
    if hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)  # type: ignore[method-assign]
    private_files(app)
    app.before_request(_check_csrf)
    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    from portal import idle

    idle.register(app)
