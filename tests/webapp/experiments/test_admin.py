"""The admin pages for every model open for staff (a smoke test of the ModelAdmin options)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from webapp.accounts.models import ApiToken
from webapp.experiments.models import Evaluation, MetricPoint, RunAttempt, Worker

MODELS = [
    "experiments_experiment",
    "experiments_run",
    "experiments_runattempt",
    "experiments_metricpoint",
    "experiments_evaluation",
    "experiments_worker",
    "accounts_apitoken",
]


@pytest.fixture
def admin_client_with_data(client, owner, make_run):
    run = make_run(owner)
    RunAttempt.objects.create(run=run, number=1)
    MetricPoint.objects.create(run=run, name="inner_loss", step=1, value=1.0)
    Evaluation.objects.create(run=run, split="test", tasks=10, accuracy=0.9)
    Worker.objects.create(hostname="w@x", last_seen=timezone.now())
    ApiToken.issue(owner, "t")
    admin = get_user_model().objects.create_superuser("admin", "a@example.com", None)
    client.force_login(admin)
    return client, run


@pytest.mark.parametrize("model", MODELS)
def test_each_admin_list_and_change_page_opens(admin_client_with_data, model):
    client, _ = admin_client_with_data
    app, name = model.split("_", 1)

    listing = client.get(reverse(f"admin:{app}_{name}_changelist"))

    assert listing.status_code == 200
    obj = listing.context["cl"].result_list[0]
    assert client.get(reverse(f"admin:{app}_{name}_change", args=[obj.pk])).status_code == 200


def test_tokens_cannot_be_added_in_the_admin(admin_client_with_data):
    client, _ = admin_client_with_data

    assert client.get(reverse("admin:accounts_apitoken_add")).status_code == 403


def test_the_admin_cancel_action_cancels_queued_runs(
    admin_client_with_data, owner, make_experiment
):
    client, _ = admin_client_with_data
    run = make_experiment(owner).runs.get()

    client.post(
        reverse("admin:experiments_run_changelist"),
        {"action": "cancel_runs", "_selected_action": [run.pk]},
    )

    run.refresh_from_db()
    assert run.status == "cancelled"
