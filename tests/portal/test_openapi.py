"""The published contract: OpenAPI 3.1 documents for /api/v1 and /node/v1, built from the schemas
that validate requests (portal/openapi.py), and the reference page the node serves itself."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate


def test_documents_are_valid_openapi_3_1_and_separate(client: FlaskClient) -> None:
    api = client.get("/api/v1/openapi.json").json
    node = client.get("/node/v1/openapi.json").json
    for document in (api, node):
        validate(document)
        assert document["openapi"] == "3.1.0"
    assert api["paths"] and all(p.startswith("/api/v1/") for p in api["paths"])
    assert node["paths"] and all(p.startswith("/node/v1/") for p in node["paths"])
    assert set(api["components"]["securitySchemes"]) == {"BearerAuth"}
    assert set(node["components"]["securitySchemes"]) == {"NodeSignature"}
    assert "/api/v1/openapi.json" not in api["paths"]  # the documents describe the API, not themselves
    for operation in (op for item in api["paths"].values() for op in item.values()):
        assert {"400", "413", "414", "429"} <= set(operation["responses"])
        if "requestBody" in operation:
            assert operation["requestBody"]["required"] is True


def test_reference_page_is_served_by_the_node(client: FlaskClient) -> None:
    page = client.get("/api/v1/docs")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "/api/v1/openapi.json" in html
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/") for s in sources)  # nothing from another host
    for source in sources:
        assert client.get(source).status_code == 200, source
    assert client.get("/api/v1/docs/assets/../../portal/config.py").status_code == 404
    assert client.get("/api/v1/docs/assets/index.html").status_code == 404


def test_every_route_is_in_its_document_with_a_schema(app: Flask, client: FlaskClient) -> None:
    """A route without a schema fails the build: every /api/v1 and /node/v1 route is an operation
    of its document, with an operationId, an explicit answer schema (`@bp.output`) and its
    security; operationIds are unique."""
    documents = {
        "/api/v1": client.get("/api/v1/openapi.json").json,
        "/node/v1": client.get("/node/v1/openapi.json").json,
    }
    problems, names = [], []
    for rule in app.url_map.iter_rules():
        prefix = next((p for p in documents if rule.rule.startswith(p + "/")), None)
        if prefix is None or rule.endpoint.startswith("openapi."):  # the documents and their page
            continue
        spec = getattr(app.view_functions[rule.endpoint], "_spec", {})
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = documents[prefix]["paths"].get(path, {}).get(method.lower())
            where = f"{method} {rule.rule}"
            if operation is None:
                problems.append(f"{where}: not in the document")
            elif not operation.get("operationId"):
                problems.append(f"{where}: no operationId")
            elif not spec.get("response"):
                problems.append(f"{where}: no answer schema (@bp.output)")
            else:
                names.append(operation["operationId"])
    assert problems == []
    assert len(names) == len(set(names)), "operationIds are unique"


def test_the_gate_catches_a_route_without_a_schema(app: Flask, client: FlaskClient) -> None:
    view = app.view_functions["api.me"]
    saved = dict(view._spec)
    try:
        view._spec.pop("response")
        view._spec["operation_id"] = None
        with pytest.raises(AssertionError, match="GET /api/v1/me"):
            test_every_route_is_in_its_document_with_a_schema(app, client)
    finally:
        view._spec.clear()
        view._spec.update(saved)
