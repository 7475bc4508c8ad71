"""Who may do what, for every URL: the access matrix, HTML and API.

For each URL that changes state: anonymous -> the login page (HTML) or 401 (API); a stranger ->
403 (404 for another user's API token: tokens are personal); the owner and staff -> done. A
session POST without the CSRF token is refused, the run page's cancel button included, and the
same POST with the token goes through (so the refusal is the token's doing).

Reads are public to logged-in users by design (webapp/experiments/access.py: "every experiment,
run, metric series, evaluation and artifact"), never to anonymous callers: every metrics and
artifact GET is checked both ways.

The two coverage tests at the top fail when a URL is added without a row here: decide who may
use it, then add it to the right table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from webapp.accounts.models import ApiToken
from webapp.datasets.models import UserDataset
from webapp.experiments.models import Evaluation, Experiment, MetricPoint, Run, Sweep

SINE_FORM = {"name": "mine", "preset": "sine", "seeds": "0", "queue": "any"}


# --- the tables ---------------------------------------------------------------------------


@dataclass
class Write:
    """A state-changing HTML URL: how to make its object, what to POST, and how to tell that
    the change happened (`done(obj, user)`)."""

    name: str
    make: Callable[[Any], Any]  # fixtures -> the object (owned by `owner`) or None
    args: Callable[[Any], list]  # object -> URL arguments
    data: Callable[[], dict]
    done: Callable[[Any, Any], bool]
    who: str  # "owner": owner or staff; "user": any logged-in user; "self": own objects only
    ok: int = 302  # the status of a successful POST


def _experiment(f):
    return f.make_experiment(f.owner, config=f.sine, seeds=(0,))


def _queued_run(f):
    return _experiment(f).runs.get()


def _sweep(f):
    from webapp.experiments.sweeps.service import create_sweep

    return create_sweep(f.owner, **_sweep_spec(f.sine))


def _sweep_spec(sine):
    return {
        "name": "sw",
        "config": sine,
        "space": {"inner_iters": {"values": [1, 2]}},
        "method": "grid",
        "seeds": [0],
    }


SWEEP_FORM = {
    "name": "sw",
    "preset": "sine",
    "base_config": '{"meta_iters": 10, "final_eval_tasks": 10, "validation_interval": 0}',
    "space": "inner_iters = 1, 2",
    "method": "grid",
    "parallel": "2",
    "sampler_seed": "0",
    "seeds": "0",
    "queue": "any",
    "save": "1",
}


def _dataset(f):
    return UserDataset.objects.create(owner=f.owner, name="d", status=UserDataset.Status.REJECTED)


def _stopped_run(f):
    """A cancelled run with a checkpoint: what "evaluate now" applies to."""
    run = _queued_run(f)
    run.checkpoint_file.save("ckpt.pt", ContentFile(b"x"), save=True)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.CANCELLED)
    return run


def _tagged(model):
    return lambda obj, user: model.objects.get(pk=obj.pk).tags == ",t,"


def _token(f):
    return ApiToken.issue(f.owner, "t")[0]


def _gone(model):
    return lambda obj, user: not model.objects.filter(pk=obj.pk).exists()


def _new_experiment_by(user, **extra) -> bool:
    return Experiment.objects.filter(owner=user, **extra).exists()


HTML_WRITES = [
    Write("experiment-delete", _experiment, lambda o: [o.pk], dict, _gone(Experiment), "owner"),
    Write(
        "run-cancel",
        _queued_run,
        lambda o: [o.pk],
        dict,
        lambda o, u: Run.objects.get(pk=o.pk).status == Run.Status.CANCELLED,
        "owner",
    ),
    Write(
        "run-labels", _queued_run, lambda o: [o.pk], lambda: {"tags": "t"}, _tagged(Run), "owner"
    ),
    Write(
        "experiment-labels",
        _experiment,
        lambda o: [o.pk],
        lambda: {"name": "renamed", "tags": "t"},
        _tagged(Experiment),
        "owner",
    ),
    Write(
        "run-evaluate",
        _stopped_run,
        lambda o: [o.pk],
        dict,
        lambda o, u: Run.objects.get(pk=o.pk).evaluate_only,
        "owner",
    ),
    Write("dataset-delete", _dataset, lambda o: [o.pk], dict, _gone(UserDataset), "owner"),
    Write(
        "experiment-new",
        lambda f: None,
        lambda o: [],
        lambda: dict(SINE_FORM),
        lambda o, u: _new_experiment_by(u, name="mine"),
        "user",
    ),
    Write(
        "experiment-clone",  # anyone may clone what they can see: the copy is theirs
        _experiment,
        lambda o: [o.pk],
        lambda: dict(SINE_FORM),
        lambda o, u: _new_experiment_by(u, cloned_from=o),
        "user",
    ),
    Write(
        "sweep-new",
        lambda f: None,
        lambda o: [],
        lambda: dict(SWEEP_FORM),
        lambda o, u: Sweep.objects.filter(owner=u, name="sw").exists(),
        "user",
    ),
    Write(
        "sweep-clone",  # as experiments: the copy is the caller's
        _sweep,
        lambda o: [o.pk],
        lambda: dict(SWEEP_FORM),
        lambda o, u: Sweep.objects.filter(owner=u, cloned_from=o).exists(),
        "user",
    ),
    Write(
        "sweep-from-experiment",  # only pre-fills the sweep form from the experiment form's
        lambda f: None,
        lambda o: [],
        lambda: dict(SINE_FORM),
        lambda o, u: not Sweep.objects.exists(),
        "user",
        ok=200,
    ),
    Write(
        "sweep-cancel",
        _sweep,
        lambda o: [o.pk],
        dict,
        lambda o, u: Sweep.objects.get(pk=o.pk).status == Sweep.Status.CANCELLED,
        "owner",
    ),
    Write(
        "dataset-upload",
        lambda f: None,
        lambda o: [],
        lambda: {"name": "up", "archive": SimpleUploadedFile("d.zip", b"PK\x05\x06" + bytes(18))},
        lambda o, u: UserDataset.objects.filter(owner=u, name="up").exists(),
        "user",
    ),
    Write(
        "token-create",
        lambda f: None,
        lambda o: [],
        lambda: {"name": "new"},
        lambda o, u: ApiToken.objects.filter(user=u, name="new").exists(),
        "user",
        ok=200,  # the new token is shown in this response, never through a redirect
    ),
    Write(
        "token-revoke",  # personal: staff revoke tokens in the admin, not here
        _token,
        lambda o: [o.pk],
        dict,
        lambda o, u: ApiToken.objects.get(pk=o.pk).revoked_at is not None,
        "self",
    ),
]
# POSTs that change only the caller's own session: CSRF still applies (login CSRF).
SESSION_POSTS = ["login", "logout", "signup"]
# GET pages (some also POST: those are in HTML_WRITES). Anonymous -> login, except these:
ANONYMOUS_PAGES = {"login", "signup"}
HTML_READS = [
    "run-list",
    "run-list-live",
    "experiment-list",
    "experiment-new",
    "experiment-detail",
    "experiment-clone",
    "run-detail",
    "run-metrics",
    "run-download",
    "compare",
    "leaderboard",
    "leaderboard-seeds",
    "sweep-list",
    "sweep-new",
    "sweep-detail",
    "sweep-clone",
    "worker-list",
    "dataset-list",
    "dataset-upload",
    "dataset-detail",
    "profile",
    "login",
    "signup",
]


@dataclass
class ApiWrite:
    method: str
    path: str  # as in the OpenAPI schema
    make: Callable[[Any], Any]
    body: dict | None
    done: Callable[[Any, Any], bool]
    who: str


API_WRITES = [
    ApiWrite(
        "DELETE",
        "/api/experiments/{experiment_id}",
        _experiment,
        None,
        _gone(Experiment),
        "owner",
    ),
    ApiWrite(
        "POST",
        "/api/runs/{run_id}/cancel",
        _queued_run,
        None,
        lambda o, u: Run.objects.get(pk=o.pk).status == Run.Status.CANCELLED,
        "owner",
    ),
    ApiWrite(
        "PATCH",
        "/api/runs/{run_id}",
        _queued_run,
        {"tags": ["t"]},
        _tagged(Run),
        "owner",
    ),
    ApiWrite(
        "PATCH",
        "/api/experiments/{experiment_id}",
        _experiment,
        {"tags": ["t"]},
        _tagged(Experiment),
        "owner",
    ),
    ApiWrite(
        "POST",
        "/api/runs/{run_id}/evaluate",
        _stopped_run,
        None,
        lambda o, u: Run.objects.get(pk=o.pk).evaluate_only,
        "owner",
    ),
    ApiWrite(
        "POST",
        "/api/experiments",
        lambda f: None,
        {"name": "api", "preset": "sine", "seeds": [0]},
        lambda o, u: _new_experiment_by(u, name="api"),
        "user",
    ),
    ApiWrite(
        "POST",
        "/api/sweeps",
        lambda f: None,
        {
            "name": "api sweep",
            "preset": "sine",
            "overrides": {"meta_iters": 10},
            "space": {"inner_iters": {"values": [1, 2]}},
            "seeds": [0],
        },
        lambda o, u: Sweep.objects.filter(owner=u, name="api sweep").exists(),
        "user",
    ),
    ApiWrite(
        "POST",
        "/api/sweeps/{sweep_id}/cancel",
        _sweep,
        None,
        lambda o, u: Sweep.objects.get(pk=o.pk).status == Sweep.Status.CANCELLED,
        "owner",
    ),
]


# API reads that are not public to every logged-in user: uploaded datasets are private to their
# owner (and staff) until made public and ready (webapp/datasets/access.py). Each path, with who
# may read an owner's private dataset through it.
PRIVATE_API_READS = {
    "/api/datasets": "the list holds only the ready datasets the caller may train on",
    "/api/datasets/{dataset_id}": "owner and staff; anyone else 404, as for a missing one",
}


def snapshot() -> tuple[int, ...]:
    """Counts that any of the writes above would change."""
    return (
        Experiment.objects.count(),
        Run.objects.filter(status=Run.Status.CANCELLED).count(),
        UserDataset.objects.count(),
        ApiToken.objects.count(),
        ApiToken.objects.filter(revoked_at__isnull=False).count(),
        Run.objects.exclude(tags="").count(),
        Experiment.objects.exclude(tags="").count(),
        Run.objects.filter(evaluate_only=True).count(),
        Sweep.objects.count(),
        Sweep.objects.filter(status=Sweep.Status.CANCELLED).count(),
    )


def _html_names() -> set[str]:
    def walk(patterns, namespace=None):
        for p in patterns:
            if isinstance(p, URLResolver):
                if p.namespace in ("admin", "api"):
                    continue  # the admin guards itself; the API is covered from its schema
                yield from walk(p.url_patterns, p.namespace or namespace)
            elif isinstance(p, URLPattern):
                yield p.name

    return set(walk(get_resolver().url_patterns))


def _api_operations() -> set[tuple[str, str]]:
    from webapp.api.api import api

    paths = api.get_openapi_schema()["paths"]
    return {(m.upper(), path) for path, item in paths.items() for m in item}


# --- fixtures ----------------------------------------------------------------------------


@dataclass
class World:
    owner: Any
    stranger: Any
    staff: Any
    make_experiment: Any
    make_run: Any
    sine: dict


@pytest.fixture
def world(owner, stranger, staff, make_experiment, make_run, settings, tmp_path) -> World:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATASETS_ROOT = tmp_path / "datasets"
    sine = {
        "dataset": "sine",
        "model": "sine_mlp",
        "meta_iters": 10,
        "final_eval_tasks": 10,
        "validation_interval": 0,
    }
    return World(owner, stranger, staff, make_experiment, make_run, sine)


def logged_in(user, **kw) -> Client:
    client = Client(**kw)
    if user is not None:
        client.force_login(user)
    return client


def token_client(user) -> Client:
    return Client(headers={"Authorization": f"Bearer {ApiToken.issue(user, 'matrix')[1]}"})


def csrf_token(client: Client) -> str:
    """The CSRF token of the client's session (any page with a form sets the cookie)."""
    client.get(reverse("login" if "_auth_user_id" not in client.session else "profile"))
    return client.cookies["csrftoken"].value


