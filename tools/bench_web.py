"""The dashboard under load: gunicorn as production runs it, a seeded database, N clients.

    python tools/bench_web.py --database-url postgres://user@host/db [--runs 1000] [--seconds 10]

What it does:
1. `manage.py seed_load --runs N` into the given database (idempotent: a second call with the
   same shape does nothing), `collectstatic` into a temporary folder.
2. Starts gunicorn with the production settings (DEBUG off, 3 sync workers, --preload), the
   command line of the Dockerfile, on a free local port.
3. Drives each endpoint in turn with `--clients` threads (a new connection per request, as
   gunicorn's sync workers close them), after a short warm-up, twice for `--seconds`:
   saturated (each client sends its next request as soon as the last is answered: the most
   requests/s the server gives; latency there is mostly waiting in line, clients / throughput)
   and paced (each client at `--rate` requests/s, latency counted from when the request was
   due: what a user waits at that load). Prints requests/s, p50 and p99 of both beside the
   targets. The first endpoint is a trivial authenticated one (`/api/presets`): the baseline
   that every other endpoint's saturated requests/s is compared to.

The load generator runs on the same machine as the server and takes its share of the CPUs, as
a browser on the same laptop would; the figures are for comparing, on one machine.
Without --database-url (and no DATABASE_URL) it measures SQLite (var/bench-web.sqlite3).
Exit status 1 when a figure misses its target, 2 when a request failed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-web-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass
class Endpoint:
    label: str
    path: str
    p99_ms: float | None = None  # the target, if any
    session: bool = False  # a browser page (session cookie) rather than the API (token)


@dataclass
class Result:
    endpoint: Endpoint
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(database_url: str, static_root: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        DEBUG="false",
        SECRET_KEY=SECRET,
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="false",
        STATIC_ROOT=static_root,
        LOG_LEVEL="WARNING",
    )
    env.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    return env


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def _credentials(env: dict[str, str]) -> dict:
    """An API token and a session cookie for the seeded user, and the runs to ask for."""
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import connection
    from django.templatetags.static import static

    from webapp.accounts.models import ApiToken
    from webapp.experiments.management.commands.seed_load import LOAD_USERNAME
    from webapp.experiments.models import Run

    runs = Run.objects.filter(experiment__owner__username=LOAD_USERNAME)
    long_run = runs.filter(experiment__name__startswith="load long run").order_by("id").first()
    if long_run is None:
        raise SystemExit("no long run seeded: run seed_load with --long-runs 1 or more")
    user = long_run.experiment.owner
    _, token = ApiToken.issue(user, "bench-web")
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]  # as login() leaves it
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    found = {
        "token": token,
        "session": session.session_key,
        "long_run": long_run.pk,
        "last_step": long_run.metric_points.order_by("-step").values_list("step", flat=True)[0],
        "runs": runs.count(),
        "plotly": static("vendor/plotly.min.js"),
    }
    connection.close()
    return found


def endpoints(found: dict) -> list[Endpoint]:
    run, tail = found["long_run"], found["last_step"] - 10
    return [
        Endpoint("trivial: GET /api/presets (baseline)", "/api/presets"),
        Endpoint("chart: GET /api/runs/{long}/metrics", f"/api/runs/{run}/metrics", 50),
        Endpoint(
            "live tail: .../metrics?after_step=last-10",
            f"/api/runs/{run}/metrics?after_step={tail}",
            10,
        ),
        Endpoint("GET /api/runs?limit=25", "/api/runs?limit=25", 100),
        Endpoint(
            "GET /api/runs filtered, sorted",
            "/api/runs?limit=25&status=succeeded&dataset=omniglot&sort=accuracy",
            100,
        ),
        Endpoint("GET /api/leaderboard", "/api/leaderboard", 100),
        Endpoint("GET /leaderboard/ (HTML)", "/leaderboard/", 100, session=True),
        Endpoint("GET / runs list (HTML)", "/", 100, session=True),
        Endpoint(
            "GET /?filtered, sorted (HTML)",
            "/?status=succeeded&dataset=omniglot&sort=accuracy",
            100,
            session=True,
        ),
        Endpoint("GET /runs/{long}/ run page (HTML)", f"/runs/{run}/", 100, session=True),
    ]


def _headers(endpoint: Endpoint, found: dict) -> dict[str, str]:
    if endpoint.session:
        return {"Cookie": f"sessionid={found['session']}"}
    return {"Authorization": f"Bearer {found['token']}"}


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def drive(
    port: int, endpoint: Endpoint, found: dict, clients: int, seconds: float, rate: float = 0.0
) -> Result:
    """`clients` threads requesting the endpoint for `seconds`: back to back (`rate` 0: the
    most the server answers), or each at `rate` requests/s, a latency then counted from when
    the request was due (a late server is not excused by the client having waited for it)."""
    headers = _headers(endpoint, found)
    result = Result(endpoint)
    lock = threading.Lock()
    deadline = 0.0

    def client(offset: float) -> None:
        mine, errors = [], []
        due = time.perf_counter() + offset
        while due < deadline:
            if rate:
                time.sleep(max(0.0, due - time.perf_counter()))
            t0 = due if rate else time.perf_counter()
            due = (due + 1 / rate) if rate else time.perf_counter()
            try:
                status, _, _ = _get(port, endpoint.path, headers)
            except OSError as exc:
                errors.append(repr(exc))
                continue
            if status != 200:
                errors.append(f"HTTP {status}")
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            result.latencies.extend(mine)
            result.errors.extend(errors[:3])

    # Paced clients start spread over one interval, as independent users would.
    offsets = [i / (rate * clients) if rate else 0.0 for i in range(clients)]
    deadline = time.perf_counter() + min(1.0, seconds / 5)  # warm-up, not counted
    warm = [threading.Thread(target=client, args=(0.0,)) for _ in range(clients)]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    result.latencies.clear()
    result.errors.clear()
    start = time.perf_counter()
    deadline = start + seconds
    threads = [threading.Thread(target=client, args=(o,)) for o in offsets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    return result


def _wait_ready(port: int, process: subprocess.Popen, timeout: float = 60) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise SystemExit("gunicorn exited before answering")
        try:
            _get(port, "/accounts/login/", {})
            return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not answer within a minute")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or f"sqlite:///{ROOT / 'var' / 'bench-web.sqlite3'}",
    )
    parser.add_argument("--runs", type=int, default=1000, help="seed_load --runs")
    parser.add_argument("--points", type=int, default=2000, help="seed_load --points")
    parser.add_argument("--seconds", type=float, default=10.0, help="per endpoint")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn sync workers")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="requests/s of each paced client (default 2)"
    )
    parser.add_argument("--only", default="", help="measure only labels containing this text")
    parser.add_argument("--skip", default="", help="leave out labels containing this text")
    args = parser.parse_args(argv)
    if min(args.runs, args.seconds, args.clients, args.workers, args.rate) <= 0:
        parser.error("--runs, --seconds, --clients, --workers and --rate must be positive")

    static_root = tempfile.mkdtemp(prefix="bench-web-static-")
    env = _env(args.database_url, static_root)
    if args.database_url.startswith("sqlite"):
        (ROOT / "var").mkdir(exist_ok=True)
    _manage(env, "migrate", "--noinput", "-v0")
    t0 = time.perf_counter()
    _manage(env, "seed_load", "--runs", str(args.runs), "--points", str(args.points))
    seed_seconds = time.perf_counter() - t0
    _manage(env, "collectstatic", "--noinput", "-v0")
    found = _credentials(env)

    port = _free_port()
    command = [
        sys.executable, "-m", "gunicorn", "webapp.wsgi", "--bind", f"127.0.0.1:{port}",
        "--workers", str(args.workers), "--preload", "--timeout", "60",
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    failed = missed = False
    try:
        ready = _wait_ready(port, server)
        chart = Endpoint("", f"/api/runs/{found['long_run']}/metrics")
        t0 = time.perf_counter()
        _get(port, chart.path, _headers(chart, found))
        first_chart_ms = (time.perf_counter() - t0) * 1000
        status, body, headers = _get(port, found["plotly"], {"Accept-Encoding": "gzip, br"})
        print(
            f"database: {args.database_url.split('@')[-1]}, {found['runs']} seeded runs "
            f"(seed_load {seed_seconds:.1f} s); gunicorn {args.workers} sync workers --preload "
            f"(answering {ready:.1f} s after start); {args.clients} clients, {args.seconds:g} s "
            "per endpoint"
        )
        print(
            f"first chart load of the long run (bucketing, then kept): {first_chart_ms:.0f} ms; "
            f"plotly.min.js: HTTP {status}, {len(body) / 1e6:.2f} MB sent "
            f"({headers.get('Content-Encoding', 'uncompressed')}), "
            f"Cache-Control: {headers.get('Cache-Control', '-')}"
        )
        print(
            f"saturated: {args.clients} clients back to back (the most the server answers); "
            f"paced: {args.clients} clients at {args.rate:g} requests/s each, latency counted "
            "from when each request was due. Targets: p99 of the paced load; req/s of the "
            "saturated load at least a third of the trivial endpoint's."
        )
        print()
        print(
            f"| {'endpoint':<46} | saturated req/s | p50 ms | p99 ms | paced p50 ms | p99 ms "
            "| target p99 | verdict |"
        )
        print(f"|{'-' * 48}|----------------:|-------:|-------:|-------------:|-------:"
              "|-----------:|---------|")  # fmt: skip
        baseline = None
        for endpoint in endpoints(found):
            if baseline is not None and (
                (args.only and args.only not in endpoint.label)
                or (args.skip and args.skip in endpoint.label)
            ):
                continue
            full = drive(port, endpoint, found, args.clients, args.seconds)
            paced = drive(port, endpoint, found, args.clients, args.seconds, args.rate)
            if baseline is None:
                baseline = full.rps
            verdicts = []
            if full.errors or paced.errors:
                failed = True
                verdicts.append(f"ERRORS {(full.errors + paced.errors)[:2]}")
            if endpoint.p99_ms is not None and not paced.percentile(99) <= endpoint.p99_ms:
                verdicts.append("p99 over")
            if full.rps < baseline / 3:
                verdicts.append("req/s < baseline/3")
            missed = missed or bool(verdicts)
            target = f"{endpoint.p99_ms:g} ms" if endpoint.p99_ms else "-"
            print(
                f"| {endpoint.label:<46} | {full.rps:15.0f} | {full.percentile(50):6.1f} "
                f"| {full.percentile(99):6.1f} | {paced.percentile(50):12.1f} "
                f"| {paced.percentile(99):6.1f} | {target:>10} | {', '.join(verdicts) or 'ok'} |",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 2 if failed else 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
