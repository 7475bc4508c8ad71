# The README's commands. Every target sets up what it needs on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast worker lint format bench bench-web chaos clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

## make run: the dashboard on http://127.0.0.1:8000 with a worker, SQLite and an embedded Redis.
run: $(STAMP)
	$(PY) manage.py runstack

## make test: the whole suite (unit, integration, end-to-end with a real worker and a browser).
## In-process tests run in TEST_PROCESSES pytest-xdist processes, a file per process at a time;
## then the tests that start workers, browsers or time themselves run one at a time, because
## their heartbeats and budgets are wall-clock and must not compete with the rest of the suite.
TEST_PROCESSES ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile -m "not e2e and not serial" $(PYTEST_ARGS)
	$(PY) -m pytest -m "e2e or serial" $(PYTEST_ARGS)

## make test-fast: everything but the slow and end-to-end tests.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile -m "not slow and not e2e and not serial" $(PYTEST_ARGS)

## make worker: one more training worker against CELERY_BROKER_URL (WORKER_ARGS="--gpu 0" on a
## GPU host; one worker per GPU).
worker: $(STAMP)
	$(PY) manage.py run_worker $(WORKER_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) tools/import_cycles.py metatrain
	$(PY) manage.py makemigrations --check --dry-run

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## make bench: the training library against a plain per-task loop (prints figures).
bench: $(STAMP)
	$(PY) -m metatrain bench

## make bench-web: the dashboard under load: gunicorn as production runs it against a database
## seeded by `manage.py seed_load`, 8 clients per endpoint; prints req/s, p50, p99 and targets.
## DATABASE_URL picks the database (default: SQLite in var/); more through BENCH_WEB_ARGS, e.g.
## make bench-web DATABASE_URL=postgres://user@host/db BENCH_WEB_ARGS="--runs 10000 --points 200"
BENCH_WEB_ARGS ?=
bench-web: $(STAMP)
	$(PY) tools/bench_web.py $(BENCH_WEB_ARGS)

## make chaos N=5: SIGKILL training workers at random moments against a throwaway database and
## Redis; reports detection time, recovery and metric integrity (exit 1 if a run was not recovered).
## More options (other scenarios, PostgreSQL) through CHAOS_ARGS, e.g.
## make chaos CHAOS_ARGS="--scenario kill,term --database-url postgres://user@host/db"
N ?= 3
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(PY) tools/chaos.py --cycles $(N) $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache
