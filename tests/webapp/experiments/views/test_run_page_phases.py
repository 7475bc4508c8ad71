"""The run page and its live feed: the final evaluation as its own phase, the Evaluations table
(details formatted by type, rows sent live), time zones, durations, sine losses, labels, and
the confirmations before a cancel."""

from __future__ import annotations

from datetime import timedelta

from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from webapp.experiments.models import Evaluation, Run


def _evaluating(make_run, owner) -> Run:
    now = timezone.now()
    return make_run(
        owner,
        status=Run.Status.RUNNING,
        iteration=100,
        total_iterations=100,
        seconds_per_iteration=0.01,
        phase=Run.Phase.EVALUATING,
        eval_tasks_done=2500,
        eval_tasks_total=10000,
        eval_tasks_per_second=50.0,
        started_at=now - timedelta(minutes=3),
        heartbeat_at=now,
    )


def test_the_final_evaluation_shows_as_its_own_phase_with_progress_rate_and_eta(
    client, owner, make_run
):
    run = _evaluating(make_run, owner)
    client.force_login(owner)

    page = client.get(run.get_absolute_url()).content.decode()
    feed = client.get(reverse("run-metrics", args=[run.pk])).json()["run"]

    assert 'id="run-eval-phase" hidden' not in page
    assert "Final evaluation" in page and '2500</span> / <span id="run-eval-total">10000' in page
    assert "2 min 30 s" in page  # 7,500 tasks left at 50 a second
    assert feed["evaluating"] is True and feed["eval_percent"] == 25.0
    assert feed["eval_eta_seconds"] == 150.0 and feed["eval_eta_display"] == "2 min 30 s"
    # The training ETA is not "0 s" for the whole evaluation: it is hidden.
    assert feed["eta_display"] == ""


def test_a_training_run_hides_the_evaluation_phase(client, owner, make_run):
    run = make_run(owner, status=Run.Status.RUNNING, iteration=5, total_iterations=100)
    client.force_login(owner)

    page = client.get(run.get_absolute_url()).content.decode()

    assert 'id="run-eval-phase" hidden' in page


def test_evaluation_details_are_formatted_by_type(client, owner, make_run):
    run = make_run(owner)
    Evaluation.objects.create(
        run=run,
        split="test",
        iteration=10,
        accuracy=0.5,
        tasks=5,
        extra={
            "final": True,
            "inner_optimizer_state": "fresh",
            "seconds": 1.234567,
            "n": 3,
            "missing": None,
            "off": False,
        },
    )
    client.force_login(owner)

    page = client.get(run.get_absolute_url()).content.decode()

    assert "final yes" in page and "off no" in page
    assert "inner_optimizer_state fresh" in page
    assert "seconds 1.2346" in page and "n 3" in page and "missing —" in page


def test_the_live_feed_sends_the_evaluations_table_and_a_heartbeat_with_its_zone(
    client, owner, make_run
):
    run = _evaluating(make_run, owner)
    Evaluation.objects.create(run=run, split="validation", iteration=50, accuracy=0.7, tasks=4)
    client.force_login(owner)

    feed = client.get(reverse("run-metrics", args=[run.pk])).json()["run"]

    assert feed["evaluations_count"] == 1
    assert "70.00 %" in feed["evaluations_html"]
    assert feed["heartbeat_display"].endswith(" UTC")


def test_times_on_the_run_page_carry_their_time_zone_and_the_run_its_speed(client, owner, make_run):
    now = timezone.now()
    run = make_run(
        owner,
        started_at=now - timedelta(seconds=125),
        finished_at=now,
        seconds_per_iteration=0.004,
    )
    client.force_login(owner)

    page = client.get(run.get_absolute_url()).content.decode()

    assert f"{timezone.localtime(run.created_at):%Y-%m-%d %H:%M:%S} UTC" in page
    assert "2 min 05 s, 250.0 meta-iterations / s" in page


def test_a_sine_run_shows_its_loss_before_and_after_adaptation(client, owner, make_run):
    run = make_run(
        owner,
        dataset="sine",
        ways=None,
        test_tasks=100,
        test_loss_before=4.391,
        test_loss_after=0.1712,
    )
    client.force_login(owner)

    page = client.get(run.get_absolute_url()).content.decode()
    listing = client.get(reverse("run-list")).content.decode()
    experiment = client.get(run.experiment.get_absolute_url()).content.decode()

    for html in (page, listing, experiment):
        assert "4.391 → 0.1712" in html


