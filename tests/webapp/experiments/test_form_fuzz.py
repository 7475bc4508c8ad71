"""Fuzz the experiment form through the create view with hypothesis.

Every field of the form (read from the form itself, so a new field is fuzzed too) gets hostile
values: any text, integers far outside 32 bits, NaN/inf spellings, negatives, zero, lone
surrogates (sent as invalid UTF-8), NUL characters and over-long text. Whatever arrives, the view
must answer the form with errors (200, nothing saved) or save one experiment with one run per
seed (302); never an exception.
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlencode

import pytest
from django import forms
from django.urls import reverse
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from webapp.experiments.forms import ExperimentForm
from webapp.experiments.models import Experiment, Run

EXAMPLES = 300

FIELDS = ExperimentForm().fields
BASELINE = {"name": "fuzz", "preset": "omniglot-5way-1shot", "seeds": "0", "queue": "any"}
SINE = [("name", "fuzz"), ("preset", "sine"), ("seeds", "0"), ("queue", "any")]

NASTY_SPELLINGS = [
    "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e-400", "0", "-0",
    "0.0", "-1", "1.5", "2147483647", "2147483648", "-2147483649", "9223372036854775808",
    "9" * 5000, "1" * 4301, "", " ", "\t", "true", "false", "None", "null", "0x10", "1_000",
    "١٢", "²", "５", "\x00", "1\x00", "\ud800", "a\udfffb", "0, 1", "0,,1", "1;2;3", "-5, 5",
    "0, 0", ",".join(str(i) for i in range(21)), "x" * 201, "x" * 5001,
]  # fmt: skip

hostile = st.one_of(
    st.sampled_from(NASTY_SPELLINGS),
    st.text(max_size=30),
    st.text(st.characters(codec=None, categories=["Cs", "Cc", "Zs", "Nd"]), max_size=10),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=4000, max_value=12_000).map(lambda n: "é" * n),  # over-long text
)


def plausible(field: forms.Field) -> st.SearchStrategy[str]:
    """A value the field might well accept, so that valid forms are fuzzed too."""
    if isinstance(field, forms.ChoiceField):
        return st.sampled_from([str(value) for value, _ in field.choices])
    if isinstance(field, forms.IntegerField):
        return st.integers(min_value=-3, max_value=3000).map(str)
    if isinstance(field, forms.FloatField):
        return st.floats(min_value=-1, max_value=2).map(repr)
    return st.text(max_size=20)


@st.composite
def submissions(draw) -> list[tuple[str, str]]:
    """The baseline (a valid preset experiment) with a few fields changed, dropped or doubled."""
    data = {name: BASELINE.get(name, "") for name in FIELDS}
    for name in draw(st.sets(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=5)):
        data[name] = draw(st.one_of(hostile, plausible(FIELDS[name])))
    pairs = list(data.items())
    dropped = draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=2))
    pairs = [(k, v) for k, v in pairs if k not in dropped]
    if draw(st.booleans()):
        pairs.append((draw(st.sampled_from(sorted(FIELDS))), draw(hostile)))  # a repeated key
    return pairs


STATS: Counter = Counter()


@pytest.mark.slow  # 300 POSTs through the view: about 20 s
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(pairs=submissions())
# Regressions: 32-bit columns (a 500 on PostgreSQL before the service bounded them), NUL,
# non-finite numbers, invalid UTF-8, over-long text.
@example(pairs=[*SINE, ("sine_points", str(2**40))])
@example(pairs=[*SINE, ("seeds", f"0, {2**40}")])
@example(pairs=[*SINE, ("meta_iters", str(2**31))])
@example(pairs=[*SINE, ("name", "a\x00b")])
@example(pairs=[*SINE, ("inner_lr", "nan"), ("meta_step", "1e999")])
@example(pairs=[*SINE, ("seeds", "\ud800")])
@example(pairs=[*SINE, ("description", "x" * 5001)])
def test_the_create_view_answers_any_input_with_errors_or_a_saved_experiment(client, owner, pairs):
    client.force_login(owner)
    # Lone surrogates cannot be UTF-8: they arrive as invalid bytes, as a broken client sends.
    body = urlencode(pairs, encoding="utf-8", errors="surrogatepass")
    experiments, runs = Experiment.objects.count(), Run.objects.count()

    response = client.post(
        reverse("experiment-new"), body, content_type="application/x-www-form-urlencoded"
    )

    STATS["tried"] += 1
    if response.status_code == 302:
        STATS["saved"] += 1
        event("valid: saved")
        experiment = Experiment.objects.latest("id")
        assert Experiment.objects.count() == experiments + 1
        assert Run.objects.count() == runs + len(experiment.seeds)
        assert experiment.runs.count() == len(experiment.seeds)
    else:
        assert response.status_code == 200
        form = response.context["form"]
        assert form.errors, "a re-shown form must say what is wrong"
        for field in form.errors:
            STATS[f"error:{field}"] += 1
            event(f"error on {field}")
        STATS["refused"] += 1
        assert Experiment.objects.count() == experiments
        assert Run.objects.count() == runs


def teardown_module() -> None:
    if STATS:
        print(f"\nexperiment form fuzz: {dict(sorted(STATS.items()))}")
