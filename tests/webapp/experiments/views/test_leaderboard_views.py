"""The leaderboard page: one board per benchmark, the paper's rows, ties marked."""

from __future__ import annotations

from django.urls import reverse

from webapp.experiments.models import Run

URL = reverse("leaderboard")


def finished(make_run, owner, name, acc, ci=0.01, **kw):
    return make_run(owner, name=name, test_accuracy=acc, test_ci95=ci, test_tasks=1000, **kw)


def board_section(body: str, key: str) -> str:
    return body.split(f'id="{key}"')[1].split("</section>")[0]


def test_the_leaderboard_needs_a_login(client):
    response = client.get(URL)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_finished_run_is_ranked_on_its_benchmarks_board_beside_the_paper(
    client, owner, stranger, make_run
):
    run = finished(make_run, owner, "my omniglot", 0.9612, ci=0.0031)
    client.force_login(stranger)

    body = client.get(URL).content.decode()

    section = board_section(body, "omniglot-paper-5way-1shot-transductive")
    assert "Omniglot (paper split), 5-way 1-shot, transductive" in section
    assert run.get_absolute_url() in section
    assert "96.12 %" in section and "± 0.31 %" in section
    assert "Reptile paper" in section and "97.68 %" in section


def test_runs_of_different_benchmarks_get_different_boards(client, owner, make_run):
    five = finished(make_run, owner, "five-way", 0.95)
    twenty = finished(make_run, owner, "twenty-way", 0.85, ways=20)
    client.force_login(owner)

    body = client.get(URL).content.decode()

    five_board = board_section(body, "omniglot-paper-5way-1shot-transductive")
    twenty_board = board_section(body, "omniglot-paper-20way-1shot-transductive")
    assert five.get_absolute_url() in five_board and twenty.get_absolute_url() not in five_board
    assert twenty.get_absolute_url() in twenty_board


def test_configurations_tied_with_the_leader_are_marked(client, owner, make_run):
    # Two seeds each; the interval across seeds is 12.706 * |a - b| / 2.
    for name, accuracies, inner_iters in (
        ("leader", (0.80, 0.80), 1),
        ("close", (0.78, 0.79), 2),
        ("behind", (0.70, 0.70), 3),
    ):
        experiment = None
        for seed, acc in enumerate(accuracies):
            run = finished(
                make_run,
                owner,
                name,
                acc,
                split="lake",
                seed=seed,
                experiment=experiment,
                config={"inner_iters": inner_iters},
            )
            experiment = run.experiment
    client.force_login(owner)

    section = board_section(
        client.get(URL).content.decode(), "omniglot-lake-5way-1shot-transductive"
    )

    rows = section.split("<tr")[2:]  # skip the header row
    assert ['">leader</span>' in r for r in rows] == [True, False, False]
    assert ["badge-tie" in r for r in rows] == [False, True, False]
    assert ["2 seeds" in r for r in rows] == [True, True, True]


def test_seeds_are_grouped_with_their_runs_behind_a_toggle_and_partial_marked(
    client, owner, make_run
):
    first = finished(make_run, owner, "grouped", 0.90, seed=0, iteration=400)
    second = finished(
        make_run, owner, "grouped", 0.94, seed=1, iteration=400, experiment=first.experiment
    )
    client.force_login(owner)

    section = board_section(
        client.get(URL).content.decode(), "omniglot-paper-5way-1shot-transductive"
    )

    toggle = section.split("<details")[1].split("</details>")[0]
    seeds_url = reverse(
        "leaderboard-seeds",
        args=["omniglot-paper-5way-1shot-transductive", first.group_hash],
    )
    assert f'data-seeds-url="{seeds_url}"' in toggle and "2 seeds" in toggle
    listed = client.get(seeds_url, {"fragment": "1"}).content.decode()
    assert first.get_absolute_url() in listed and second.get_absolute_url() in listed
    assert "92.00 %" in section  # the mean of the two seeds
    assert "badge-partial" in section  # 400 of the paper's 100,000 meta-iterations
    paper_row = section.split("Reptile paper")[1].split("</tr>")[0]
    assert "the paper does not say what it is" in paper_row