def login_redirect(response, url: str) -> bool:
    return response.status_code == 302 and response["Location"] == (
        f"{reverse('login')}?next={url}"
    )


@pytest.fixture
def finished_run(world):
    """Someone's succeeded run with both artifacts in storage, metric points and evaluations."""
    run = world.make_run(world.owner, test_accuracy=0.9, test_ci95=0.01)
    run.initialization.save("init.safetensors", ContentFile(b"weights"), save=False)
    run.config_file.save("config.json", ContentFile(b'{"config": {}}'), save=False)
    run.save()
    MetricPoint.objects.bulk_create(
        MetricPoint(run=run, name="train_loss", step=s, value=1.0 / (s + 1)) for s in range(5)
    )
    Evaluation.objects.create(run=run, split="test", accuracy=0.9, ci95=0.01, tasks=10)
    return run


# --- coverage: every URL has a row --------------------------------------------------------


def test_every_html_url_is_in_the_matrix():
    classified = {w.name for w in HTML_WRITES} | set(SESSION_POSTS) | set(HTML_READS)

    assert _html_names() == classified, "classify the new or removed URL in this module"


# POSTs that compute from a run any logged-in user may read and store nothing (a test in
# tests/webapp/api/test_tryit.py proves no row or file is written): reads, not writes.
API_COMPUTATIONS = {
    ("POST", "/api/runs/{run_id}/try/sine"),
    ("POST", "/api/runs/{run_id}/try/omniglot"),
}


