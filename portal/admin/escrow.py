"""The recovery desk: hospital-assisted recovery of a patient's or doctor's account
(services/escrow.py, docs/recovery.md). Every check is in the service; these views only parse
the form and show the answer. The recovery code is shown once, on the answer to 'issue'."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from portal.admin import bp
from portal.auth import page_actor, role_required
from portal.models import RecoveryCase, utcnow
from portal.services import accounts, escrow
from portal.services.errors import ServiceError


def _desk(status: int = 200, **page: Any) -> tuple[str, int]:
    admin = page_actor().user
    cases = escrow.desk_cases(admin)
    rows = [{"case": case, "account": escrow.account_of(case)} for case in cases]
    return render_template("admin/recoveries.html", rows=rows, me=admin, **page), status


@bp.get("/recoveries")
@role_required("admin")
def recoveries() -> tuple[str, int]:
    """Recovery cases under way: this hospital's own, and those waiting on its approval."""
    return _desk()


@bp.route("/recoveries/new/<account_id>", methods=["GET", "POST"])
@role_required("admin")
def open_recovery(account_id: str) -> Response | tuple[str, int]:
    """Open a case for an account of this hospital after checking the person's identity in person,
    signed with the admin's own key (opened from their session for this request only)."""
    actor = page_actor()
    admin = actor.user
    try:
        account = accounts.get_user(account_id)
    except ServiceError as exc:
        flash(exc.message, "error")
        return _desk(exc.status)
    if request.method == "GET":
        return _desk(opening=account, form={})
    form = request.form
    if form.get("confirm") != "yes":
        flash("Tick the box to confirm that you checked the person's identity document in person.", "error")
        return _desk(422, opening=account, form=form)
    try:
        case = escrow.open_case(admin, account_id, form.get("identity_check"), utcnow(), actor.keys())
    except ServiceError as exc:
        flash(exc.message, "error")
        return _desk(exc.status, opening=account, form=form)
    flash("Recovery case opened. It needs a second approval: another admin here, or the other hospital's.", "info")
    return redirect(url_for("admin.recoveries", _anchor=f"case-{case.id}"))


def _act(case_id: str, action: str) -> Response | tuple[str, int]:
    actor = page_actor()
    admin = actor.user
    try:
        if action == "approve":  # signed with the admin's own key, opened for this request only
            escrow.approve(admin, case_id, utcnow(), actor.keys())
            flash("Approved: the other share is here (or on its way to the home hospital).", "info")
        elif action == "announce":
            sent = escrow.announce(admin, case_id)
            flash(
                "The other hospital has the case for its admins' approval."
                if sent
                else "The other hospital did not take the case yet; try again in a minute.",
                "info" if sent else "error",
            )
        elif action == "cancel":
            escrow.cancel(admin, case_id)
            flash("Recovery case cancelled.", "info")
        else:
            case, code = escrow.issue_code(admin, case_id, utcnow())
            return _desk(issued=case, code=code, issued_account=escrow.account_of(case))
    except ServiceError as exc:
        flash(exc.message, "error")
        return _desk(exc.status)
    return redirect(url_for("admin.recoveries"))


@bp.post("/recoveries/<case_id>/approve")
@role_required("admin")
def approve_recovery(case_id: str) -> Response | tuple[str, int]:
    return _act(case_id, "approve")


@bp.post("/recoveries/<case_id>/issue")
@role_required("admin")
def issue_recovery(case_id: str) -> Response | tuple[str, int]:
    return _act(case_id, "issue")


@bp.post("/recoveries/<case_id>/announce")
@role_required("admin")
def announce_recovery(case_id: str) -> Response | tuple[str, int]:
    return _act(case_id, "announce")


@bp.post("/recoveries/<case_id>/cancel")
@role_required("admin")
def cancel_recovery(case_id: str) -> Response | tuple[str, int]:
    return _act(case_id, "cancel")


def case_label(case: RecoveryCase) -> str:
    """A case's state in words; an issued code past its time shows as expired (services/escrow.py)."""
    return {
        "open": "waiting for a second approval",
        "approved": "approved: issue the code",
        "issued": "code issued",
        "expired": "code expired: cancel this case and open a new one",
        "waiting": "waiting for your approval",
    }.get(escrow.case_state(case, utcnow()), case.status)


bp.add_app_template_filter(case_label, "recovery_state")
