"""The OpenAPI schema is served (without a CDN-loaded docs page) and lists every endpoint."""

from __future__ import annotations


def test_the_schema_lists_every_endpoint(client):
    response = client.get("/api/openapi.json")

    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    expected = {
        "/api/presets": {"get"},
        "/api/experiments": {"get", "post"},
        "/api/experiments/{experiment_id}": {"get", "delete"},
        "/api/runs": {"get"},
        "/api/runs/{run_id}": {"get"},
        "/api/runs/{run_id}/cancel": {"post"},
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


def test_no_docs_page_is_served(client):
    # ninja's Swagger UI would load its scripts from a CDN.
    assert client.get("/api/docs").status_code == 404
