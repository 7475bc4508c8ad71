"""The deployment files, kept honest without a Docker engine.

The compose files are read as YAML (anchors and merge keys resolved, `${VAR}` left as text) and
checked for what a real install depends on: GPUs reserved by index, migrations before anything
uses the database, a web image without CUDA, every variable documented in `.env.example`, and
an explicit value wherever an empty line of `.env` would break a setting. Where a Compose v2
client is installed (`docker compose`, or the standalone `docker-compose` v2 binary) the files
are also validated and interpolated by it; where `hadolint` is, the Dockerfiles are linted.
Neither needs an engine; both are skipped without their tool, and nothing here builds an image.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTROL_PLANE = ROOT / "docker-compose.yml"
GPU_HOST = ROOT / "docker-compose.gpu.yml"
COMPOSE_FILES = (CONTROL_PLANE, GPU_HOST)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def services(path: Path) -> dict[str, dict]:
    return load(path)["services"]


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def command_text(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def uses_database(service: dict) -> bool:
    return "DATABASE_URL" in (service.get("environment") or {})


def gpu_devices(service: dict) -> list[dict]:
    reservations = (service.get("deploy") or {}).get("resources", {}).get("reservations", {})
    return [d for d in reservations.get("devices", []) if "gpu" in d.get("capabilities", [])]


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(duration))
    assert match and any(match.groups()), f"unexpected duration {duration!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


# ---- GPUs ---------------------------------------------------------------------------------


def test_every_gpu_is_reserved_by_its_index_never_by_count():
    gpu_services = {
        (path.name, name): service
        for path in COMPOSE_FILES
        for name, service in services(path).items()
        if gpu_devices(service)
    }
    assert len(gpu_services) >= 2, "the GPU host file shows at least two GPUs"

    indexes = []
    for (file, name), service in gpu_services.items():
        (device,) = gpu_devices(service)
        assert "count" not in device, f"{file}:{name} uses count: replicas would share GPU 0"
        assert device["driver"] == "nvidia"
        (index,) = device["device_ids"]  # one GPU per service
        indexes.append(index)
        assert name == f"worker-gpu{index}", f"{file}:{name} reserves GPU {index}"
        # Inside the container the reserved GPU is the only one, so CUDA calls it 0.
        assert "run_worker --gpu 0 " in command_text(service) + " ", (file, name)
        assert service["hostname"].endswith(f"-gpu{index}"), (file, name)
    assert len(set(indexes)) == len(indexes), "two services reserve the same GPU"


def test_gpu_workers_keep_their_scratch_on_this_host_and_read_omniglot_read_only():
    for name, service in services(GPU_HOST).items():
        volumes = service["volumes"]
        assert "runs:/runs" in volumes and "cache:/cache" in volumes, name
        (omniglot,) = [v for v in volumes if v.startswith("${OMNIGLOT_DIR")]
        assert omniglot.endswith(":/data/omniglot:ro"), name
        env = service["environment"]
        assert (env["METATRAIN_DATA"], env["RUNS_ROOT"]) == ("/data", "/runs"), name
        assert env["DATASET_CACHE_ROOT"].startswith("/cache/"), name
        assert "--runs-per-gpu ${RUNS_PER_GPU:-1}" in command_text(service), name
        # Time for every run on the GPU to write its checkpoint to storage after SIGTERM.
        assert seconds(service["stop_grace_period"]) >= 120, name
        assert service["image"].startswith("${WORKER_IMAGE"), name
        assert service["build"]["dockerfile"] == "Dockerfile.worker", name


# ---- Start order --------------------------------------------------------------------------


def test_everything_that_uses_the_database_waits_for_migrate():
    control = services(CONTROL_PLANE)
    migrate = control["migrate"]
    assert migrate["restart"] == "no"
    assert command_text(migrate) == "python manage.py migrate --noinput"
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}

    users = [name for name, service in control.items() if uses_database(service)]
    assert {"web", "beat", "worker-default", "worker-cpu"} <= set(users)
    for name in set(users) - {"migrate"}:
        depends = control[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["createbucket"] == {"condition": "service_completed_successfully"}, name

    # A GPU host has no migrate service to depend on (it is on the control plane): its
    # workers wait until `migrate --check` says the schema matches their code.
    for name, service in services(GPU_HOST).items():
        assert uses_database(service), name
        command = command_text(service)
        assert command.index("until ") < command.index("migrate --check"), name
        assert command.index("migrate --check") < command.index("exec python manage.py"), name


def test_the_stores_have_healthchecks_and_the_one_shots_run_once():
    control = services(CONTROL_PLANE)
    for name in ("db", "redis", "minio"):
        assert control[name]["healthcheck"]["test"], name
    assert "-h" in control["db"]["healthcheck"]["test"], "pg_isready over TCP, not the socket"
    assert control["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert control["createbucket"]["restart"] == "no"
    assert control["createbucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}


def test_only_the_web_service_keeps_the_web_images_healthcheck():
    """The image's HEALTHCHECK asks gunicorn for the login page: it means nothing for beat or a
    worker started from the same image."""
    assert "\nHEALTHCHECK " in (ROOT / "Dockerfile").read_text()
    for name, service in services(CONTROL_PLANE).items():
        if "build" not in service:
            continue
        if name == "web":
            assert "healthcheck" not in service
        else:
            assert service["healthcheck"] == {"disable": True}, name


def test_one_beat_in_the_whole_deployment_and_gunicorn_as_specified():
    beats = [
        (path.name, name)
        for path in COMPOSE_FILES
        for name, service in services(path).items()
        if " beat" in command_text(service)
    ]
    assert beats == [("docker-compose.yml", "beat")]
    assert "/beat/" in command_text(services(CONTROL_PLANE)["beat"])

    web = command_text(services(CONTROL_PLANE)["web"])
    assert web.startswith("gunicorn webapp.wsgi ")
    assert "--workers=3" in web and "--timeout=60" in web


def test_a_plain_compose_up_serves_plain_http_unless_told_otherwise():
    """The stack has no TLS: redirecting to https by default would land every browser on an
    address nothing serves."""
    for name, service in services(CONTROL_PLANE).items():
        if uses_database(service):
            assert service["environment"]["SECURE_SSL_REDIRECT"] == (
                "${SECURE_SSL_REDIRECT:-false}"
            ), name


# ---- Images -------------------------------------------------------------------------------


def torch_pin() -> str:
    pins = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if re.match(r"torch\s*[=<>~!]", line)
    ]
    assert len(pins) == 1 and pins[0].startswith("torch=="), pins
    return pins[0]


def test_the_web_image_installs_torch_from_the_cpu_index_at_the_pinned_version():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--extra-index-url" not in dockerfile, "PyPI's CUDA wheel could win over +cpu"
    cpu_install = dockerfile.index(f'pip install --index-url {CPU_INDEX} "$torch_pin"')
    assert cpu_install < dockerfile.index("pip install -r /tmp/requirements.txt")
    assert "torch.version.cuda is None" in dockerfile

    # The pin is read from requirements.txt by this sed expression: run it.
    (expression,) = re.findall(r"sed -n '([^']+)' /tmp/requirements\.txt", dockerfile)
    result = subprocess.run(
        ["sed", "-n", expression, str(ROOT / "requirements.txt")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == torch_pin()


def test_the_worker_image_gets_a_cuda_torch_and_no_gpu_selection_of_its_own():
    dockerfile = (ROOT / "Dockerfile.worker").read_text()
    assert CPU_INDEX not in dockerfile
    # PyPI's CUDA torch by default; another index (an older CUDA) only when asked, at the pin.
    assert "\nARG TORCH_INDEX=\n" in dockerfile
    assert 'pip install --index-url "$TORCH_INDEX" "$torch_pin"' in dockerfile
    web_sed = re.findall(
        r"sed -n '[^']+' /tmp/requirements\.txt", (ROOT / "Dockerfile").read_text()
    )
    assert re.findall(r"sed -n '[^']+' /tmp/requirements\.txt", dockerfile) == web_sed
    assert "pip install -r /tmp/requirements.txt" in dockerfile
    assert "assert torch.version.cuda" in dockerfile
    # Which GPU a container sees is the compose file's device_ids, not the image.
    assert "NVIDIA_VISIBLE_DEVICES=" not in dockerfile


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.worker"])
def test_images_run_as_a_non_root_user(dockerfile):
    users = re.findall(r"^USER (\S+)", (ROOT / dockerfile).read_text(), flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users


def dockerignore_patterns() -> list[tuple[bool, list[str]]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        patterns.append((negated, pattern.split("/")))
    return patterns


def _matches(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _matches(rest, parts[1:])


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.split("/")
    excluded = False
    for negated, pattern in dockerignore_patterns():
        if any(_matches(pattern, parts[:n]) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "var/db.sqlite3",
        "var/runs/1/attempt-1/checkpoint.safetensors",
        "media/runs/1/config.json",
        ".git/HEAD",
        ".env",
        ".env.gpu",
        "tests/deploy/test_compose.py",
        "webapp/__pycache__/settings.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed",
        "staticfiles/staticfiles.json",
        "data/omniglot/images_background.zip",
    ],
)
def test_dockerignore_keeps_environments_state_secrets_and_tests_out(path):
    assert dockerignored(path)


def files_the_app_reads_from_its_own_folder() -> set[str]:
    """`settings.BASE_DIR / "a" / "b"` in the application's code (settings.py's own are the
    development defaults: var/, staticfiles/)."""
    found = set()
    for source in (ROOT / "webapp").rglob("*.py"):
        if source == ROOT / "webapp" / "settings.py":
            continue
        for match in re.finditer(r"BASE_DIR\)?((?:\s*/\s*\"[^\"]+\")+)", source.read_text()):
            path = "/".join(re.findall(r"\"([^\"]+)\"", match.group(1)))
            if not path.startswith("var"):
                found.add(path)
    return found


def test_dockerignore_keeps_what_the_app_needs_at_run_time():
    needed = {
        "manage.py",
        "requirements.txt",
        "webapp/settings.py",
        "metatrain/__init__.py",
        "templates",
        "static",
    } | files_the_app_reads_from_its_own_folder()
    assert "docs/load_initialization.py" in needed  # the run page shows it
    for path in sorted(needed):
        assert (ROOT / path).exists(), path
        assert not dockerignored(path), path


# ---- Variables ----------------------------------------------------------------------------


def compose_variables() -> set[str]:
    names = set()
    for path in COMPOSE_FILES:
        text = path.read_text().replace("$$", "")  # $$ escapes a $ for the container's shell
        names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    return names


def settings_variables() -> set[str]:
    text = (ROOT / "webapp" / "settings.py").read_text()
    return set(re.findall(r"env_[a-z_]+\(\s*\"([A-Z][A-Z0-9_]*)\"", text))


def test_every_variable_the_compose_files_use_is_in_env_example():
    names = compose_variables()
    assert {"SECRET_KEY", "CONTROL_PLANE_HOST", "OMNIGLOT_DIR", "RUNS_PER_GPU"} <= names
    assert sorted(names - set(env_example())) == []


def test_every_setting_the_site_reads_is_in_env_example():
    names = settings_variables()
    assert {"SECRET_KEY", "SECURE_SSL_REDIRECT", "RUNS_ROOT"} <= names
    assert sorted(names - set(env_example())) == []


# Read only when CELERY_BROKER_URL is empty, which compose never leaves it.
NOT_USED_UNDER_COMPOSE = {"EMBEDDED_REDIS_SOCKET"}


def test_settings_an_empty_env_line_would_break_are_set_explicitly_in_every_app_service():
    """Compose passes `KEY=` from .env as an empty string, and env_str returns it instead of its
    default: STATIC_ROOT= would make whitenoise serve the working directory. Every such setting
    is given a value by each service that runs the application."""
    text = (ROOT / "webapp" / "settings.py").read_text()
    with_default = set(re.findall(r"env_str\(\s*\"([A-Z][A-Z0-9_]*)\"\s*,", text))
    empty = {key for key, value in env_example().items() if value == ""}
    must_set = (with_default & empty) - NOT_USED_UNDER_COMPOSE
    assert {"STATIC_ROOT", "MEDIA_ROOT", "RUNS_ROOT", "DATABASE_URL"} <= must_set

    for path in COMPOSE_FILES:
        for name, service in services(path).items():
            if "build" not in service:
                continue
            environment = service["environment"]
            missing = sorted(key for key in must_set if not environment.get(key))
            assert missing == [], f"{path.name}:{name} leaves {missing} to .env"


# ---- With the tools, where they are installed -----------------------------------------------


def compose_command() -> list[str] | None:
    candidates = [["docker", "compose"]]
    for directory in (None, str(Path(sys.executable).parent)):
        binary = shutil.which("docker-compose", path=directory)
        if binary:
            candidates.append([binary])
    for candidate in candidates:
        if not shutil.which(candidate[0]):
            continue
        result = subprocess.run(
            [*candidate, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        # Compose v2 or later (v1, the Python one, knows neither profiles in this form nor
        # required: false).
        if result.returncode == 0 and re.search(r"version v?([2-9]|\d\d)\.", result.stdout):
            return candidate
    return None


COMPOSE = compose_command()
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="no Docker Compose v2 client here")

CONTROL_PLANE_ENV = {
    "SECRET_KEY": "k" * 40 + "0123456789abcdef",
    "ALLOWED_HOSTS": "meta.lan",
    "POSTGRES_PASSWORD": "pgpassword",
    "REDIS_PASSWORD": "redispassword",
    "AWS_ACCESS_KEY_ID": "metatrain",
    "AWS_SECRET_ACCESS_KEY": "s3password",
}
GPU_HOST_ENV = {
    **CONTROL_PLANE_ENV,
    "CONTROL_PLANE_HOST": "10.0.0.5",
    "GPU_HOST_NAME": "box1",
    "OMNIGLOT_DIR": "/srv/omniglot",
}


def compose_config(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    # Only what compose itself needs from this process's environment: compose lets the shell's
    # variables win over the env file, and a test run has DATABASE_URL and others set.
    clean = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "DOCKER_CONFIG"}}
    return subprocess.run(
        [*COMPOSE, "--env-file", str(env_file), *args, "config", "--format", "json"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


SERVICES = {"db", "redis", "minio", "createbucket", "migrate", "web", "beat", "worker-default"}
GPU_SERVICES = {"worker-gpu0", "worker-gpu1"}


@needs_compose
@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["-f", "docker-compose.yml"], CONTROL_PLANE_ENV, SERVICES),
        (
            ["-f", "docker-compose.yml", "--profile", "cpu"],
            CONTROL_PLANE_ENV,
            SERVICES | {"worker-cpu"},
        ),
        (["-f", "docker-compose.gpu.yml"], GPU_HOST_ENV, GPU_SERVICES),
        (
            ["-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml"],
            GPU_HOST_ENV,
            SERVICES | GPU_SERVICES,
        ),
    ],
    ids=["control-plane", "control-plane+cpu", "gpu-host", "one-machine"],
)
def test_compose_validates_the_files(tmp_path, args, env, expected):
    result = compose_config(tmp_path, env, *args)

    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["services"]) == expected


@needs_compose
def test_compose_points_gpu_workers_at_the_control_plane(tmp_path):
    result = compose_config(tmp_path, GPU_HOST_ENV, "-f", str(GPU_HOST))

    assert result.returncode == 0, result.stderr
    for name, service in json.loads(result.stdout)["services"].items():
        env = service["environment"]
        assert env["DATABASE_URL"] == "postgres://metatrain:pgpassword@10.0.0.5:5432/metatrain"
        assert env["CELERY_BROKER_URL"] == "redis://:redispassword@10.0.0.5:6379/0"
        assert env["AWS_S3_ENDPOINT_URL"] == "http://10.0.0.5:9000"
        assert service["hostname"] == f"box1-{name.removeprefix('worker-')}"


@needs_compose
@pytest.mark.parametrize(
    ("path", "env", "missing"),
    [
        (CONTROL_PLANE, CONTROL_PLANE_ENV, "SECRET_KEY"),
        (CONTROL_PLANE, CONTROL_PLANE_ENV, "POSTGRES_PASSWORD"),
        (GPU_HOST, GPU_HOST_ENV, "CONTROL_PLANE_HOST"),
        (GPU_HOST, GPU_HOST_ENV, "OMNIGLOT_DIR"),
    ],
)
def test_compose_refuses_to_start_without_a_required_variable(tmp_path, path, env, missing):
    env = {key: value for key, value in env.items() if key != missing}

    result = compose_config(tmp_path, env, "-f", str(path))

    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(HADOLINT is None, reason="no hadolint here")
@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.worker"])
def test_hadolint_finds_nothing(dockerfile):
    result = subprocess.run(
        [HADOLINT, "--no-color", str(ROOT / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
