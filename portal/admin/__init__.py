"""Hospital admin pages: users, new doctors, block production."""

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")

from portal.admin import escrow, routes  # noqa: E402,F401
