"""Strict-Transport-Security: on answers to https requests only (directly over TLS, or through
TRUSTED_PROXIES reverse proxies that say so with X-Forwarded-Proto), never over plain http."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from portal import create_app
from portal.extensions import db
from tests.conftest import make_config

HSTS = "Strict-Transport-Security"
ONE_YEAR = "max-age=31536000; includeSubDomains"


def proxied_app(tmp_path: Path, hops: int, **settings: object) -> Flask:
    app = create_app(type("Proxied", (make_config(tmp_path),), {"TRUSTED_PROXIES": hops, **settings}))
    with app.app_context():
        db.create_all()
    return app


def test_https_requests_get_hsts(client: FlaskClient) -> None:
    for path in ("/login", "/chain/", "/api/v1/me", "/app/", "/no-such-page"):
        answer = client.get(path, base_url="https://medledger.example")
        assert answer.headers.get(HSTS) == ONE_YEAR, path


def test_plain_http_never_gets_hsts(client: FlaskClient) -> None:
    for path in ("/login", "/chain/", "/api/v1/me", "/app/", "/no-such-page"):
        assert HSTS not in client.get(path).headers, path


def test_a_forwarded_proto_is_not_believed_without_a_trusted_proxy(client: FlaskClient) -> None:
    answer = client.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert HSTS not in answer.headers


def test_behind_a_trusted_proxy_https_gets_hsts_and_http_does_not(tmp_path: Path) -> None:
    app = proxied_app(tmp_path, 1, PREFERRED_URL_SCHEME="https")
    client = app.test_client()
    http = "http://medledger.example"  # what the proxy talks to gunicorn
    assert client.get("/login", base_url=http, headers={"X-Forwarded-Proto": "https"}).headers[HSTS] == ONE_YEAR
    assert HSTS not in client.get("/login", base_url=http, headers={"X-Forwarded-Proto": "http"}).headers
    assert HSTS not in client.get("/login", base_url=http).headers
    # Only the nearest proxy's word counts: a client cannot claim https through it.
    spoofed = client.get("/login", base_url=http, headers={"X-Forwarded-Proto": "https, http"})
    assert HSTS not in spoofed.headers


def test_hsts_max_age_is_configurable_and_zero_turns_it_off(tmp_path: Path) -> None:
    day = proxied_app(tmp_path, 0, HSTS_SECONDS=86400).test_client()
    assert day.get("/login", base_url="https://medledger.example").headers[HSTS] == "max-age=86400; includeSubDomains"
    off = proxied_app(tmp_path, 0, HSTS_SECONDS=0).test_client()
    assert HSTS not in off.get("/login", base_url="https://medledger.example").headers