def test_unfinished_failed_and_sine_runs_are_not_ranked(client, owner, make_run):
    finished(make_run, owner, "failed one", 0.99, status=Run.Status.FAILED)
    finished(make_run, owner, "running one", 0.99, status=Run.Status.RUNNING)
    make_run(owner, name="sine one", dataset="sine", test_accuracy=None)
    client.force_login(owner)

    body = client.get(URL).content.decode()

    for name in ("failed one", "running one", "sine one"):
        assert name not in body


def test_the_papers_benchmarks_show_even_before_anyone_runs_them(client, owner):
    client.force_login(owner)

    response = client.get(URL)

    body = response.content.decode()
    assert response.context["ranked_boards"] == []
    assert "Mini-ImageNet, 5-way 5-shot, transductive" in body
    assert "65.99 %" in body  # the paper's Mini-ImageNet 5-shot transductive number


# -- a row's seeds, fetched when its toggle is opened ------------------------------------------
BOARD = "omniglot-paper-5way-1shot-transductive"


def seeds_url(group_hash: str, board: str = BOARD) -> str:
    return reverse("leaderboard-seeds", args=[board, group_hash])


def test_the_page_carries_a_link_to_each_rows_seeds_not_the_seeds(client, owner, make_run):
    first = finished(make_run, owner, "many seeds", 0.90, seed=0)
    others = [
        finished(make_run, owner, "many seeds", 0.90, seed=s, experiment=first.experiment)
        for s in range(1, 6)
    ]
    client.force_login(owner)

    section = board_section(client.get(URL).content.decode(), BOARD)

    assert "6 seeds" in section and seeds_url(first.group_hash) in section
    assert not any(run.get_absolute_url() in section for run in [first, *others])


def test_a_rows_seeds_are_listed_in_seed_order_with_their_test_results(
    client, stranger, owner, make_run, django_assert_max_num_queries
):
    second = finished(make_run, owner, "two seeds", 0.94, ci=0.02, seed=1)
    first = finished(make_run, owner, "two seeds", 0.90, seed=0, experiment=second.experiment)
    client.force_login(stranger)
    client.get(URL)  # the session's first use

    with django_assert_max_num_queries(3):  # session, user, the seeds
        fragment = client.get(seeds_url(first.group_hash), {"fragment": "1"})

    body = fragment.content.decode()
    assert fragment.status_code == 200 and "<html" not in body
    assert body.index(f"#{first.pk}") < body.index(f"#{second.pk}")
    assert "seed 0: 90.00 %" in body and "seed 1: 94.00 %" in body
    page = client.get(seeds_url(first.group_hash)).content.decode()
    assert "<html" in page and "2 seeds of one configuration" in page
    assert f"{URL}#{BOARD}" in page and first.get_absolute_url() in page


def test_seeds_of_an_unknown_board_or_configuration_or_another_board_are_404(
    client, owner, make_run
):
    run = finished(make_run, owner, "one", 0.9)
    client.force_login(owner)

    assert client.get(seeds_url(run.group_hash, "no-such-board")).status_code == 404
    assert client.get(seeds_url("0" * 64)).status_code == 404
    other_board = "omniglot-paper-20way-1shot-transductive"
    assert client.get(seeds_url(run.group_hash, other_board)).status_code == 404
    assert client.get(seeds_url(run.group_hash)).status_code == 200


def test_seeds_need_a_login_and_only_get(client, owner, make_run):
    run = finished(make_run, owner, "one", 0.9)

    response = client.get(seeds_url(run.group_hash))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    client.force_login(owner)
    assert client.post(seeds_url(run.group_hash)).status_code == 405
