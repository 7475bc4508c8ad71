"""Per-user quotas on runs (webapp.experiments.quotas): refused in the service, so the form and
the API agree, with a message naming the limit, the usage and what to do; nothing saved when
refused; staff exempt; 0 = no limit; race-safe (the user's row is locked while counting)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from webapp.experiments import quotas, services
from webapp.experiments.errors import QuotaExceeded
from webapp.experiments.models import Experiment, Run

SINE = {"meta_iters": 100}


def create(owner, seeds=(0,), **config):
    return services.create_experiment(
        owner, name="q", preset="sine", config={**SINE, **config}, seeds=list(seeds)
    )


@pytest.fixture(autouse=True)
def no_limits(settings):
    """Each test sets the one limit it is about."""
    for name in (
        "QUOTA_MAX_ACTIVE_RUNS",
        "QUOTA_MAX_QUEUED_RUNS",
        "QUOTA_MAX_ACTIVE_META_ITERS",
        "QUOTA_MAX_DATASETS",
        "QUOTA_MAX_DATASET_BYTES",
    ):
        setattr(settings, name, 0)
    return settings


def test_it_refuses_runs_beyond_the_active_limit_and_saves_nothing(owner, settings):
    settings.QUOTA_MAX_ACTIVE_RUNS = 3
    create(owner, seeds=(0, 1))

    with pytest.raises(QuotaExceeded) as err:
        create(owner, seeds=(2, 3))

    message = str(err.value)
    assert "You have 2 active runs" in message and "would add 2 runs" in message
    assert "limit is 3" in message and "QUOTA_MAX_ACTIVE_RUNS" in message
    assert "cancel some, or use fewer seeds" in message
    assert (err.value.quota, err.value.limit, err.value.usage) == ("QUOTA_MAX_ACTIVE_RUNS", 3, 2)
    assert Experiment.objects.count() == 1 and Run.objects.count() == 2
    assert create(owner, seeds=(2,))  # up to the limit exactly


def test_finished_runs_free_their_place_and_lost_ones_do_not(owner, settings, make_run):
    settings.QUOTA_MAX_ACTIVE_RUNS = 2
    for status in ("succeeded", "failed", "cancelled"):
        make_run(owner, status=status)
    make_run(owner, status="lost")

    create(owner)
    with pytest.raises(QuotaExceeded):
        create(owner, seeds=(1,))


def test_a_running_run_is_active_but_not_waiting(owner, settings, make_run):
    settings.QUOTA_MAX_QUEUED_RUNS = 1
    make_run(owner, status="running")

    create(owner)  # one waiting: the running run does not count
    with pytest.raises(QuotaExceeded) as err:
        create(owner, seeds=(1,))

    assert err.value.quota == "QUOTA_MAX_QUEUED_RUNS"
    assert "1 runs waiting for a worker" in str(err.value)


def test_other_users_runs_do_not_count(owner, stranger, settings):
    settings.QUOTA_MAX_ACTIVE_RUNS = 1
    create(stranger)

    assert create(owner)


def test_it_counts_the_meta_iterations_active_runs_still_have_to_do(owner, settings, make_run):
    settings.QUOTA_MAX_ACTIVE_META_ITERS = 1000
    make_run(owner, status="running", iteration=700, config={"meta_iters": 1000})
    make_run(owner, status="succeeded", config={"meta_iters": 10**6})  # finished: not counted

    assert quotas.run_usage(owner).active_meta_iters == 300
    create(owner, seeds=(0, 1), meta_iters=350)  # 300 + 700 = 1000
    with pytest.raises(QuotaExceeded) as err:
        create(owner, seeds=(2,), meta_iters=1)

    message = str(err.value)
    assert "still have 1,000 meta-iterations to do" in message
    assert "QUOTA_MAX_ACTIVE_META_ITERS" in message and "fewer meta_iters" in message


def test_staff_are_exempt_from_the_usage_quotas(staff, settings):
    settings.QUOTA_MAX_ACTIVE_RUNS = 1
    settings.QUOTA_MAX_ACTIVE_META_ITERS = 1

    assert create(staff, seeds=(0, 1, 2)).runs.count() == 3


def test_zero_means_no_limit(owner):
    assert create(owner, seeds=tuple(range(20))).runs.count() == 20


def test_the_form_shows_a_quota_refusal_and_saves_nothing(client, owner, settings):
    settings.QUOTA_MAX_ACTIVE_RUNS = 1
    client.force_login(owner)

    response = client.post(
        "/experiments/new/",
        {"name": "x", "preset": "sine", "seeds": "0, 1", "queue": "any", "meta_iters": "10"},
    )

    assert response.status_code == 200
    assert "QUOTA_MAX_ACTIVE_RUNS" in response.context["form"].non_field_errors()[0]
    assert not Experiment.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_lock_user_needs_a_transaction(owner):
    with pytest.raises(RuntimeError, match="transaction"):
        quotas.lock_user(owner)


@pytest.mark.django_db(transaction=True)
def test_two_requests_at_once_cannot_both_slip_under_a_limit(owner, settings, monkeypatch):
    """Both requests count before either has written: without the lock on the user's row
    both would see 0 active runs and both would save. Counting is slowed down so that the
    second request really arrives while the first is between its count and its write."""
    settings.QUOTA_MAX_ACTIVE_RUNS = 1
    counted = quotas.run_usage

    def slow_count(user):
        usage = counted(user)
        time.sleep(0.5)
        return usage

    monkeypatch.setattr(quotas, "run_usage", slow_count)
    monkeypatch.setattr(services, "enqueue_on_commit", lambda runs: None)  # no broker here
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def request(seed: int) -> None:
        try:
            start.wait()
            create(owner, seeds=(seed,))
            outcomes.append("saved")
        except QuotaExceeded:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=request, args=(seed,)) for seed in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["refused", "saved"]
    assert Run.objects.filter(experiment__owner=owner).count() == 1