def test_every_api_operation_that_changes_state_is_in_the_matrix():
    writes = {(m, p) for m, p in _api_operations() if m != "GET"}

    assert writes == {(w.method, w.path) for w in API_WRITES} | API_COMPUTATIONS


def test_every_api_dataset_read_is_in_the_matrix():
    reads = {p for m, p in _api_operations() if m == "GET" and p.startswith("/api/datasets")}

    assert reads == set(PRIVATE_API_READS), "classify the new or removed dataset URL here"


# --- HTML writes ------------------------------------------------------------------------------


def _post(client: Client, write: Write, obj) -> Any:
    return client.post(reverse(write.name, args=write.args(obj)), write.data())


@pytest.mark.parametrize("write", HTML_WRITES, ids=lambda w: w.name)
def test_anonymous_posts_go_to_the_login_page_and_change_nothing(world, write):
    obj = write.make(world)
    url = reverse(write.name, args=write.args(obj))
    before = snapshot()

    response = Client().post(url, write.data())

    assert login_redirect(response, url)
    assert snapshot() == before


@pytest.mark.parametrize("write", HTML_WRITES, ids=lambda w: w.name)
def test_a_stranger_is_refused_where_only_the_owner_may_act(world, write):
    obj = write.make(world)
    stranger = logged_in(world.stranger)
    before = snapshot()

    response = _post(stranger, write, obj)

    if write.who == "user":
        assert response.status_code == write.ok, "any logged-in user may do this"
        assert write.done(obj, world.stranger)
    else:
        assert response.status_code == (403 if write.who == "owner" else 404)
        assert snapshot() == before


