"""Serves the patient app (the top-level `pwa/` folder) at /app/."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from flask import Blueprint, Response, send_from_directory

PWA_DIR = Path(__file__).resolve().parent.parent.parent / "pwa"
mimetypes.add_type("application/manifest+json", ".webmanifest")
mimetypes.add_type("text/javascript", ".js")

bp = Blueprint("pwa", __name__)


@bp.get("/app/")
def index() -> Response:
    return send_from_directory(PWA_DIR, "index.html", max_age=0)


@bp.get("/app/<path:filename>")
def asset(filename: str) -> Response:
    # The service worker decides what is cached; the browser revalidates every time.
    return send_from_directory(PWA_DIR, filename, max_age=0)
