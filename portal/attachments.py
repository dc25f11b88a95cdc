"""An attachment's answer, for the portal's record page and the API alike: a download, or (when
asked) a preview shown in the page. Access is decided and the read logged before this, by
`records.get_attachment`, the same for both."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

from flask import Response, send_file

from core.fhir import MEDIA_TYPE

# The types a browser shows by itself; anything else is always a download.
PREVIEWABLE = {"application/pdf", "image/png", "image/jpeg", "image/webp"}
# A preview is a document of its own: no script, no form, no request anywhere, shown only in a
# frame of this site (the portal's record page frames a PDF; `X-Frame-Options: SAMEORIGIN` says the
# same to browsers without `frame-ancestors`). `sandbox` keeps a hostile PDF from running anything
# with the site's rights; Chromium's PDF viewer shows a sandboxed PDF all the same.
PREVIEW_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'self'; sandbox"


def send_document(body: str | bytes, mimetype: str, filename: str) -> Response:
    """A copy for the caller to save (a FHIR Bundle, a CSV log): a download, never cached."""
    data = body.encode() if isinstance(body, str) else body
    response = send_file(io.BytesIO(data), mimetype=mimetype, as_attachment=True, download_name=filename)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def send_fhir(bundle: dict[str, Any], name: str) -> Response:
    """A FHIR Bundle as a download named `<name>-<date>.json` (docs/fhir.md)."""
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    return send_document(json.dumps(bundle, ensure_ascii=False, indent=1), MEDIA_TYPE, f"{name}-{day}.json")


def send_attachment(meta: dict[str, Any], data: bytes, *, inline: bool) -> Response:
    """The decrypted bytes with their real type and file name; `inline` (for a type a browser can
    show) asks the browser to show them rather than save them."""
    preview = inline and meta["content_type"] in PREVIEWABLE
    response = send_file(
        io.BytesIO(data), mimetype=meta["content_type"], as_attachment=not preview, download_name=meta["filename"]
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    if preview:
        response.headers["Content-Security-Policy"] = PREVIEW_CSP
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
