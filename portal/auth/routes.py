from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from werkzeug.wrappers import Response

from portal import runtime
from portal.auth import bp, page_actor
from portal.models import utcnow
from portal.services import accounts, chat, recovery, throttle, two_factor
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
def login() -> Response | str | tuple[str, int] | tuple[str, int, dict[str, str]]:
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
                otp=request.form.get("otp") or None,
            )
        except ServiceError as exc:
            flash(exc.message, "error")
            retry_after = getattr(exc, "retry_after", None)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            # Asked for the code: the form comes back with a field for it (the password is typed again).
            need_code = exc.code == "two_factor_required" or bool(request.form.get("otp"))
            page = render_template("auth/login.html", need_code=need_code, username=request.form.get("username", ""))
            return page, exc.status, headers
        token, user = signed_in.token, signed_in.session.user
        if user.role == "patient":
            # The portal holds no patient session and hands no token over (nothing to leak through a
            # URL or a log): the patient signs in once more in the app, which holds their keys.
            accounts.logout(token)
            return render_template("auth/patient_app.html", username=user.username)
        user.session_token = token
        session.clear()
        login_user(user)
        if signed_in.failed_attempts:
            flash(throttle.failed_attempts_notice(signed_in.failed_attempts, signed_in.last_failed_at), "error")
        for notice in recovery.take_notices(user):  # a doctor's password reset at the desk (docs/recovery.md)
            flash(
                f"Your password was reset without your old one on {notice['at']:%Y-%m-%d %H:%M} UTC. "
                "If that was not you, tell your hospital's administrator at once.",
                "error",
            )
        return _home()
    return render_template("auth/login.html")


@bp.route("/account/two-factor", methods=["GET", "POST"], endpoint="two_factor")
@login_required
def two_factor_page() -> Response | str | tuple[str, int]:
    actor = page_actor()
    user, roles = actor.user, two_factor.required_roles(current_app.config)
    label = f"{user.username}@{current_app.config['NODE_ID']}"
    view = {"required": two_factor.required(user, roles), "can_turn_off": not two_factor.required(user, roles)}
    if request.method == "POST":
        try:
            if request.form.get("action") == "confirm":
                codes = two_factor.confirm(user, actor.user_key(), request.form.get("code"), utcnow())
                flash("Two-factor sign-in is on.", "info")
                return render_template("auth/two_factor.html", codes=codes, **view)
            if request.form.get("action") == "off":
                two_factor.turn_off(user, actor.user_key(), request.form.get("code"), utcnow(), roles)
                flash("Two-factor sign-in is off.", "info")
                return redirect(url_for("auth.two_factor"))
        except ServiceError as exc:
            flash(exc.message, "error")
            enrolment = two_factor.pending(user, actor.user_key(), label)
            page = render_template(
                "auth/two_factor.html", enabled=two_factor.enabled(user), enrolment=enrolment,
                codes_left=two_factor.recovery_codes_left(user), **view,
            )  # fmt: skip
            return page, exc.status
    if two_factor.enabled(user):
        return render_template(
            "auth/two_factor.html", enabled=True, codes_left=two_factor.recovery_codes_left(user), **view
        )
    enrolment = two_factor.pending(user, actor.user_key(), label) or two_factor.begin(user, actor.user_key(), label)
    return render_template("auth/two_factor.html", enabled=False, enrolment=enrolment, **view)


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
