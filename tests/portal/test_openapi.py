"""The published contract: OpenAPI 3.1 documents for /api/v1 and /node/v1, built from the schemas
that validate requests (portal/openapi.py), and the reference page the node serves itself."""

from __future__ import annotations

import re

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
        assert {"400", "413", "429"} <= set(operation["responses"])
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
