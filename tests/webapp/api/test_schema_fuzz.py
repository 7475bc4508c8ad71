"""Fuzz the JSON API from its own OpenAPI schema with schemathesis.

The schema is loaded from the running application (WSGI, the same process and test database).
Every operation gets a bounded number of generated requests, valid by the schema (positive) and
invalid (negative), sent with a valid API token. Path ids are sometimes replaced by ids that
exist, so the handlers behind the 404 are reached too: the owner's queued runs (cancel, delete),
a stranger's succeeded run with files, metric points and evaluations (reads; cancel and delete
refused), and uploaded datasets the owner may and may not see. Checks: never a 5xx, a
response's content type and body match what the schema documents for its status, and input the
schema forbids is refused with a 4xx.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from django.core.files.base import ContentFile
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from webapp.accounts.models import ApiToken
from webapp.datasets.models import UserDataset
from webapp.experiments.models import Evaluation, MetricPoint
from webapp.experiments.sweeps.service import create_sweep

EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
BOARD_KEYS = [
    "omniglot-paper-5way-1shot-transductive",
    "omniglot-paper-5way-1shot-non-transductive",
]
STATS: Counter = Counter()


@pytest.fixture
def wsgi_app(db):
    """The project's WSGI application, keeping the test's database connection open.

    A real request closes the connection when it ends, which would end the test's transaction;
    Django's own test client disconnects that handler in the same way while it makes a request.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield get_wsgi_application()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@dataclass
class Target:
    schema: Any  # schemathesis's OpenApiSchema
    headers: dict[str, str]  # a valid API token of the owner
    ids: dict[str, list]  # path parameter -> values that exist


@pytest.fixture
def target(wsgi_app, settings, tmp_path, owner, stranger, make_experiment, make_run):
    settings.MEDIA_ROOT = tmp_path
    queued = make_experiment(owner, name="owner's queued", seeds=(0, 1))
    finished = make_run(stranger, name="stranger's finished", test_accuracy=0.9, test_ci95=0.01)
    finished.initialization.save("init.safetensors", ContentFile(b"\x00weights"), save=False)
    finished.config_file.save("config.json", ContentFile(b"{}"), save=False)
    finished.save()
    MetricPoint.objects.bulk_create(
        MetricPoint(run=finished, name=name, step=step, value=step / 10)
        for name in ("train_loss", "val_accuracy")
        for step in range(50)
    )
    Evaluation.objects.create(run=finished, split="test", accuracy=0.9, ci95=0.01, tasks=10)
    ready = UserDataset.Status.READY
    datasets = [
        UserDataset.objects.create(owner=owner, name="owner's ready", status=ready),
        UserDataset.objects.create(owner=owner, name="owner's rejected", status="rejected"),
        UserDataset.objects.create(owner=stranger, name="public", is_public=True, status=ready),
        UserDataset.objects.create(owner=stranger, name="stranger's private", status=ready),
    ]

    sweep = create_sweep(
        owner,
        name="owner's sweep",
        config={"dataset": "omniglot", "meta_iters": 10, "validation_interval": 0},
        space={"inner_iters": {"values": [1, 2]}},
        method="grid",
        seeds=[0],
    )
    real = {
        "sweep_id": [sweep.pk],
        "experiment_id": [queued.pk, finished.experiment_id],
        "run_id": [*queued.runs.values_list("pk", flat=True), finished.pk],
        "key": BOARD_KEYS,
        "dataset_id": [d.pk for d in datasets],
    }
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", wsgi_app)

    # The token is sent by the test, not generated: a mutated Authorization header replaced
    # by a valid one would look like invalid input accepted.
    schema.config.generation.update(with_security_parameters=False)
    _, raw = ApiToken.issue(owner, "fuzz")
    return Target(schema, {"Authorization": f"Bearer {raw}"}, real)


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation, from the API's schema (no request needed)."""
    from webapp.api.api import api

    paths = api.get_openapi_schema()["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item]


# schemathesis's own `from_fixture(...).parametrize()` does not run under pytest 9 (it sets a
# node attribute pytest 9 removed), so each operation is a parametrized test driving the
# operation's hypothesis strategies itself.
@pytest.mark.slow  # 15 operations x 25-75 examples: about 20 s
@pytest.mark.parametrize(("method", "path"), _operations())
def test_the_api_never_fails_and_answers_as_its_schema_says(target, method, path):
    operation = target.schema[path][method]
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    names = [p.name for p in operation.path_parameters]
    if names:  # valid requests about objects that exist, so handlers get past their 404
        ids = st.fixed_dictionaries({name: st.sampled_from(target.ids[name]) for name in names})
        strategies.append(
            ids.flatmap(
                lambda ids: operation.as_strategy(GenerationMode.POSITIVE, path_parameters=ids)
            )
        )
    strategy = st.one_of(strategies)

    @hypothesis_settings(
        max_examples=len(strategies) * EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def fuzz(case):
        response = case.call_and_validate(headers=target.headers, checks=CHECKS)
        STATS["requests"] += 1
        STATS[f"{method} {path} {response.status_code}"] += 1

    fuzz()


def teardown_module() -> None:
    if STATS:
        lines = "\n".join(f"  {k}: {v}" for k, v in sorted(STATS.items()))
        print(f"\nAPI schema fuzz:\n{lines}")
