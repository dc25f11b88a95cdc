"""Doctor pages: find a patient, write a record, records I wrote."""

from flask import Blueprint

bp = Blueprint("doctor", __name__, url_prefix="/doctor")

from portal.doctor import codes, routes  # noqa: E402,F401
