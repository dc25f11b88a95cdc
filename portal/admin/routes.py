from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from portal import runtime
from portal.admin import bp
from portal.auth import page_actor, role_required
from portal.models import utcnow
from portal.services import accounts, archive, grants, ledger, paging, two_factor, votes
from portal.services.errors import ServiceError


@bp.get("/users")
@role_required("admin")
def users() -> str:
    page = accounts.page_users(page_actor().user, *paging.bounds(request.args.get("limit"), request.args.get("offset")))
    return render_template("admin/users.html", users=page.items, page=page, pending=ledger.pending_count())


@bp.post("/users/<account_id>/two-factor/reset")
@role_required("admin")
def reset_two_factor(account_id: str) -> Response | tuple[str, int]:
    """A doctor lost their authenticator: they set it up again at their next sign-in (logged)."""
    try:
        doctor = two_factor.reset(page_actor().user, account_id, utcnow())
    except ServiceError as exc:
        flash(exc.message, "error")
        return users(), exc.status
    flash(f"Two-factor sign-in reset for {doctor.display_name}: they set it up again at their next sign-in.", "info")
    return redirect(url_for("admin.users"))


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
                home=runtime.node_key(),
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


@bp.app_context_processor
def emergencies_waiting() -> dict[str, int]:
    """For the admin's navigation: how many emergency accesses by this hospital's doctors wait for review."""
    if not (current_user.is_authenticated and current_user.role == "admin"):
        return {}
    waiting = sum(1 for e in grants.emergencies_to_review(runtime.node().node_id) if e.reviewed_at is None)
    return {"emergencies_waiting": waiting}


def _emergencies_page() -> str:
    node = runtime.node()
    now = utcnow()
    items = [
        {"emergency": e, "reason": grants.emergency_reason(e, node=node), "active": grants.emergency_active(e, now)}
        for e in grants.emergencies_to_review(node.node_id)
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


# -- consensus ----------------------------------------------------------------------------------

PEER_WAIT_SECONDS = 1.5  # each call has its own 1 s timeout; this bounds the wait for the pool


def _peer_row(peer: str, answer: object, height: int) -> dict[str, Any]:
    """A peer's health as its /node/v1/status tells it (anything malformed counts as unreachable)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("height"), int):
        return {"node": peer, "reachable": False}
    tip, final = answer.get("tip"), answer.get("final")
    return {
        "node": peer,
        "reachable": True,
        "height": answer["height"],
        "tip": tip if isinstance(tip, str) else None,
        "final": final if isinstance(final, int) else None,
        "behind": height - answer["height"],
    }


def _peer_health(height: int) -> list[dict[str, Any]] | None:
    """Each peer's status, asked in parallel; None for a consortium of one."""
    peers = runtime.peers()
    if peers is None:
        return None
    asked: dict[str, Future[Any]] = {p: peers.pool.submit(peers.get, p, "/node/v1/status") for p in sorted(peers.urls)}
    rows = []
    for peer, future in asked.items():
        try:
            answer = future.result(timeout=PEER_WAIT_SECONDS)
        except Exception:  # a timeout or a failure inside the call: the peer is unreachable
            answer = None
        rows.append(_peer_row(peer, answer, height))
    return rows


def _consensus_page(status: int = 200) -> tuple[str, int]:
    actor = page_actor()
    now = utcnow()
    state = ledger.consensus_status(now)
    limit = state["params"]["delegates"]
    for candidate in state["candidates"]:
        candidate["percent"] = f"{candidate['reliability'] / 10:g}"
        banned = candidate["banned_until_epoch"]
        candidate["sitting_out"] = banned is not None and banned > state["epoch"]
    page = render_template(
        "admin/consensus.html",
        node_id=runtime.node_key().node_id,
        status=state,
        peers=_peer_health(state["height"]),
        limit=limit,
        my_vote=votes.current_vote(actor) or [],
    )
    return page, status


@bp.get("/consensus")
@role_required("admin")
def consensus() -> tuple[str, int]:
    return _consensus_page()


@bp.post("/consensus/vote")
@role_required("admin")
def vote() -> Response | tuple[str, int]:
    try:
        votes.cast_vote(page_actor(), request.form.getlist("nodes"), now=utcnow())
    except ServiceError as exc:
        flash(exc.message, "error")
        return _consensus_page(exc.status)
    flash("Vote recorded; it counts from the next epoch once in a block.", "info")
    return redirect(url_for("admin.consensus"))


@bp.get("/archive")
@role_required("admin")
def archive_status() -> str:
    return render_template("admin/archive.html", status=archive.status(utcnow()), target=runtime.archive_target_text())


# -- front desk: patients' identity ---------------------------------------------------------------


def _patients_page(query: str, patient: Any = None, form: Any = None, status: int = 200) -> tuple[str, int]:
    found, error = [], None
    if query:
        try:
            found = accounts.find_users("patient", query)
        except ServiceError as exc:
            error, status = exc.message, exc.status
    page = render_template(
        "admin/patients.html", query=query, patients=found, error=error, patient=patient, form=form or {}
    )
    return page, status


@bp.get("/patients")
@role_required("admin")
def patients() -> tuple[str, int]:
    """The front desk finds a patient of this hospital to check their identity in person."""
    return _patients_page(request.args.get("q", "").strip())


@bp.route("/patients/<patient_id>", methods=["GET", "POST"])
@role_required("admin")
def verify_patient(patient_id: str) -> Response | tuple[str, int]:
    """Record that the patient's identity was checked in person, with their hospital number."""
    admin = page_actor().user
    try:
        patient = accounts.patient_for_desk(admin, patient_id)
    except ServiceError as exc:
        flash(exc.message, "error")
        return _patients_page("", status=exc.status)
    if request.method == "GET":
        return _patients_page("", patient=patient)
    form = request.form
    if form.get("confirm") != "yes":
        flash("Tick the box to confirm that you checked the patient's identity document in person.", "error")
        return _patients_page("", patient=patient, form=form, status=422)
    try:
        accounts.verify_in_person(admin, patient_id, form.get("mrn"), utcnow(), form.get("date_of_birth") or None)
    except ServiceError as exc:
        flash(exc.message, "error")
        return _patients_page("", patient=patient, form=form, status=exc.status)
    flash(f"Identity of {patient.display_name} checked in person; hospital number {patient.mrn}.", "info")
    return redirect(url_for("admin.patients", q=patient.username))