@pytest.mark.parametrize("write", HTML_WRITES, ids=lambda w: w.name)
def test_the_owner_may_act(world, write):
    obj = write.make(world)

    response = _post(logged_in(world.owner), write, obj)

    assert response.status_code == write.ok
    assert write.done(obj, world.owner)


@pytest.mark.parametrize("write", HTML_WRITES, ids=lambda w: w.name)
def test_staff_may_act_except_on_personal_tokens(world, write):
    obj = write.make(world)

    response = _post(logged_in(world.staff), write, obj)

    if write.who == "self":
        assert response.status_code == 404
        assert not write.done(obj, world.staff)
    else:
        assert response.status_code == write.ok
        assert write.done(obj, world.staff)


@pytest.mark.parametrize("write", [w for w in HTML_WRITES if w.who != "user"], ids=lambda w: w.name)
def test_a_get_never_changes_anything(world, write):
    obj = write.make(world)
    client = logged_in(world.owner)
    before = snapshot()

    response = client.get(reverse(write.name, args=write.args(obj)))

    assert response.status_code == 405
    assert snapshot() == before


# --- CSRF -------------------------------------------------------------------------------------


@pytest.mark.parametrize("write", HTML_WRITES, ids=lambda w: w.name)
def test_a_session_post_without_the_csrf_token_is_refused(world, write):
    obj = write.make(world)
    client = logged_in(world.owner, enforce_csrf_checks=True)
    url = reverse(write.name, args=write.args(obj))

    before = snapshot()

    refused = client.post(url, write.data())

    assert refused.status_code == 403
    assert snapshot() == before
    # The same request with the token goes through: the refusal was the token's doing.
    allowed = client.post(url, {**write.data(), "csrfmiddlewaretoken": csrf_token(client)})
    assert allowed.status_code == write.ok
    assert write.done(obj, world.owner)


