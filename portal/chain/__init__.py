"""The public chain explorer: blocks, their transactions, verification status."""

from flask import Blueprint

bp = Blueprint("chain", __name__, url_prefix="/chain")

from portal.chain import routes  # noqa: E402,F401
