# One image for the web process and the workers. GPU workers use the same image with the
# NVIDIA runtime: the torch wheel from PyPI for Linux x86-64 carries CUDA.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN DEBUG=false SECRET_KEY=collectstatic-only-not-a-secret-000000000000000000000000 \
    ALLOWED_HOSTS=build python manage.py collectstatic --noinput

RUN useradd --create-home app && mkdir -p /data /media /runs && chown app /media /runs
USER app

EXPOSE 8000
CMD ["gunicorn", "webapp.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "60"]