def test_cancel_and_evaluate_now_ask_for_confirmation(client, owner, make_run):
    running = make_run(owner, status=Run.Status.RUNNING)
    cancelled = make_run(owner, status=Run.Status.CANCELLED, checkpoint_file="runs/x/c.pt")
    client.force_login(owner)

    running_page = client.get(running.get_absolute_url()).content.decode()
    cancelled_page = client.get(cancelled.get_absolute_url()).content.decode()

    assert "return confirm('Cancel this run?" in running_page
    assert 'id="evaluate-form"' in cancelled_page and "return confirm(" in cancelled_page


def test_get_on_a_post_only_address_is_the_sites_405_page(client, owner, make_run):
    run = make_run(owner, status=Run.Status.RUNNING)
    client.force_login(owner)

    response = client.get(reverse("run-cancel", args=[run.pk]))

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert "does not open as a page" in response.content.decode()
    assert Run.objects.get(pk=run.pk).cancel_requested is False


def test_the_500_page_is_the_sites_own_and_needs_no_database():
    html = render_to_string("500.html")

    assert "Reptile lab" in html and "Something went wrong" in html


# --- names, notes and tags -------------------------------------------------------------------


def test_the_owner_renames_annotates_and_tags_a_run(client, owner, make_run):
    run = make_run(owner)
    client.force_login(owner)

    client.post(
        reverse("run-labels", args=[run.pk]),
        {"name": " best lr ", "notes": "lr 1e-3", "tags": "Baseline, sweep ,baseline"},
    )

    run.refresh_from_db()
    assert (run.name, run.notes, run.tag_list) == ("best lr", "lr 1e-3", ["baseline", "sweep"])
    listing = client.get(reverse("run-list"), {"tag": "sweep"}).content.decode()
    assert "best lr" in listing
    assert (
        f'data-run="{run.pk}"'
        not in client.get(reverse("run-list"), {"tag": "swe"}).content.decode()
    )


def test_a_stranger_cannot_label_someone_elses_run(client, owner, stranger, make_run):
    run = make_run(owner)
    client.force_login(stranger)

    response = client.post(reverse("run-labels", args=[run.pk]), {"name": "mine", "tags": "x"})

    assert response.status_code == 403
    run.refresh_from_db()
    assert (run.name, run.tags) == ("", "")


def test_too_long_tags_are_refused_with_a_message_and_nothing_is_lost(client, owner, make_run):
    run = make_run(owner, notes="keep me")
    client.force_login(owner)

    response = client.post(
        reverse("run-labels", args=[run.pk]), {"notes": "new", "tags": "x" * 600}, follow=True
    )

    assert "At most 500 characters of tags" in response.content.decode()
    run.refresh_from_db()
    assert run.notes == "keep me"


# --- the runs list ---------------------------------------------------------------------------


def test_the_runs_list_shows_duration_speed_and_zoned_times(client, owner, make_run):
    now = timezone.now()
    make_run(
        owner,
        started_at=now - timedelta(hours=2, minutes=7),
        finished_at=now,
        seconds_per_iteration=0.5,
    )
    client.force_login(owner)

    html = client.get(reverse("run-list")).content.decode()

    assert "2 h 07 min" in html and ">2.0<" in html and " UTC</td>" in html


def test_the_runs_list_polls_only_while_a_run_on_the_page_can_change(client, owner, make_run):
    done = make_run(owner)
    client.force_login(owner)
    assert "data-live-url" not in client.get(reverse("run-list")).content.decode()

    running = make_run(owner, status=Run.Status.RUNNING, iteration=5, total_iterations=10)
    html = client.get(reverse("run-list")).content.decode()
    assert f'ids={running.pk}"' in html

    feed = client.get(reverse("run-list-live"), {"ids": f"{running.pk},{done.pk}"}).json()
    assert feed["runs"][str(running.pk)]["active"] is True
    assert "50 %" in feed["runs"][str(running.pk)]["cells"]
    assert "Succeeded" in feed["runs"][str(done.pk)]["status"]


def test_the_live_runs_feed_refuses_bad_ids(client, owner):
    client.force_login(owner)

    assert client.get(reverse("run-list-live"), {"ids": "1,x"}).status_code == 400
    too_many = ",".join(str(i) for i in range(1, 30))
    assert client.get(reverse("run-list-live"), {"ids": too_many}).status_code == 400


def test_the_run_pages_loader_snippet_opens_the_files_by_their_download_names(
    client, owner, make_run
):
    run = make_run(owner, initialization="runs/1/attempt-1/initialization.safetensors")
    client.force_login(owner)

    page = client.get(run.get_absolute_url()).content.decode()

    name = f"run-{run.pk}-o5w1s-seed0"
    assert f"open(&quot;{name}-config.json&quot;)" in page
    assert f"load_file(&quot;{name}-initialization.safetensors&quot;)" in page
