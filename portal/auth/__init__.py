"""Sign-in for the portal's pages (session cookie holding a server-side session token)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, abort, current_app, flash, g, redirect, url_for
from flask_login import LoginManager, login_required

from portal.models import User, utcnow
from portal.services import accounts, two_factor
from portal.services.accounts import Actor

bp = Blueprint("auth", __name__)


def register_login(manager: LoginManager) -> None:
    manager.login_view = "auth.login"
    manager.login_message = "Please log in to continue."
    manager.login_message_category = "info"
    manager.session_protection = "strong"

    @manager.user_loader
    def load(token: str) -> User | None:
        actor = accounts.resolve(token, utcnow())
        if actor is None:
            return None
        g.actor = actor
        return actor.user


def page_actor() -> Actor:
    """The signed-in actor of this page request (use under `login_required`)."""
    return g.actor


def role_required(*roles: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Sign-in required and the account must have one of `roles`, else 403."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        @login_required
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = page_actor().user
            if user.role not in roles:
                abort(403, "Your account may not open this page.")
            if two_factor.required(user, two_factor.required_roles(current_app.config)) and not two_factor.enabled(
                user
            ):
                flash("Set up two-factor sign-in to go on: it is required for your account.", "info")
                return redirect(url_for("auth.two_factor"))
            return view(*args, **kwargs)

        return wrapped

    return decorator


from portal.auth import routes  # noqa: E402,F401
