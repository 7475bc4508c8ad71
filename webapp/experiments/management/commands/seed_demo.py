"""`manage.py seed_demo`: the demo user and a few demo experiments, so that a fresh `make run`
has something to show. Idempotent: run it any number of times; it never duplicates.

The demo password comes from DEMO_PASSWORD (default below, fine for a laptop, printed so the
person who started the stack can log in). An existing demo user gets it reset to that value.
"""

from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from metatrain import preset
from metatrain.data import omniglot_available
from webapp.experiments import services
from webapp.experiments.models import Experiment

DEMO_USERNAME = "demo"
DEFAULT_DEMO_PASSWORD = "metatrain-demo"


def demo_password() -> str:
    return os.environ.get("DEMO_PASSWORD") or DEFAULT_DEMO_PASSWORD


def _config(name: str, **overrides) -> dict:
    """A preset with overrides, as the form stores it: validated, seed excluded."""
    config = preset(name, **overrides).to_dict()
    config.pop("seed")
    return config


def demo_experiments() -> list[dict]:
    """The demo experiments: a sine run that shows real adaptation in about a minute and a
    half on one laptop CPU core (test loss from about 4.4 before to 0.2 after), and,
    when the Omniglot data is there, a short 5-way 1-shot Reptile run (a few minutes)."""
    experiments = [
        {
            "name": "Demo: sine regression (Reptile)",
            "preset": "sine",
            "description": "The paper's section 4 toy problem: learn an initialization that "
            "fits a new sine wave from 10 points in a few gradient steps.",
            # The preset's full 30,000 meta-iterations (about 75 s on one CPU core): 2,000 were
            # too few for the adapted loss to improve on the unadapted one.
            "config": _config(
                "sine",
                validation_interval=1000,
                validation_tasks=50,
                checkpoint_interval=3000,
            ),
            "seeds": [0],
        }
    ]
    if omniglot_available():
        experiments.append(
            {
                "name": "Demo: Omniglot 5-way 1-shot (short)",
                "preset": "omniglot-5way-1shot",
                "description": "The paper's Omniglot setting cut to 300 meta-iterations "
                "(the paper trains 100,000): enough to see the accuracy climb.",
                "config": _config(
                    "omniglot-5way-1shot",
                    meta_iters=300,
                    validation_interval=50,
                    validation_tasks=50,
                    checkpoint_interval=50,
                    final_eval_tasks=100,
                ),
                "seeds": [0],
            }
        )
    return experiments


class Command(BaseCommand):
    help = "Create the demo user and the demo experiments (idempotent)."

    def handle(self, *args, **options) -> None:
        password = demo_password()
        user_model = get_user_model()
        with transaction.atomic():
            user, created = user_model.objects.get_or_create(username=DEMO_USERNAME)
            user.set_password(password)
            user.save()
        self.stdout.write(
            f"{'Created' if created else 'Updated'} user {DEMO_USERNAME!r} "
            f"with password {password!r}"
        )
        for spec in demo_experiments():
            if Experiment.objects.filter(owner=user, name=spec["name"]).exists():
                self.stdout.write(f"  {spec['name']}: already there")
                continue
            experiment = services.create_experiment(
                user,
                name=spec["name"],
                description=spec["description"],
                preset=spec["preset"],
                config=spec["config"],
                seeds=spec["seeds"],
            )
            self.stdout.write(f"  {spec['name']}: created, {experiment.runs.count()} run(s) queued")
        if not omniglot_available():
            self.stdout.write(
                "  (no Omniglot data under METATRAIN_DATA: the Omniglot demo is skipped)"
            )
