"""`manage.py seed_demo`: the demo user and experiments, created once however often it runs."""

from __future__ import annotations

from io import StringIO

from django.contrib.auth import authenticate
from django.core.management import call_command

from metatrain.data import omniglot_available
from webapp.experiments.models import Experiment, Run


def _seed() -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def test_it_creates_the_demo_user_and_queued_experiments_once(db, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "first-password")
    output = _seed()
    assert "'first-password'" in output
    expected = 2 if omniglot_available() else 1
    assert Experiment.objects.filter(owner__username="demo").count() == expected
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.QUEUED}
    assert Experiment.objects.filter(name__contains="sine", preset="sine").exists()

    monkeypatch.setenv("DEMO_PASSWORD", "second-password")
    assert "already there" in _seed()
    assert Experiment.objects.count() == expected
    assert Run.objects.count() == expected
    assert authenticate(username="demo", password="second-password") is not None
    assert authenticate(username="demo", password="first-password") is None
