"""Trying the initialization on a finished run's page: a person's own task, adapted by
`metatrain.adapt` with the run's evaluation settings, beside a randomly initialised network.

- Sine runs: K points (drawn at random or placed by hand) and the fits after 0, 1 and 32 steps.
- Omniglot runs: N x K support images and the queries (PNG or JPEG, drawn on a canvas or
  uploaded), each reduced to the run's image size as the training data was (grayscale,
  binary, white background); or a random task from the run's test characters (the built-in
  Omniglot only: an uploaded dataset's files live on the worker hosts, not here).

Work per request is capped by the input limits below (a 20-way 10-shot task is 200 images) and
by a strict time limit checked before every inner step. Adaptations run in the web process's
request thread, so each process also limits how many run at once: per user and in total
(`Slots`). The count lives in the process, not in the database or a cache: it can never leak
(the `finally` that releases a slot runs even when the adaptation fails) and it protects
exactly what it is about, this process's CPU; with several web processes a user may hold one
slot in each.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from django.core.files.storage import default_storage
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from metatrain import adapt
from metatrain.config import Config, ConfigError
from metatrain.data import DataError, SineTaskSampler, TaskSampler, load_class_splits
from metatrain.data.sine import X_RANGE

from .errors import ErrorList, ServiceError
from .models import Run

MAX_WAYS = 20
MAX_SHOTS = 10
MAX_QUERIES = 20
MAX_IMAGE_BYTES = 512 * 1024  # one encoded image
MAX_IMAGE_SIDE = 2048  # pixels, checked before decoding (no decompression bombs)
IMAGE_FORMATS = ("PNG", "JPEG")
MAX_SINE_POINTS = 50
MAX_ABS_Y = 10.0
SINE_GRID_POINTS = 100
TIME_LIMIT_SECONDS = 10.0
PER_USER = 1
PER_PROCESS = 2
INITIALIZATION_CACHE = 8


class NotTryable(ServiceError):
    """This run cannot be tried this way (not finished, no weights, another kind of task)."""


class Busy(ServiceError):
    """Too many adaptations at once: for this user, or in this process."""


class TooSlow(ServiceError):
    """The adaptation passed its time limit."""


# --- which runs ------------------------------------------------------------------------------


def check_tryable(run: Run, kind: str) -> Config:
    """The run's Config, or NotTryable saying why it cannot be tried as `kind` ("sine" or
    "omniglot"). The run page shows its panel on the same condition (run_detail.html)."""
    if run.status != Run.Status.SUCCEEDED or not run.initialization:
        raise NotTryable("Only a succeeded run with a trained initialization can be tried.")
    if run.dataset != kind:
        raise NotTryable(f"This is a {run.dataset} run, not a {kind} run.")
    try:
        return Config.from_dict(run.config)
    except (ConfigError, TypeError, ValueError):
        raise NotTryable("The run's config cannot be read by this version.") from None


# --- the initialization, cached per process ----------------------------------------------------


@functools.lru_cache(maxsize=INITIALIZATION_CACHE)
def stored_weights(name: str) -> dict[str, torch.Tensor]:
    """The state dict stored under `name`. Stored names are unique per attempt
    (run_files.artifact_name), so a cached entry can never be stale."""
    with default_storage.open(name, "rb") as fh:
        return load_safetensors(fh.read())


def _networks(run: Run, config: Config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the trained initialization, the network the run started from)."""
    # One thread per adaptation: tasks this small gain nothing from more, and several
    # adaptations (and requests) share the host's cores; extra threads only stall them.
    torch.set_num_threads(1)
    try:
        weights = stored_weights(run.initialization.name)
    except FileNotFoundError:
        raise NotTryable("The initialization is missing from storage.") from None
    except (SafetensorError, ValueError):
        raise NotTryable("The stored initialization cannot be read.") from None
    try:
        trained = adapt.network(config, weights, seed=run.seed)
    except RuntimeError:  # load_state_dict: not this config's network
        raise NotTryable("The stored initialization does not fit the run's network.") from None
    return trained, adapt.network(config, seed=run.seed)


# --- how many at once ------------------------------------------------------------------------


