from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from werkzeug.wrappers import Response

from portal import runtime
from portal.auth import bp, page_actor
from portal.models import utcnow
from portal.services import accounts, chat, throttle
from portal.services.errors import ServiceError

HOME = {"doctor": "doctor.find_patient", "admin": "admin.users"}


def _home() -> Response:
    if current_user.is_authenticated and current_user.role in HOME:
        return redirect(url_for(HOME[current_user.role]))
    if current_user.is_authenticated:
        return redirect("/app/")
    return redirect(url_for("auth.login"))


@bp.get("/")
def index() -> Response:
    return _home()


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    if current_user.is_authenticated:
        return _home()
    if request.method == "POST":
        try:
            signed_in = accounts.login(
                request.form.get("username", ""),
                request.form.get("password", ""),
                kind="web",
                ttl_seconds=current_app.config["WEB_SESSION_TTL_SECONDS"],
                kdf=runtime.kdf(),
                now=utcnow(),
                address=request.remote_addr,
                policy=throttle.policy_from(current_app.config),
            )
        except ServiceError as exc:
            flash(exc.message, "error")
            retry_after = getattr(exc, "retry_after", None)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return render_template("auth/login.html"), exc.status, headers
        token, user = signed_in.token, signed_in.session.user
        if user.role == "patient":
            accounts.logout(token)
            flash("Patients use the MedLedger app.", "info")
            return redirect("/app/")
        user.session_token = token
        session.clear()
        login_user(user)
        if signed_in.failed_attempts:
            flash(throttle.failed_attempts_notice(signed_in.failed_attempts, signed_in.last_failed_at), "error")
        return _home()
    return render_template("auth/login.html")


@bp.post("/logout")
@login_required
def logout() -> Response:
    from portal.chat.events import end_session

    end_session(page_actor().token)
    accounts.logout(page_actor().token)
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password() -> Response | str:
    if request.method == "POST":
        from portal.chat.events import close_sockets

        actor = page_actor()
        others = chat.sockets_of_other_sessions(actor)
        try:
            accounts.change_password(
                actor, request.form.get("current_password"), request.form.get("new_password"), runtime.kdf()
            )
        except ServiceError as exc:
            flash(exc.message, "error")
            return render_template("auth/password.html"), exc.status
        close_sockets(others)  # their sessions have just ended
        flash("Password changed. Your other sessions have been signed out.", "info")
        return _home()
    return render_template("auth/password.html")
