"""Fuzz the query strings of the dashboard's GET pages with hypothesis: whatever a URL holds
(junk, huge or non-ASCII numbers, NUL, invalid UTF-8, repeated keys), a page answers below 500.

Found this way: `?runs=²` on the compare page was a 500 (str.isdigit() accepts digits int()
refuses), and so was `?q=%00` on the runs page on PostgreSQL (see webapp/middleware.py).
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from webapp.experiments.models import MetricPoint

EXAMPLES = 250

# page name -> the query parameters its view reads (others are sent too, and ignored).
PAGES = {
    "run-list": ["status", "dataset", "algorithm", "owner", "q", "sort", "page"],
    "compare": ["runs", "q", "only_diff"],
    "run-metrics": ["after_step", "names"],
    "run-detail": [],
    "experiment-detail": [],
    "leaderboard": [],
    "worker-list": [],
    "dataset-list": [],
}

NASTY = [
    "", " ", "0", "-1", "1", "²", "٣", "５", "1e9", "nan", "inf", "9" * 30, "9" * 5000,
    "2147483648", "-9223372036854775809", "1,2,,x", "1, ²", "me", "newest", "accuracy",
    "queued", "omniglot", "\x00", "a\x00", "\ud800", "\u202e", "%", "%00", "../../etc/passwd",
    "<script>", "' OR 1=1 --", "x" * 3000,
]  # fmt: skip
values = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.lists(st.integers(min_value=-5, max_value=2**64).map(str), max_size=5).map(",".join),
)
STATS: Counter = Counter()


@st.composite
def requests(draw) -> tuple[str, str]:
    page = draw(st.sampled_from(sorted(PAGES)))
    names = st.sampled_from(PAGES[page] + ["x"]) if PAGES[page] else st.just("x")
    pairs = draw(st.lists(st.tuples(names, values), max_size=6))
    # Lone surrogates cannot be UTF-8: they go out as invalid bytes, as a broken client sends.
    return page, urlencode(pairs, encoding="utf-8", errors="surrogatepass")


@pytest.mark.slow  # 250 page loads: about 10 s
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_no_query_string_makes_a_page_fail(owner, make_run, request):
    run = make_run(owner, name="fuzzed")
    MetricPoint.objects.bulk_create(
        MetricPoint(run=run, name="train_loss", step=s, value=1 / (s + 1)) for s in range(20)
    )
    page, query = request
    args = {
        "run-metrics": [run.pk],
        "run-detail": [run.pk],
        "experiment-detail": [run.experiment_id],
    }
    client = Client()
    client.force_login(owner)

    response = client.get(f"{reverse(page, args=args.get(page, []))}?{query}")

    STATS[f"{page} {response.status_code}"] += 1
    event(f"{page} {response.status_code}")
    assert response.status_code < 500


def test_unusual_digits_in_the_compare_selection_are_ignored(client, owner, make_run):
    run = make_run(owner)
    client.force_login(owner)

    response = client.get(reverse("compare"), {"runs": f"²,{'9' * 5000},{run.pk}"})

    assert response.status_code == 200
    assert [r.pk for r in response.context["runs"]] == [run.pk]


def teardown_module() -> None:
    if STATS:
        print(f"\nquery-string fuzz: {dict(sorted(STATS.items()))}")
