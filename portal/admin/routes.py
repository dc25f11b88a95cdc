from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from portal import runtime
from portal.admin import bp
from portal.auth import role_required
from portal.models import utcnow
from portal.services import accounts, ledger
from portal.services.errors import ServiceError


@bp.get("/users")
@role_required("admin")
def users() -> str:
    return render_template("admin/users.html", users=accounts.list_users(), pending=ledger.pending_count())


@bp.route("/doctors/new", methods=["GET", "POST"])
@role_required("admin")
def new_doctor() -> Response | str | tuple[str, int]:
    if request.method == "POST":
        form = request.form
        try:
            user = accounts.create_user(
                role="doctor",
                username=form.get("username"),
                password=form.get("password"),
                display_name=form.get("display_name"),
                hospital=form.get("hospital"),
                licence_number=form.get("licence_number"),
                kdf=runtime.kdf(),
                now=utcnow(),
            )
        except ServiceError as exc:
            flash(exc.message, "error")
            return render_template("admin/new_doctor.html", form=form), exc.status
        flash(f"Doctor {user.username} created with fresh keys.", "info")
        return redirect(url_for("admin.users"))
    return render_template("admin/new_doctor.html", form={})


@bp.post("/blocks")
@role_required("admin")
def produce_block() -> Response:
    height = ledger.produce_block(runtime.node_key(), utcnow(), current_app.config["MAX_BLOCK_TRANSACTIONS"])
    flash("Nothing was pending." if height is None else f"Sealed block {height}.", "info")
    return redirect(url_for("admin.users"))
