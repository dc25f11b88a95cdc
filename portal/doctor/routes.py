from __future__ import annotations

import io

from flask import flash, redirect, render_template, request, send_file, url_for
from werkzeug.wrappers import Response

from portal import runtime
from portal.auth import page_actor, role_required
from portal.doctor import bp
from portal.models import utcnow
from portal.services import accounts, records
from portal.services.errors import ServiceError
from portal.services.records import CATEGORIES, NewAttachment


@bp.get("/patients")
@role_required("doctor")
def find_patient() -> str:
    query = request.args.get("q", "").strip()
    patients, error = [], None
    if query:
        try:
            patients = accounts.find_patients(query)
        except ServiceError as exc:
            error = exc.message
    return render_template("doctor/find.html", query=query, patients=patients, error=error)


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
            flash(exc.message, "error")
            return render_template(
                "doctor/new_record.html", patient=patient, categories=CATEGORIES, form=request.form
            ), exc.status
        flash("Record saved, encrypted and queued for the next block.", "info")
        return redirect(url_for("doctor.record", record_id=record.id))
    return render_template("doctor/new_record.html", patient=patient, categories=CATEGORIES, form={})


@bp.get("/records")
@role_required("doctor")
def my_records() -> str:
    return render_template("doctor/records.html", records=records.list_records(page_actor()))


@bp.get("/records/<record_id>")
@role_required("doctor")
def record(record_id: str) -> str:
    return render_template(
        "doctor/record.html", record=records.get_record(page_actor(), record_id, node=runtime.node(), now=utcnow())
    )


@bp.get("/records/<record_id>/attachments/<int:n>")
@role_required("doctor")
def attachment(record_id: str, n: int) -> Response:
    meta, data = records.get_attachment(page_actor(), record_id, n, node=runtime.node(), now=utcnow())
    return send_file(
        io.BytesIO(data), mimetype=meta["content_type"], as_attachment=True, download_name=meta["filename"]
    )
