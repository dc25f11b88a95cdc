from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from portal import runtime
from portal.admin import bp
from portal.auth import page_actor, role_required
from portal.models import utcnow
from portal.services import accounts, grants, ledger
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
    height = ledger.seal_pending(runtime.node_key(), current_app.config["MAX_BLOCK_TRANSACTIONS"])
    flash("Nothing was pending." if height is None else f"Sealed block {height}.", "info")
    return redirect(url_for("admin.users"))


def _emergencies_page() -> str:
    node = runtime.node()
    now = utcnow()
    items = [
        {"emergency": e, "reason": grants.emergency_reason(e, node=node), "active": e.expires_at > now}
        for e in grants.emergencies_to_review()
    ]
    unreviewed = sum(1 for item in items if item["emergency"].reviewed_at is None)
    return render_template("admin/emergencies.html", items=items, unreviewed=unreviewed)


@bp.get("/emergencies")
@role_required("admin")
def emergencies() -> str:
    return _emergencies_page()


@bp.post("/emergencies/<emergency_id>/review")
@role_required("admin")
def review_emergency(emergency_id: str) -> Response | tuple[str, int]:
    try:
        emergency = grants.review_emergency(page_actor(), emergency_id, now=utcnow())
    except ServiceError as exc:
        flash(exc.message, "error")
        return _emergencies_page(), exc.status
    flash(f"Marked the emergency access by {emergency.doctor.display_name} as reviewed.", "info")
    return redirect(url_for("admin.emergencies"))
