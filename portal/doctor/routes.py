from __future__ import annotations

import re
import uuid
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from portal import runtime
from portal.attachments import send_attachment, send_fhir
from portal.auth import page_actor, role_required
from portal.doctor import bp, codes
from portal.idempotency import idempotent
from portal.models import utcnow
from portal.services import accounts, federation, fhir, grants, paging, records
from portal.services.errors import Forbidden, NotFound, ServiceError, ValidationFailed
from portal.services.fhir import FhirRejected
from portal.services.inputs import InvalidJSON
from portal.services.records import CATEGORIES, NewAttachment

MAX_QUERY = 100  # characters, as the search field allows
CONSORTIUM_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ID_LIKE = re.compile(r"[0-9a-f-]{24,}")  # no name or username looks like this: an id cut short or mistyped
NO_BUNDLE = "Choose the FHIR Bundle to import: a JSON file exported from another health record system."
NOT_JSON = "The file is not a FHIR Bundle in JSON; only FHIR's JSON form is read, not its XML form."
UNKNOWN_ID = (
    "No patient of any member hospital has this id. Check it with the patient: an account made in the "
    "last few seconds may not have reached this hospital yet."
)


def _parse_query(raw: str) -> str:
    """The search as typed, pasted or scanned, refused before it reaches the database if it
    cannot be a name or an id (too long, control characters, lone surrogates)."""
    query = raw.strip()
    if len(query) > MAX_QUERY:
        raise ValidationFailed(f"Search for at most {MAX_QUERY} characters: a name, a username or a patient's id.")
    if not query.isprintable():
        raise ValidationFailed("Search for a name, a username or a patient's id, in plain characters.")
    lowered = query.lower()  # an id read back or typed in capitals is still the id
    if CONSORTIUM_ID.fullmatch(lowered):
        return lowered
    if ID_LIKE.fullmatch(lowered):
        raise ValidationFailed(
            "This is not a whole patient id: an id has 36 characters in five groups, "
            "like 1b4e28ba-2fa1-11d2-883f-0016d3cca427. Scan or paste it from the patient's app."
        )
    return query


@bp.get("/patients")
@role_required("doctor")
def find_patient() -> tuple[str, int]:
    """Patients of this hospital by name; a patient of any member hospital by consortium id
    (patients are searchable by name only at home), named by their home node."""
    query, patients, found, error, status = "", [], None, None, 200
    try:
        query = _parse_query(request.args.get("q", ""))
        if CONSORTIUM_ID.fullmatch(query):
            found = federation.patient_card(
                federation.resolve(accounts.get_user(query, role="patient"), runtime.peers())
            )
        elif query:
            patients = [federation.patient_card(p) for p in accounts.find_users("patient", query)]
    except NotFound:
        error, status = UNKNOWN_ID, 404
    except ServiceError as exc:
        error, status = exc.message, exc.status
    return render_template(
        "doctor/find.html", query=query, patients=patients, found=found, error=error, max_query=MAX_QUERY
    ), status


def _form_fields() -> dict[str, object]:
    form = request.form
    prescriptions = []
    for drug, dose, frequency, duration in zip(
        form.getlist("rx_drug"),
        form.getlist("rx_dose"),
        form.getlist("rx_frequency"),
        form.getlist("rx_duration"),
        strict=False,
    ):
        if drug.strip():
            prescriptions.append({"drug": drug, "dose": dose, "frequency": frequency, "duration": duration})
    return {
        "title": form.get("title", ""),
        "category": form.get("category", ""),
        "notes": form.get("notes", ""),
        "diagnoses": [c.strip() for c in form.get("diagnoses", "").split(",") if c.strip()],
        "symptoms": [c.strip() for c in form.get("symptoms", "").split(",") if c.strip()],
        "prescriptions": prescriptions,
    }


