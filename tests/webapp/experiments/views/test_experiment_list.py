"""The experiments list: search by text, tag and owner; and an experiment's name, notes and
tags edited on its page."""

from __future__ import annotations

from django.urls import reverse

LIST = reverse("experiment-list")


def test_the_list_needs_a_login(client):
    assert client.get(LIST).status_code == 302


def test_it_lists_every_experiment_with_its_run_counts(client, owner, stranger, make_run):
    make_run(owner, name="mine")
    make_run(stranger, name="theirs")
    client.force_login(owner)

    html = client.get(LIST).content.decode()

    assert "mine" in html and "theirs" in html and "2 experiments" in html


def test_it_searches_names_descriptions_and_notes_and_filters_by_tag_and_owner(
    client, owner, stranger, make_run
):
    tagged = make_run(owner, name="omniglot baseline").experiment
    tagged.notes, tagged.tags = "lr from the paper", ",paper,"
    tagged.save()
    make_run(stranger, name="sine sweep")
    client.force_login(owner)

    def names(**query) -> list[str]:
        page = client.get(LIST, query)
        return [e.name for e in page.context["experiments"]]

    assert names(q="BASELINE") == ["omniglot baseline"]
    assert names(q="from the paper") == ["omniglot baseline"]
    assert names(tag="Paper") == ["omniglot baseline"]
    assert names(tag="pap") == []
    assert names(owner="me") == ["omniglot baseline"]
    assert names(owner="stranger") == ["sine sweep"]


def test_the_owner_edits_name_notes_and_tags_on_the_experiment_page(client, owner, make_run):
    experiment = make_run(owner, name="old").experiment
    client.force_login(owner)
    assert 'id="experiment-labels"' in client.get(experiment.get_absolute_url()).content.decode()

    client.post(
        reverse("experiment-labels", args=[experiment.pk]),
        {"name": "new name", "notes": "why", "tags": "a, b"},
    )

    experiment.refresh_from_db()
    assert (experiment.name, experiment.notes, experiment.tag_list) == (
        "new name",
        "why",
        ["a", "b"],
    )


def test_an_experiment_cannot_lose_its_name_or_be_labelled_by_a_stranger(
    client, owner, stranger, make_run
):
    experiment = make_run(owner, name="kept").experiment
    client.force_login(owner)
    response = client.post(
        reverse("experiment-labels", args=[experiment.pk]), {"name": " ", "notes": "x"}, follow=True
    )
    assert "An experiment needs a name." in response.content.decode()

    client.force_login(stranger)
    forbidden = client.post(reverse("experiment-labels", args=[experiment.pk]), {"name": "mine"})

    assert forbidden.status_code == 403
    experiment.refresh_from_db()
    assert (experiment.name, experiment.notes) == ("kept", "")
