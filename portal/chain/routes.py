from __future__ import annotations

from flask import render_template, request

from portal.chain import bp
from portal.services import ledger
from portal.services.errors import ServiceError
from portal.services.inputs import MAX_OFFSET

PAGE = 20


@bp.get("/")
def blocks() -> str:
    _, height = ledger.headers(0, 1)
    try:
        start = int(request.args.get("from", max(height - PAGE + 1, 0)))
    except ValueError:
        start = 0
    try:
        headers, height = ledger.headers(max(start, 0), PAGE)
    except ServiceError:
        headers = []
    report = ledger.verify_chain() if request.args.get("verify") else None
    return render_template(
        "chain/blocks.html", headers=list(reversed(headers)), height=height, start=start, page=PAGE, report=report
    )


@bp.get(f"/blocks/<int(max={MAX_OFFSET}):height>")
def block(height: int) -> str:
    current = ledger.tip()
    return render_template("chain/block.html", block=ledger.block(height), tip=current.height if current else -1)
