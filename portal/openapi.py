"""The published contract (docs/api.md): APIFlask builds one OpenAPI 3.1 document from the
schemas that validate requests and shape responses (portal/api/schemas.py and the routes'
`@input`/`@output`); this module cuts it into the client API's document (/api/v1/openapi.json)
and the node-to-node one (/node/v1/openapi.json), serves a reference page from the node itself
(Swagger UI's files from the flask-swagger-ui package, no CDN), and turns APIFlask's validation
errors into the API's one error shape with a message per field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import flask_swagger_ui
from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from apiflask.schema_adapters.marshmallow import parser
from flask import Blueprint, Response, current_app, jsonify, render_template, request, send_from_directory

from portal.services.errors import ValidationFailed
from portal.services.inputs import parse_json_object

BEARER, NODE_SIGNATURE = "BearerAuth", "NodeSignature"
SECURITY_SCHEMES = {
    BEARER: {"type": "http", "scheme": "bearer", "description": "A token from `POST /api/v1/auth/token`."},
    NODE_SIGNATURE: {
        "type": "apiKey",
        "in": "header",
        "name": "X-MedLedger-Signature",
        "description": "A member node's Ed25519 signature over the request (docs/federation.md).",
    },
}
# Answers any operation may give, besides its own: one shared description each.
COMMON_ERRORS = {
    "400": "The body is not valid JSON (nesting, NaN, invalid UTF-8).",
    "413": "The body is larger than this route accepts.",
    "414": "The request line (path and query) is longer than the server accepts (gunicorn, 4094 bytes).",
    "429": "Too many requests; wait as long as `Retry-After` says.",
}
SWAGGER_DIST = Path(flask_swagger_ui.__file__).parent / "dist"
ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"}

bp = Blueprint("openapi", __name__)

# Unknown query parameters are refused like unknown body fields (webargs ignores them by default).
parser.DEFAULT_UNKNOWN_BY_LOCATION = {**parser.DEFAULT_UNKNOWN_BY_LOCATION, "query": None, "querystring": None}


@parser.location_loader("json")
def _load_json(req: Any, schema: Any) -> Any:
    """JSON bodies through the bounded parser (depth, lone surrogates, 64-bit numbers). A body
    whose fields are all optional may be left out altogether (an approval as asked)."""
    raw = req.get_data(cache=True)
    if not raw and not any(field.required for field in schema.fields.values()):
        return {}
    return parse_json_object(raw, req.is_json)


@parser.location_loader("query")
@parser.location_loader("querystring")
def _load_query(req: Any, schema: Any) -> Any:
    """Query parameters, each given once: `?limit=1&limit=2` is refused, not read as the first."""
    repeated = sorted({name for name in req.args if len(req.args.getlist(name)) > 1})
    if repeated:
        names = ", ".join(f"`{name}`" for name in repeated)
        raise ValidationFailed(f"Give each query parameter once: {names} came more than once.")
    return parser.load_querystring(req, schema)


def _flatten(messages: Any, prefix: str = "") -> dict[str, str]:
    """marshmallow's nested messages ({'a': {0: {'b': ['..']}}}) as {'a.0.b': '..'}."""
    out: dict[str, str] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "body"] = " ".join(messages)
    elif isinstance(messages, list):
        for i, item in enumerate(messages):
            out.update(_flatten(item, f"{prefix}.{i}"))
    else:
        out[prefix or "body"] = str(messages)
    return out


def _error_processor(error: HTTPError) -> tuple[dict[str, Any], int, Any]:
    if error.status_code == 422:
        detail = error.detail if isinstance(error.detail, dict) else {}
        fields = _flatten({k: v for where in detail.values() if isinstance(where, dict) for k, v in where.items()})
        if len(fields) == 1:
            [(name, text)] = fields.items()
            message = text if text.startswith("`") else f"`{name}`: {text}"
        else:
            message = "Some fields are not valid: " + ", ".join(f"`{f}`" for f in sorted(fields)) + "."
        body = {"error": {"code": "validation_failed", "message": message, "fields": fields}}
        return body, 422, error.headers
    return {"error": {"code": "bad_request", "message": error.message}}, error.status_code, error.headers


def _common_answers(spec: dict[str, Any]) -> dict[str, Any]:
    """Bodies are required where an operation takes one, and every operation lists the shared
    error answers."""
    responses = spec.setdefault("components", {}).setdefault("responses", {})
    for status, text in COMMON_ERRORS.items():
        responses[f"Error{status}"] = {
            "description": text,
            # A 414 comes from gunicorn before the app: a plain page, not the API's error shape.
            **(
                {}
                if status == "414"
                else {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            ),
            **({"headers": {"Retry-After": {"schema": {"type": "integer"}}}} if status == "429" else {}),
        }
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            for status in COMMON_ERRORS:
                operation["responses"].setdefault(status, {"$ref": f"#/components/responses/Error{status}"})
    return spec


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value)
            else:
                _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def document(prefix: str, title: str, schemes: list[str]) -> dict[str, Any]:
    """The app's document cut down to the paths under `prefix`, with the components they use."""
    full = current_app.spec  # type: ignore[attr-defined]
    doc = copy.deepcopy(full)
    doc["info"]["title"] = title
    doc["paths"] = {p: v for p, v in full["paths"].items() if p.startswith(prefix)}
    operations = [op for item in doc["paths"].values() for op in item.values() if isinstance(op, dict)]
    used_tags = {tag for op in operations for tag in op.get("tags", [])}
    doc["tags"] = [t for t in full.get("tags", []) if t["name"] in used_tags]
    components = doc.setdefault("components", {})
    components["securitySchemes"] = {k: v for k, v in SECURITY_SCHEMES.items() if k in schemes}
    used: set[str] = set()
    _refs(doc["paths"], used)
    while True:
        before = len(used)
        for ref in list(used):
            _, _, kind, name = ref.split("/", 3)
            _refs(components.get(kind, {}).get(name, {}), used)
        if len(used) == before:
            break
    for kind in ("schemas", "responses"):
        if kind in components:
            components[kind] = {n: v for n, v in components[kind].items() if f"#/components/{kind}/{n}" in used}
    return doc


@bp.get("/api/v1/openapi.json")
def api_document() -> Response:
    return jsonify(document("/api/v1", "MedLedger API", [BEARER]))


@bp.get("/node/v1/openapi.json")
def node_document() -> Response:
    return jsonify(document("/node/v1", "MedLedger node-to-node API", [NODE_SIGNATURE]))


@bp.get("/api/v1/docs")
def reference() -> str:
    """The API reference page, served by the node (its scripts and styles too)."""
    return render_template("api_reference.html", spec=request.host_url.rstrip("/") + "/api/v1/openapi.json")


@bp.get("/api/v1/docs/assets/<name>")
def asset(name: str) -> Response:
    if name not in ASSETS:
        return Response("Not found.", status=404, mimetype="text/plain")
    return send_from_directory(SWAGGER_DIST, name, max_age=3600)


def init_app(app: APIFlask) -> None:
    app.config.update(
        OPENAPI_VERSION="3.1.0",
        SECURITY_SCHEMES=SECURITY_SCHEMES,
        AUTO_OPERATION_SUMMARY=True,
        SPEC_FORMAT="json",
    )
    from portal.api.schemas import Error

    app.config["HTTP_ERROR_SCHEMA"] = Error
    app.config["VALIDATION_ERROR_SCHEMA"] = Error
    app.error_processor(_error_processor)
    app.spec_processor(_common_answers)
    app.register_blueprint(bp)