def test_the_run_pages_cancel_button_posts_with_the_csrf_token(world):
    run = _queued_run(world)
    client = logged_in(world.owner, enforce_csrf_checks=True)
    page = client.get(reverse("run-detail", args=[run.pk])).content.decode()

    assert f'action="{reverse("run-cancel", args=[run.pk])}"' in page
    assert 'name="csrfmiddlewaretoken"' in page


@pytest.mark.parametrize("name", SESSION_POSTS)
def test_login_logout_and_signup_need_the_csrf_token(world, name):
    client = Client(enforce_csrf_checks=True)
    if name == "logout":
        client.force_login(world.owner)

    response = client.post(reverse(name), {"username": "x", "password": "y"})

    assert response.status_code == 403
    if name == "logout":
        assert client.session["_auth_user_id"] == str(world.owner.pk)


def test_an_api_session_write_without_the_csrf_header_is_refused(world):
    run = _queued_run(world)
    client = logged_in(world.owner, enforce_csrf_checks=True)
    url = f"/api/runs/{run.pk}/cancel"

    refused = client.post(url)

    assert refused.status_code == 403
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED
    allowed = client.post(url, headers={"X-CSRFToken": csrf_token(client)})
    assert allowed.status_code == 200
    assert Run.objects.get(pk=run.pk).status == Run.Status.CANCELLED


def test_an_api_token_needs_no_csrf_token(world):
    run = _queued_run(world)
    client = token_client(world.owner)
    client.handler.enforce_csrf_checks = True

    response = client.post(f"/api/runs/{run.pk}/cancel")

    assert response.status_code == 200


# --- API writes -----------------------------------------------------------------------------


def _api_call(client: Client, write: ApiWrite, obj):
    path = write.path
    if obj is not None:
        for key in ("{experiment_id}", "{run_id}", "{sweep_id}"):
            path = path.replace(key, str(obj.pk))
    if write.method == "DELETE":
        return client.delete(path)
    if write.method == "PATCH":
        return client.patch(path, write.body or {}, content_type="application/json")
    return client.post(path, write.body or {}, content_type="application/json")


def _api_id(write: ApiWrite) -> str:
    return f"{write.method} {write.path}"


@pytest.mark.parametrize("write", API_WRITES, ids=_api_id)
def test_anonymous_api_writes_are_401(world, write):
    obj = write.make(world)

    response = _api_call(Client(), write, obj)

    assert response.status_code == 401
    assert not write.done(obj, world.owner)


@pytest.mark.parametrize("write", API_WRITES, ids=_api_id)
@pytest.mark.parametrize("who", ["stranger", "owner", "staff"])
def test_api_writes_follow_ownership(world, write, who):
    obj = write.make(world)
    user = getattr(world, who)

    response = _api_call(token_client(user), write, obj)

    if write.who == "owner" and who == "stranger":
        assert response.status_code == 403
        assert not write.done(obj, user)
    else:
        assert response.status_code in (200, 201, 204)
        assert write.done(obj, user)


# --- reads: public to logged-in users, never to anonymous ones -----------------------------------

ARTIFACT_PAGES = [
    ("run-detail", None),
    ("run-metrics", None),
    ("run-download", "metrics.csv"),
    ("run-download", "initialization.safetensors"),
    ("run-download", "config.json"),
]
ARTIFACT_API = ["", "/metrics", "/metrics.csv", "/evaluations", "/initialization", "/config"]


def _artifact_url(name: str, artifact: str | None, run: Run) -> str:
    return reverse(name, args=[run.pk] if artifact is None else [run.pk, artifact])


@pytest.mark.parametrize(("name", "artifact"), ARTIFACT_PAGES)
def test_any_logged_in_user_may_read_a_runs_metrics_and_artifacts(
    finished_run, world, name, artifact
):
    response = logged_in(world.stranger).get(_artifact_url(name, artifact, finished_run))

    assert response.status_code == 200
    if artifact == "initialization.safetensors":
        assert b"".join(response.streaming_content) == b"weights"


@pytest.mark.parametrize(("name", "artifact"), ARTIFACT_PAGES)
def test_anonymous_users_may_not_read_metrics_or_artifacts(finished_run, name, artifact):
    url = _artifact_url(name, artifact, finished_run)

    assert login_redirect(Client().get(url), url)


@pytest.mark.parametrize("suffix", ARTIFACT_API)
def test_any_api_user_may_read_a_runs_metrics_and_artifacts(finished_run, world, suffix):
    response = token_client(world.stranger).get(f"/api/runs/{finished_run.pk}{suffix}")

    assert response.status_code == 200