@bp.route("/patients/<patient_id>/records/new", methods=["GET", "POST"])
@role_required("doctor")
@idempotent  # the form carries a key: a double submit or a resent POST saves one record
def new_record(patient_id: str) -> Response | str | tuple[str, int]:
    patient = accounts.get_user(patient_id, role="patient")
    if request.method == "POST":
        files = [
            NewAttachment(f.filename or "", f.mimetype or "", f.read())
            for f in request.files.getlist("attachments")
            if f.filename
        ]
        try:
            record = records.create_record(
                page_actor(),
                patient_id,
                _form_fields(),
                files,
                vocabulary=runtime.vocabulary(),
                limits=runtime.limits(),
                node=runtime.node(),
                now=utcnow(),
            )
        except ServiceError as exc:
            unknown = codes.problems(exc, request.form)
            flash(codes.SOME_UNKNOWN if unknown else exc.message, "error")
            picked = codes.picked(request.form, runtime.vocabulary())
            return render_template(
                "doctor/new_record.html",
                patient=patient,
                categories=CATEGORIES,
                form=request.form,
                picked=picked,
                problems=unknown,
            ), exc.status
        flash("Record saved, encrypted and queued for the next block.", "info")
        return redirect(url_for("doctor.record", record_id=record.id))
    form = {"idempotency_key": str(uuid.uuid4())}
    return render_template(
        "doctor/new_record.html", patient=patient, categories=CATEGORIES, form=form, picked={}, problems={}
    )


@bp.get("/records")
@role_required("doctor")
def my_records() -> str:
    page = records.list_records(page_actor(), *paging.bounds(request.args.get("limit"), request.args.get("offset")))
    return render_template("doctor/records.html", records=page.items, page=page)


@bp.get("/records/<record_id>")
@role_required("doctor")
def record(record_id: str) -> str:
    return render_template(
        "doctor/record.html", record=records.get_record(page_actor(), record_id, node=runtime.node(), now=utcnow())
    )


@bp.get("/records/<record_id>/attachments/<int:n>")
@role_required("doctor")
def attachment(record_id: str, n: int) -> Response:
    """The attachment as a download, or shown in the page with `?inline=1` (images and PDFs):
    the same access check and the same access-log entry either way."""
    meta, data = records.get_attachment(page_actor(), record_id, n, node=runtime.node(), now=utcnow())
    return send_attachment(meta, data, inline=request.args.get("inline") == "1")


# -- patient-controlled access ----------------------------------------------------------------


def _scope_from_form(form: Any) -> dict[str, object]:
    """The scope as the service expects it, from the radio choice and its fields."""
    kind = form.get("scope", "all")
    if kind == "categories":
        return {"type": "categories", "categories": form.getlist("categories")}
    if kind == "dates":
        return {"type": "dates", "from": form.get("from", ""), "to": form.get("to", "")}
    return {"type": kind}


