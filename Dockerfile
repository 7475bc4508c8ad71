# syntax=docker/dockerfile:1
# The control plane's image: the web site (gunicorn + whitenoise), the migrate one-shot, beat,
# the housekeeping worker and the optional CPU training worker. No CUDA here: torch comes from
# the PyTorch CPU index (about 200 MB) instead of PyPI's default Linux wheel, which pulls
# several GB of CUDA libraries. GPU hosts use Dockerfile.worker.
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtual environment with every dependency ------------------------------------
FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# torch first, from the CPU index, at requirements.txt's own pin (read from the file, so the two
# can never drift apart); then the rest: pip finds torch==X satisfied by the installed X+cpu and
# leaves it. The build fails if a CUDA torch or CUDA libraries got in anyway. (DL3013: the pin
# is there, in $torch_pin.)
# hadolint ignore=DL3013
RUN set -eu; \
    torch_pin="$(sed -n 's/^\(torch==[^ ;#]*\).*/\1/p' /tmp/requirements.txt)"; \
    test -n "$torch_pin" || { echo "no torch==VERSION line in requirements.txt" >&2; exit 1; }; \
    pip install --index-url https://download.pytorch.org/whl/cpu "$torch_pin"; \
    pip install -r /tmp/requirements.txt; \
    python -c "import torch; assert torch.version.cuda is None, torch.__version__"; \
    if pip list 2>/dev/null | grep -iE '^nvidia-(cuda|cublas|cudnn|nccl)'; then \
        echo "CUDA libraries in the web image" >&2; exit 1; \
    fi

# ---- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH \
    STATIC_ROOT=/app/staticfiles \
    METATRAIN_DATA=/data \
    MEDIA_ROOT=/media \
    DATASETS_ROOT=/media/datasets \
    RUNS_ROOT=/runs \
    DATASET_CACHE_ROOT=/cache/datasets
# uid 1000: a bind-mounted data folder must be readable by it. The writable folders are owned
# by it, and a named volume mounted there starts with that owner.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data /media /runs /cache /beat \
    && chown app:app /media /runs /cache /beat
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The code stays owned by root: the processes read it, never write it.
COPY . .
# Static files at build time, with throwaway production settings (DEBUG off needs a key).
RUN DEBUG=false ALLOWED_HOSTS=build \
    SECRET_KEY=collectstatic-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz \
    python manage.py collectstatic --noinput \
    && python -m compileall -q webapp metatrain
USER 1000:1000
EXPOSE 8000
# The web process (this image's default command) answers the login page. Host: the first of
# ALLOWED_HOSTS (Django answers 400 to another); X-Forwarded-Proto so that SECURE_SSL_REDIRECT
# does not answer 301. Compose disables it for the other services started from this image.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; h = os.environ.get('ALLOWED_HOSTS', '').split(',')[0].strip().lstrip('.'); h = 'localhost' if h in ('', '*') else h; u.urlopen(u.Request('http://127.0.0.1:8000/accounts/login/', headers={'Host': h, 'X-Forwarded-Proto': 'https'}), timeout=8)"]
CMD ["gunicorn", "webapp.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--preload", "--timeout", "60", \
     "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-"]