def test_every_api_read_is_401_without_a_token_or_session(finished_run, world):
    ids = {
        "{run_id}": str(finished_run.pk),
        "{experiment_id}": str(finished_run.experiment_id),
        "{key}": "omniglot-paper-5way-1shot-transductive",
        "{dataset_id}": str(_public_ready_dataset(world).pk),
    }
    reads = sorted((m, p) for m, p in _api_operations() if m == "GET")
    client = Client()

    answers = {}
    for _, path in reads:
        for placeholder, value in ids.items():
            path = path.replace(placeholder, value)
        answers[path] = client.get(path).status_code

    assert len(answers) >= 11
    assert set(answers.values()) == {401}, answers


def test_the_openapi_schema_is_the_one_public_api_url_and_holds_no_data(client, finished_run):
    finished_run.experiment.name = "a-secret-experiment"
    finished_run.experiment.save()

    response = client.get("/api/openapi.json")

    assert response.status_code == 200
    assert "a-secret-experiment" not in response.content.decode()
    assert ("GET", "/api/openapi.json") not in _api_operations()  # so not in the 401 test


@pytest.mark.parametrize("name", sorted(set(HTML_READS) - ANONYMOUS_PAGES))
def test_every_page_sends_anonymous_users_to_the_login_page(finished_run, world, name):
    dataset = _dataset(world)
    args = {
        "experiment-detail": [finished_run.experiment_id],
        "experiment-clone": [finished_run.experiment_id],
        "run-detail": [finished_run.pk],
        "run-metrics": [finished_run.pk],
        "run-download": [finished_run.pk, "metrics.csv"],
        "dataset-detail": [dataset.pk],
        "sweep-detail": [1],
        "sweep-clone": [1],
        "leaderboard-seeds": ["omniglot-paper-5way-1shot-transductive", finished_run.group_hash],
    }.get(name, [])
    url = reverse(name, args=args)

    assert login_redirect(Client().get(url), url)


def test_a_strangers_private_dataset_is_hidden_but_a_public_ready_one_is_not(world):
    private = _dataset(world)
    public = UserDataset.objects.create(
        owner=world.owner, name="p", is_public=True, status=UserDataset.Status.READY
    )
    client = logged_in(world.stranger)

    assert client.get(reverse("dataset-detail", args=[private.pk])).status_code == 404
    assert client.get(reverse("dataset-detail", args=[public.pk])).status_code == 200


# --- uploaded datasets through the API: private until public and ready -------------------------


def _public_ready_dataset(f):
    return UserDataset.objects.create(
        owner=f.owner, name="shared", is_public=True, status=UserDataset.Status.READY
    )


@pytest.mark.parametrize("who", ["stranger", "owner", "staff"])
def test_a_private_dataset_is_read_through_the_api_only_by_its_owner_and_staff(world, who):
    private = UserDataset.objects.create(
        owner=world.owner, name="secret", status=UserDataset.Status.READY
    )
    client = token_client(getattr(world, who))

    one = client.get(f"/api/datasets/{private.pk}")
    listed = [d["id"] for d in client.get("/api/datasets").json()["items"]]

    if who == "stranger":
        assert one.status_code == 404 and "secret" not in one.content.decode()
        assert private.pk not in listed
    else:
        assert one.status_code == 200 and one.json()["name"] == "secret"
        assert private.pk in listed


def test_a_public_ready_dataset_is_read_through_the_api_by_any_user(world):
    public = _public_ready_dataset(world)

    for client in (token_client(world.stranger), logged_in(world.stranger)):
        assert client.get(f"/api/datasets/{public.pk}").status_code == 200
        assert [d["id"] for d in client.get("/api/datasets").json()["items"]] == [public.pk]


def test_an_unready_dataset_is_read_through_the_api_by_its_owner_only(world):
    pending = UserDataset.objects.create(
        owner=world.owner, name="p", is_public=True, status=UserDataset.Status.PENDING
    )
    url = f"/api/datasets/{pending.pk}"

    assert token_client(world.owner).get(url).status_code == 200
    assert token_client(world.stranger).get(url).status_code == 404
    assert pending.pk not in [
        d["id"] for d in token_client(world.owner).get("/api/datasets").json()["items"]
    ]  # listed only once it can be trained on