class Slots:
    """At most `per_user` adaptations per user and `total` in all, in this process; a request
    over either limit is refused at once (Busy) rather than queued behind others."""

    def __init__(self, per_user: int, total: int) -> None:
        self.per_user, self.total = per_user, total
        self._lock = threading.Lock()
        self._users: Counter[int] = Counter()

    @contextmanager
    def take(self, user_id: int) -> Iterator[None]:
        with self._lock:
            if self._users[user_id] >= self.per_user:
                raise Busy(
                    f"You already have {self.per_user} adaptation(s) running; try again when "
                    "it has finished."
                )
            if sum(self._users.values()) >= self.total:
                raise Busy("The server is busy with other adaptations; try again in a moment.")
            self._users[user_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._users[user_id] -= 1
                if self._users[user_id] <= 0:
                    del self._users[user_id]


SLOTS = Slots(PER_USER, PER_PROCESS)


def _deadline() -> float:
    return time.monotonic() + TIME_LIMIT_SECONDS


def _timed(fn, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except adapt.AdaptTimeout:
        raise TooSlow(
            f"The adaptation took longer than {TIME_LIMIT_SECONDS:g} s; try fewer examples."
        ) from None


# --- sine --------------------------------------------------------------------------------------


def random_sine_task(run: Run, seed: int | None = None) -> dict[str, Any]:
    """A random task of the paper's distribution with the run's K points."""
    config = check_tryable(run, "sine")
    seed = secrets.randbits(31) if seed is None else seed
    task = SineTaskSampler(np.random.default_rng(seed), config.sine_points).sample()
    return {
        "seed": seed,
        "amplitude": task.amplitude,
        "phase": task.phase,
        "x": task.support_x[:, 0].tolist(),
        "y": task.support_y[:, 0].tolist(),
    }


def check_sine_points(x: Sequence[float], y: Sequence[float]) -> None:
    errors = ErrorList()
    if not 1 <= len(x) <= MAX_SINE_POINTS:
        errors.add("x", f"Give between 1 and {MAX_SINE_POINTS} points.")
    elif len(y) != len(x):
        errors.add("y", f"Give one y per x ({len(x)}); got {len(y)}.")
    low, high = X_RANGE
    if any(not low <= v <= high for v in x):
        errors.add("x", f"Every x must be in [{low:g}, {high:g}].")
    if any(abs(v) > MAX_ABS_Y for v in y):
        errors.add("y", f"Every y must be in [-{MAX_ABS_Y:g}, {MAX_ABS_Y:g}].")
    errors.raise_if_any()


def try_sine(run: Run, user_id: int, x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """The fits of the initialization and of the run's random start after 0, 1 and 32 steps."""
    config = check_tryable(run, "sine")
    check_sine_points(x, y)
    xs = torch.tensor(x, dtype=torch.float32)[:, None]
    ys = torch.tensor(y, dtype=torch.float32)[:, None]
    grid = torch.linspace(X_RANGE[0], X_RANGE[1], SINE_GRID_POINTS)[:, None]
    with SLOTS.take(user_id):
        started = time.perf_counter()
        deadline = _deadline()
        trained, random = _networks(run, config)
        fits = {
            name: _timed(adapt.fit_sine, model, config, xs, ys, grid, deadline=deadline)
            for name, model in (("initialization", trained), ("random", random))
        }
        seconds = time.perf_counter() - started
    return {
        "grid": grid[:, 0].tolist(),
        "steps": list(adapt.SINE_STEPS),
        **{name: [fit[s][:, 0].tolist() for s in adapt.SINE_STEPS] for name, fit in fits.items()},
        "seconds": round(seconds, 4),
    }


# --- omniglot ------------------------------------------------------------------------------------


def decode_image(text: str, size: int) -> np.ndarray:
    """A PNG or JPEG (base64, optionally as a data: URL) as the network's input: uint8 (size,
    size), 255 = background, 0 = ink, as Omniglot's binary drawings. Transparent pixels count
    as background; an image whose most pixels are dark (white ink on black) is inverted.
    ValueError with a message for the person who sent it."""
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            raise ValueError("Send the image base64-encoded (a data:...;base64, URL).")
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ValueError(f"The image is larger than {MAX_IMAGE_BYTES // 1024} KB.")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("The image is not valid base64.") from None
    try:
        with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as img:
            if max(img.size) > MAX_IMAGE_SIDE:
                raise ValueError(f"The image is larger than {MAX_IMAGE_SIDE} pixels on a side.")
            img.load()
            gray = _on_white(img)
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ValueError("Not a PNG or JPEG image.") from None
    except (OSError, SyntaxError):
        raise ValueError("The image is damaged or truncated.") from None
    pixels = np.asarray(gray.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)
    if np.median(pixels) < 128:
        pixels = 255 - pixels
    # Binary as the training data: a pixel at least a third covered by ink is ink.
    return np.where(pixels < 170, 0, 255).astype(np.uint8)


def _on_white(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return img.convert("L")


def encode_png(pixels: np.ndarray) -> str:
    """uint8 (H, W) as a PNG data: URL (random tasks are sent as the images a person sends)."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def max_ways(config: Config) -> int:
    return min(MAX_WAYS, config.ways)


def _decode_task(
    support: Sequence[Sequence[str]], queries: Sequence[str], config: Config
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    errors = ErrorList()
    ways = len(support)
    if not 2 <= ways <= max_ways(config):
        errors.add(
            "support",
            f"Give between 2 and {max_ways(config)} classes (this network has "
            f"{config.ways} outputs); got {ways}.",
        )
    shots = {len(images) for images in support}
    if ways and (len(shots) != 1 or not 1 <= min(shots) <= MAX_SHOTS):
        errors.add("support", f"Give every class the same number of examples, 1 to {MAX_SHOTS}.")
    if not 1 <= len(queries) <= MAX_QUERIES:
        errors.add("queries", f"Give between 1 and {MAX_QUERIES} query images.")
    errors.raise_if_any()
    size = config.image_size
    xs, ys, qs = [], [], []
    for label, images in enumerate(support):
        for k, text in enumerate(images):
            try:
                xs.append(decode_image(text, size))
                ys.append(label)
            except ValueError as err:
                errors.add(f"support.{label}.{k}", str(err))
    for i, text in enumerate(queries):
        try:
            qs.append(decode_image(text, size))
        except ValueError as err:
            errors.add(f"queries.{i}", str(err))
    errors.raise_if_any()

    def tensor(images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(images)[:, None].astype(np.float32) / 255.0)

    return tensor(xs), torch.tensor(ys, dtype=torch.int64), tensor(qs)


def try_omniglot(
    run: Run, user_id: int, support: Sequence[Sequence[str]], queries: Sequence[str]
) -> dict[str, Any]:
    """Class probabilities of each query after adapting the initialization, and the run's
    random start, to the support set (class i = `support[i]`)."""
    config = check_tryable(run, "omniglot")
    support_x, support_y, query_x = _decode_task(support, queries, config)
    with SLOTS.take(user_id):
        started = time.perf_counter()
        deadline = _deadline()
        trained, random = _networks(run, config)
        answers = {}
        for name, model in (("initialization", trained), ("random", random)):
            probs = _timed(
                adapt.classify, model, config, support_x, support_y, query_x, deadline=deadline
            )
            answers[name] = {
                "predicted": probs.argmax(1).tolist(),
                "probabilities": probs.tolist(),
            }
        seconds = time.perf_counter() - started
    return {
        "ways": len(support),
        "shots": len(support[0]),
        "transductive": config.transductive,
        "inner_iterations": config.eval_inner_iters,
        "inner_batch": config.eval_inner_batch,
        **answers,
        "seconds": round(seconds, 4),
    }


def random_omniglot_task(
    run: Run, ways: int, shots: int, seed: int | None = None
) -> dict[str, Any]:
    """`ways` x `shots` support images and one query per class from the run's test characters
    (its split and image size), as PNG data: URLs; the queries' true classes included."""
    config = check_tryable(run, "omniglot")
    errors = ErrorList()
    if not 2 <= ways <= max_ways(config):
        errors.add("ways", f"Choose between 2 and {max_ways(config)} classes.")
    if not 1 <= shots <= MAX_SHOTS:
        errors.add("shots", f"Choose between 1 and {MAX_SHOTS} examples per class.")
    errors.raise_if_any()
    try:
        test = load_class_splits(config.replace(data_dir=None)).test
    except (DataError, ConfigError, OSError):
        raise NotTryable("The Omniglot images are not available on this server.") from None
    seed = secrets.randbits(31) if seed is None else seed
    sampler = TaskSampler(test, ways, shots, 1, np.random.default_rng(seed))
    task = sampler.sample()

    def pngs(x: torch.Tensor) -> list[str]:
        return [encode_png((img[0].numpy() * 255).round().astype(np.uint8)) for img in x]

    support = pngs(task.support_x)
    return {
        "seed": seed,
        "ways": ways,
        "shots": shots,
        "support": [support[i * shots : (i + 1) * shots] for i in range(ways)],
        "queries": pngs(task.query_x),
        "query_labels": task.query_y.tolist(),
    }
