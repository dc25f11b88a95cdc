"""Sign-out after inactivity (docs/security.md): the portal's pages after PORTAL_IDLE_MINUTES (15),
the app's API tokens after APP_IDLE_MINUTES (30), enforced by the server; the browser is told
when, so that the portal and the app warn IDLE_WARNING_SECONDS (60) before.

A session's `expires_at` is its idle deadline: the earlier of its end (created + the session's
lifetime, WEB_SESSION_TTL_SECONDS or API_TOKEN_TTL_SECONDS) and its last activity + its idle
limit. A new session starts one idle limit from its creation (`_start_idle_clock`), and each
request made with it (a page, an API call, the portal's keep-alive) moves the deadline on. So
`accounts.resolve` refuses an idle session everywhere it is used, chat sockets included. On pages
and API calls this module says why first: the session is ended, a page goes to the sign-in page
with "You were signed out after 15 minutes without activity", an API call gets 401
`session_idle`. A session that reached the end of its lifetime is left to the usual answers.

Answers to requests with a live session carry `X-Session-Expires-In` (seconds to the deadline)
and `X-Session-Warning-Seconds`. `GET /session/status` reads the deadline without moving it (a
portal tab asks it before warning, as another tab may have been busy); `POST
/session/keep-alive` moves it (the warning's "Stay signed in").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import Flask, Response, current_app, flash, g, has_app_context, jsonify, redirect, request, session, url_for
from flask_login import current_user, logout_user
from sqlalchemy import event, update

from portal.extensions import db
from portal.models import AuthSession, utcnow
from portal.services import accounts
from portal.services.errors import Unauthorized

STATUS, KEEP_ALIVE = "/session/status", "/session/keep-alive"
EXPIRES_HEADER, WARNING_HEADER = "X-Session-Expires-In", "X-Session-Warning-Seconds"
_QUIET_ENDPOINTS = {"session_status"}  # checked, but not counted as activity


class SessionIdle(Unauthorized):
    code = "session_idle"


def idle_limit(kind: str) -> timedelta:
    """How long a session of `kind` ("web": the portal's cookie; else an API token) may be idle."""
    minutes = current_app.config["PORTAL_IDLE_MINUTES" if kind == "web" else "APP_IDLE_MINUTES"]
    return timedelta(minutes=minutes)


def lifetime(kind: str) -> timedelta:
    return timedelta(
        seconds=current_app.config["WEB_SESSION_TTL_SECONDS" if kind == "web" else "API_TOKEN_TTL_SECONDS"]
    )


def _start_idle_clock(_mapper: Any, _connection: Any, target: AuthSession) -> None:
    """A new session is idle from its creation on: its deadline is at most one idle limit away."""
    if has_app_context() and target.expires_at is not None:
        created = target.created_at or utcnow()
        target.expires_at = min(target.expires_at, created + idle_limit(target.kind))


def _request_token() -> str | None:
    """The session token of this request: a bearer token, else (outside the API, which never reads
    cookies) the portal's, which Flask-Login keeps in the signed session cookie."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.path.startswith("/api/"):
        return None
    found = session.get("_user_id")
    return found if isinstance(found, str) else None


def _minutes(limit: timedelta) -> str:
    minutes = limit.total_seconds() / 60
    shown = f"{minutes:g}" if minutes < 10 else f"{round(minutes)}"
    return f"{shown} minute{'' if shown == '1' else 's'}"


def _enforce() -> Response | None:
    if request.endpoint == "static":
        return None
    token = _request_token()
    if token is None or not 20 <= len(token) <= 100:
        return None  # no session, or none a token can name: the usual answers
    row = accounts.find_session(token)
    if row is None:
        return None
    now, limit = utcnow(), idle_limit(row.kind)
    end = row.created_at + lifetime(row.kind)
    if row.expires_at <= now:
        return _signed_out(token, limit) if row.expires_at < end else None
    deadline = row.expires_at
    if request.endpoint not in _QUIET_ENDPOINTS:
        moved = min(end, now + limit)  # earlier too, when a limit has been lowered since
        # Written when it moves by a sixtieth of the limit or more: not a write per request.
        if abs(moved - deadline) >= max(limit / 60, timedelta(seconds=1)):
            db.session.execute(update(AuthSession).where(AuthSession.id == row.id).values(expires_at=moved))
            db.session.commit()
            deadline = moved
    g.session_deadline = deadline
    return None


def _signed_out(token: str, limit: timedelta) -> Response:
    """End an idle session for good and say so: 401 `session_idle` to the API and to the portal's
    scripts, the sign-in page with the reason to a page. (Chat sockets opened with it are refused
    at their next event, which checks the session again.)"""
    accounts.logout(token)
    message = f"You were signed out after {_minutes(limit)} without activity. Sign in again."
    if request.path.startswith("/api/"):
        raise SessionIdle(message)
    logout_user()
    session.clear()
    flash(message, "info")  # for the sign-in page, which a portal script goes to after a 401 here
    if request.path in (STATUS, KEEP_ALIVE):
        return _json_error(SessionIdle(message))
    return redirect(url_for("auth.login"))


def _json_error(error: Unauthorized) -> Response:
    answer = jsonify(error={"code": error.code, "message": error.message, "login": url_for("auth.login")})
    answer.status_code = error.status
    return answer


def _announce(response: Response) -> Response:
    deadline: datetime | None = g.get("session_deadline")
    if deadline is not None:
        response.headers[EXPIRES_HEADER] = str(max(0, int((deadline - utcnow()).total_seconds())))
        response.headers[WARNING_HEADER] = str(current_app.config["IDLE_WARNING_SECONDS"])
    return response


def _deadline_json() -> Response:
    """The signed-in portal session's seconds to sign-out (the headers carry them too)."""
    deadline: datetime | None = g.get("session_deadline")
    if deadline is None or not current_user.is_authenticated:
        return _json_error(Unauthorized("You are signed out. Sign in again."))
    return jsonify(
        expires_in=max(0, int((deadline - utcnow()).total_seconds())),
        warning_seconds=current_app.config["IDLE_WARNING_SECONDS"],
    )


def _page_settings() -> dict[str, Any]:
    """What base.html gives the portal's warning script (static/idle.js)."""
    deadline: datetime | None = g.get("session_deadline")
    if deadline is None:
        return {"idle_logoff": None}
    return {
        "idle_logoff": {
            "expires_in": max(0, int((deadline - utcnow()).total_seconds())),
            "warning_seconds": current_app.config["IDLE_WARNING_SECONDS"],
            "status_url": STATUS,
            "keep_alive_url": KEEP_ALIVE,
            "login_url": url_for("auth.login"),
        }
    }


def register(app: Flask) -> None:
    if not event.contains(AuthSession, "before_insert", _start_idle_clock):
        event.listen(AuthSession, "before_insert", _start_idle_clock)
    app.before_request(_enforce)
    app.after_request(_announce)
    app.context_processor(_page_settings)
    app.add_url_rule(STATUS, "session_status", _deadline_json, methods=["GET"])
    app.add_url_rule(KEEP_ALIVE, "session_keep_alive", _deadline_json, methods=["POST"])