def _days_from_form(value: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValidationFailed("The number of days must be a whole number.") from None


@bp.route("/patients/<patient_id>/access/request", methods=["GET", "POST"])
@role_required("doctor")
@idempotent  # the form carries a key: a double submit sends one request
def request_access(patient_id: str) -> Response | str | tuple[str, int]:
    patient = accounts.get_user(patient_id, role="patient")
    node = runtime.node()

    def page(form: Any) -> str:
        return render_template(
            "doctor/request_access.html",
            patient=patient,
            categories=CATEGORIES,
            max_days=node.max_grant_days,
            default_days=node.default_grant_days,
            form=form,
        )

    if request.method == "POST":
        form = request.form
        try:
            grants.request_access(
                page_actor(),
                patient_id,
                form.get("reason", ""),
                _days_from_form(form.get("days", "")),
                _scope_from_form(form),
                node=node,
                categories=CATEGORIES,
                now=utcnow(),
            )
        except ServiceError as exc:
            flash(exc.message, "error")
            return page(form), exc.status
        flash(f"Request sent to {patient.display_name}.", "info")
        return redirect(url_for("doctor.my_patients"))
    return page({"idempotency_key": str(uuid.uuid4())})


@bp.get("/access")
@role_required("doctor")
def my_patients() -> str:
    actor = page_actor()
    now = utcnow()
    patients = grants.patients_of(actor, now)
    under_grant = [
        {
            "patient": entry["patient"],
            "grants": [
                {"scope": grants.describe_scope(grants.grant_scope(g)), "expires_at": g.expires_at}
                for g in entry["grants"]
            ],
        }
        for entry in patients
        if entry["grants"]
    ]
    under_emergency = [entry for entry in patients if entry["emergency"] is not None]
    written = records.patients_written_for(actor)
    requests = []
    for r in grants.list_requests(actor):
        asked = grants.request_details(actor, r)
        requests.append({"request": r, "asked": asked, "scope": grants.describe_scope(asked.scope) if asked else None})
    return render_template(
        "doctor/my_patients.html",
        under_grant=under_grant,
        under_emergency=under_emergency,
        written=written,
        requests=requests,
    )


@bp.get("/patients/<patient_id>/history")
@role_required("doctor")
def history(patient_id: str) -> tuple[str, int]:
    return _history_page(patient_id)


def _history_page(
    patient_id: str, *, import_problems: list[dict[str, str]] | None = None, import_status: int | None = None
) -> tuple[str, int]:
    """The patient's history as this doctor may see it, with the FHIR export and import; after a
    refused import, with its problems and the import's status instead of the page's own."""
    patient = accounts.get_user(patient_id, role="patient")
    category = request.args.get("category") or None
    page = {
        "patient": patient,
        "card": federation.patient_card(patient),
        "categories": CATEGORIES,
        "category": category,
        "import_form": {"idempotency_key": str(uuid.uuid4())},
        "import_problems": import_problems,
    }
    limit, offset = paging.bounds(request.args.get("limit"), request.args.get("offset"))
    try:
        entries = records.history(
            page_actor(), patient_id, node=runtime.node(), now=utcnow(), category=category, limit=limit, offset=offset
        )
    except Forbidden as exc:
        body = render_template("doctor/history.html", records=[], refusal=exc.message, **page)
        return body, import_status or exc.status
    except ValidationFailed as exc:
        flash(exc.message, "error")
        return render_template("doctor/history.html", records=[], refusal=None, **page), import_status or exc.status
    body = render_template("doctor/history.html", records=entries.items, refusal=None, page_of=entries, **page)
    return body, import_status or 200


@bp.get("/patients/<patient_id>/fhir")
@role_required("doctor")
def export_fhir(patient_id: str) -> Response:
    """What this doctor's access covers, as one FHIR R4 Bundle to save (each record in it is a
    logged read, as opening it is)."""
    patient = accounts.get_user(patient_id, role="patient")
    bundle = fhir.export_for_doctor(page_actor(), patient.public_id, node=runtime.node(), now=utcnow())
    return send_fhir(bundle, f"medledger-patient-{patient.public_id}")


@bp.post("/patients/<patient_id>/fhir")
@role_required("doctor")
@idempotent  # the form carries a key: a double submit imports one record
def import_fhir(patient_id: str) -> Response | str | tuple[str, int]:
    """A FHIR R4 Bundle from another system becomes one sealed, signed record; a refused Bundle
    stores nothing and is shown again with what is wrong, resource by resource."""
    accounts.get_user(patient_id, role="patient")
    upload = request.files.get("bundle")
    document = upload.read() if upload is not None and upload.filename else b""
    if not document:
        flash(NO_BUNDLE, "error")
        return _history_page(patient_id, import_status=ValidationFailed.status)
    try:
        record = fhir.import_bundle(
            page_actor(),
            patient_id,
            document,
            vocabulary=runtime.vocabulary(),
            limits=runtime.limits(),
            node=runtime.node(),
            now=utcnow(),
        )
    except FhirRejected as exc:  # the page lists each problem under the form
        return _history_page(patient_id, import_problems=exc.problems, import_status=exc.status)
    except InvalidJSON as exc:  # its message speaks of a request body; here it is a file
        flash(f"{NOT_JSON} ({exc.message})", "error")
        return _history_page(patient_id, import_status=exc.status)
    except ServiceError as exc:
        flash(exc.message, "error")
        return _history_page(patient_id, import_status=exc.status)
    flash("FHIR Bundle imported: the record is saved, encrypted and queued for the next block.", "info")
    return redirect(url_for("doctor.record", record_id=record.id))


@bp.route("/patients/<patient_id>/emergency", methods=["GET", "POST"])
@role_required("doctor")
def emergency(patient_id: str) -> Response | str | tuple[str, int]:
    patient = accounts.get_user(patient_id, role="patient")
    node = runtime.node()
    hours = f"{node.emergency_duration.total_seconds() / 3600:g}"
    if request.method == "POST":
        form = request.form
        try:
            access = grants.declare_emergency(page_actor(), patient_id, form.get("reason", ""), node=node, now=utcnow())
        except ServiceError as exc:
            flash(exc.message, "error")
            return render_template("doctor/emergency.html", patient=patient, hours=hours, form=form), exc.status
        flash(
            f"Emergency access to {patient.display_name}'s records until {access.expires_at:%Y-%m-%d %H:%M} UTC. "
            "The patient has been told and an administrator will review it.",
            "info",
        )
        return redirect(url_for("doctor.history", patient_id=patient.public_id))
    return render_template("doctor/emergency.html", patient=patient, hours=hours, form={})
