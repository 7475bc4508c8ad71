"""The OpenAPI schema is served and lists every endpoint; its docs page loads nothing from a
CDN."""

from __future__ import annotations


def test_the_schema_lists_every_endpoint(client):
    response = client.get("/api/openapi.json")

    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    expected = {
        "/api/presets": {"get"},
        "/api/experiments": {"get", "post"},
        "/api/experiments/{experiment_id}": {"get", "delete", "patch"},
        "/api/runs": {"get"},
        "/api/runs/{run_id}": {"get", "patch"},
        "/api/runs/{run_id}/cancel": {"post"},
        "/api/runs/{run_id}/evaluate": {"post"},
        "/api/runs/{run_id}/metrics": {"get"},
        "/api/runs/{run_id}/evaluations": {"get"},
        "/api/runs/{run_id}/initialization": {"get"},
        "/api/runs/{run_id}/config": {"get"},
        "/api/runs/{run_id}/metrics.csv": {"get"},
        "/api/leaderboard": {"get"},
        "/api/leaderboard/{key}": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), path


def test_the_schema_declares_bearer_and_session_auth(client):
    schema = client.get("/api/openapi.json").json()

    schemes = schema["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["TokenAuth"].items()
    assert schemes["SessionAuth"]["in"] == "cookie"


def test_the_request_schema_forbids_unknown_keys(client):
    schema = client.get("/api/openapi.json").json()

    experiment_in = schema["components"]["schemas"]["ExperimentIn"]
    assert experiment_in["additionalProperties"] is False
    assert experiment_in["properties"]["name"]["maxLength"] == 200


def test_the_docs_page_loads_swagger_from_our_own_static_files(client):
    """ninja's bundled Swagger UI, never its CDN page: every script and stylesheet the page
    names is a local /static/ URL that the static files answer (whitenoise in production)."""
    import re

    from django.contrib.staticfiles import finders

    response = client.get("/api/docs")

    assert response.status_code == 200
    html = response.content.decode()
    urls = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert any("swagger-ui-bundle.js" in url for url in urls)
    for url in urls:
        assert url.startswith("/static/"), url
        assert finders.find(url.removeprefix("/static/")) is not None, url
    assert "cdn" not in html.lower()
