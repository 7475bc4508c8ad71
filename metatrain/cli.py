"""The command line: ``python -m metatrain presets | train | evaluate | split | bench``.

Exit codes: 0 success; 2 a bad argument of any kind (unknown preset, invalid value, missing
run folder or data, a checkpoint of another config), always with one line on stderr and no
traceback, so scripts can tell "you asked for something impossible" from a crash (1, with a
traceback); 130 interrupted by Ctrl-C, 143 by SIGTERM (training writes a checkpoint first and
says how to resume). Machine-readable results (``evaluate``, ``split``, ``presets --json``, ``bench --json``) go to
stdout; progress and messages go to stderr, so stdout can be piped into ``jq``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .algorithms import ALGORITHMS
from .checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    INITIALIZATION_FILE,
    load_checkpoint,
    read_document,
)
from .config import PRESETS, VERSIONED_FIELDS, Config, ConfigError, preset
from .data import DataError
from .engine.compute import Compute
from .reporting import PrintReporter, Reporter
from .train import CheckpointMismatchError

__all__ = [
    "main",
    "parse_set_value",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
PROG = "python -m metatrain"


class UsageError(Exception):
    """A bad argument: reported as one line on stderr with exit code 2.

    ``prog`` names the (sub)command in the message; None: the command being run.
    """

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors become UsageError (one line, exit 2) instead of usage + exit.

    Subparsers are built with the parent's class, so every level behaves the same.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)", prog=self.prog)


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "a non-negative integer")


WORKERS_ENV_VAR = "METATRAIN_WORKERS"


def _workers(text: str) -> int | str:
    """``auto`` or a positive integer (``--workers``)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {value}")
    return value


def _default_workers() -> int | str:
    """``$METATRAIN_WORKERS`` if set (checked like the option), else ``auto``."""
    import os

    text = os.environ.get(WORKERS_ENV_VAR, "").strip()
    if not text:
        return "auto"
    try:
        return _workers(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"${WORKERS_ENV_VAR}: {exc}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_set_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, true/false, null, "quoted"), else the
    raw string, so ``algorithm=fomaml`` needs no quotes while ``inner_lr=1e-3`` is a number."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got {item!r}")
        out[key] = parse_set_value(value)
    return out


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- Ctrl-C and SIGTERM ----------------------------------------------------------------------


class StopFlag:
    """Set by the first Ctrl-C (SIGINT) or SIGTERM; a second signal aborts at once
    (KeyboardInterrupt).

    Training polls it through ``Reporter.should_stop`` once per meta-iteration, so a Ctrl-C
    ends the run cleanly at the next iteration boundary with a checkpoint. SIGTERM does the
    same: it is what ``timeout``, ``docker stop``, systemd and batch schedulers (SLURM at the
    time limit) send before they kill, and a run stopped that way should lose nothing.
    """

    def __init__(self, stream: IO[str], what: str) -> None:
        self.requested = False
        self.exit_code = EXIT_INTERRUPTED
        self._stream = stream
        self._what = what

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if signum == signal.SIGINT:
            note = f"interrupt: stopping {self._what} (press Ctrl-C again to abort)"
        else:
            self.exit_code = EXIT_TERMINATED
            note = f"terminated (SIGTERM): stopping {self._what} (a second signal aborts)"
        self._stream.write(f"\n{note}\n")
        self._stream.flush()


@contextlib.contextmanager
def _stop_signals_set(flag: StopFlag) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``flag`` while the block runs (main thread only; elsewhere
    a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, flag) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _TrainReporter(PrintReporter):
    """The terminal progress bar, stopping when Ctrl-C was pressed."""

    def __init__(self, flag: StopFlag, stream: IO[str]) -> None:
        super().__init__(stream=stream)
        self.flag = flag

    def should_stop(self) -> bool:
        return self.flag.requested


class _EvalProgress(Reporter):
    """A progress line for evaluation. ``should_stop`` is polled once before every task, which
    makes it the place to count tasks (the Reporter protocol has no per-task callback)."""

    def __init__(self, total: int, flag: StopFlag, stream: IO[str], refresh: float = 0.2) -> None:
        self.total = total
        self.flag = flag
        self.stream = stream
        self.refresh = refresh
        self.polls = 0
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def should_stop(self) -> bool:
        self.polls += 1
        now = time.monotonic()
        if now - self._last_draw >= self.refresh:
            self._last_draw = now
            self._draw(self.polls - 1, now)
        return self.flag.requested

    def finish(self, done: int) -> None:
        self._draw(done, time.monotonic())
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, done: int, now: float) -> None:
        elapsed = max(now - self._t0, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(round(width * done / self.total)) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        eta = time.strftime("%M:%S", time.gmtime(left)) if left < 3600 else f"{left / 3600:.1f}h"
        self.stream.write(
            f"\revaluating [{bar}] {done}/{self.total} tasks  {rate:.2f} tasks/s  ETA {eta}   "
        )
        self.stream.flush()
        self._drawn = True


# --- presets ----------------------------------------------------------------------------------


def _preset_rows() -> list[dict[str, Any]]:
    rows = []
    for name, c in PRESETS.items():
        sine = c["dataset"] == "sine"
        rows.append(
            {
                "preset": name,
                "dataset": c["dataset"],
                "ways": "-" if sine else c["ways"],
                "shots": c["sine_points"] if sine else c["shots"],
                "train shots": c["train_shots"],
                "algorithm": ALGORITHMS[c["algorithm"]].label,
                "inner": f"{c['inner_optimizer']} lr {c['inner_lr']:g}",
                "batch x iters": f"{c['inner_batch']} x {c['inner_iters']}",
                "meta batch": c["meta_batch"],
                "meta iters": f"{c['meta_iters']:,}",
                "meta step": f"{c['meta_step']:g} -> {c['meta_step_final']:g}",
                "eval batch x iters": f"{c['eval_inner_batch']} x {c['eval_inner_iters']}",
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    headers = list(rows[0])
    cells = [[str(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def cmd_presets(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if args.json:
        out.write(json.dumps(PRESETS, indent=2) + "\n")
        return EXIT_OK
    out.write(_table(_preset_rows()) + "\n")
    out.write(
        "\nshots: K of the evaluation tasks (sine: points per task). Every field of every "
        f"preset: {PROG} presets --json; change one with train --set key=value.\n"
        "algorithms (--set algorithm=NAME): "
        + "; ".join(f"{a.name}: {a.label}, {a.description}" for a in ALGORITHMS.values())
        + "\n"
    )
    return EXIT_OK


# --- split ------------------------------------------------------------------------------------


def cmd_split(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """The Omniglot split's characters, ``{"train": [...], "test": [...]}``, in its order."""
    from .data import omniglot_names, split_order

    names, num_background = omniglot_names(args.data_dir)  # DataError -> exit 2
    train, test = split_order(names, num_background, args.split, args.split_seed, args.version)
    out.write(json.dumps({"train": [names[i] for i in train], "test": [names[i] for i in test]}))
    out.write("\n")
    return EXIT_OK


# --- train ------------------------------------------------------------------------------------


def _check_device(device: str | None) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: CUDA is not available on this machine")


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:4])
    if len(keys) > 4:
        shown += f", and {len(keys) - 4} more"
    return shown


def cmd_train(args: argparse.Namespace, argv: Sequence[str], out: IO[str], err: IO[str]) -> int:
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; known: {', '.join(PRESETS)}")
    overrides = _parse_set(args.set or [])
    if args.iterations is not None:
        overrides["meta_iters"] = args.iterations
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    config = preset(args.preset, **overrides)  # ConfigError -> exit 2
    _check_device(args.device)

    run_dir = Path(args.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir}: exists and is not a folder")
    resume_hint = f"{PROG} {shlex.join(argv)}"
    ckpt_path = run_dir / CHECKPOINT_FILE
    if ckpt_path.is_file():
        try:
            ckpt = load_checkpoint(ckpt_path)
        except Exception as exc:  # a torn or foreign file: say so rather than overwrite it
            raise UsageError(f"cannot read {ckpt_path}: {_one_line(exc)}") from exc
        if not config.hash_matches(ckpt["config_hash"]):
            raise UsageError(
                f"{ckpt_path} belongs to a different config "
                f"({_differences(ckpt['config'], config.to_dict())}); "
                "use another --out, or the options that run was started with"
            )
        done = int(ckpt["iteration"])
        if done >= config.meta_iters and (run_dir / INITIALIZATION_FILE).is_file():
            err.write(
                f"{run_dir} already holds this run, finished ({done}/{config.meta_iters}); "
                f"nothing to do. Evaluate it with: {PROG} evaluate {shlex.quote(str(run_dir))}\n"
            )
            return EXIT_OK
        err.write(
            f"{run_dir} holds a checkpoint of this config at iteration {done}/"
            f"{config.meta_iters}: resuming from it\n"
        )

    existed = run_dir.exists()
    flag = StopFlag(err, "training after this meta-iteration, writing a checkpoint")
    reporter = _TrainReporter(flag, err)
    from .train import train

    try:
        with _stop_signals_set(flag):
            result = train(config, run_dir, reporter=reporter, compute=_compute(args))
    except (DataError, ConfigError, CheckpointMismatchError):
        if not existed:  # do not leave an empty folder behind a failed start
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    except KeyboardInterrupt:
        err.write(
            f"\naborted: {run_dir} keeps its last checkpoint, if any; resume with: {resume_hint}\n"
        )
        return flag.exit_code
    if result.stopped:
        if ckpt_path.is_file():
            err.write(
                f"interrupted at iteration {result.iterations_done}/{result.total_iterations}; "
                f"checkpoint written to {ckpt_path}. Resume with: {resume_hint}\n"
            )
        else:
            err.write(
                "interrupted before the first meta-iteration; nothing was saved. "
                f"Start again with: {resume_hint}\n"
            )
        return flag.exit_code
    err.write(
        f"wrote {run_dir / INITIALIZATION_FILE}. Evaluate it with: "
        f"{PROG} evaluate {shlex.quote(str(run_dir))}\n"
    )
    return EXIT_OK


# --- evaluate ---------------------------------------------------------------------------------


def _read_run(run_dir: Path) -> tuple[Config, str]:
    if not run_dir.exists():
        raise UsageError(f"RUN_DIR {run_dir} does not exist")
    if not run_dir.is_dir():
        raise UsageError(f"RUN_DIR {run_dir} is not a folder")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UsageError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
    try:
        doc = read_document(run_dir / CONFIG_FILE)
        config = Config.from_dict(doc["config"])
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UsageError(f"cannot read {run_dir / CONFIG_FILE}: {_one_line(exc)}") from exc
    if not (run_dir / INITIALIZATION_FILE).is_file():
        ckpt = run_dir / CHECKPOINT_FILE
        state = "training has not started or has not finished"
        if ckpt.is_file():
            with contextlib.suppress(Exception):
                state = (
                    f"training stopped at iteration {int(load_checkpoint(ckpt)['iteration'])}"
                    f"/{config.meta_iters}; finish it with {PROG} train ... --out {run_dir}"
                )
        raise UsageError(f"{run_dir} has no {INITIALIZATION_FILE} ({state})")
    return config, str(doc.get("config_hash") or config.config_hash())


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cmd_evaluate(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    run_dir = Path(args.run_dir)
    config, config_hash = _read_run(run_dir)
    _check_device(args.device)
    if not config.is_classification:
        given = [
            flag
            for flag, value in (
                ("--ways", args.ways),
                ("--queries", args.queries),
                ("--transductive/--no-transductive", args.transductive),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"{', '.join(given)}: not applicable to sine regression")
        if args.shots is not None:  # K of a sine task is its number of points
            config = config.replace(sine_points=args.shots)
    tasks = args.tasks if args.tasks is not None else config.final_eval_tasks
    flag = StopFlag(err, "evaluation after this task")
    progress = _EvalProgress(tasks, flag, err)
    from .evaluate import evaluate

    with _stop_signals_set(flag):
        result = evaluate(
            run_dir,
            config,
            split=args.split,
            tasks=tasks,
            ways=args.ways,
            shots=args.shots if config.is_classification else None,
            queries=args.queries,
            transductive=args.transductive,
            seed=args.seed,
            reporter=progress,
            compute=_compute(args),
            fresh_optimizer=args.fresh_optimizer,
        )
    progress.finish(result.tasks)
    if result.stopped:
        err.write(f"interrupted after {result.tasks}/{tasks} tasks; no result printed\n")
        return flag.exit_code
    doc = {k: _json_safe(v) for k, v in result.to_dict().items()}
    device = args.device or _default_device()
    doc.update(
        {
            "run_dir": str(run_dir.resolve()),
            "config_hash": config_hash,
            "seed": args.seed if args.seed is not None else config.seed,
            "device": device,
            # Only where it can differ: a CPU computes in IEEE float32 either way.
            **({"tf32": args.tf32} if device.startswith("cuda") else {}),
        }
    )
    out.write(json.dumps(doc) + "\n")
    out.flush()
    return EXIT_OK


# --- bench ------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from . import bench

    _check_device(args.device)

    def log(text: str) -> None:
        err.write(text + "\n")
        err.flush()

    result = bench.run_bench(
        iterations=args.iterations,
        eval_tasks=args.eval_tasks,
        seconds=args.seconds,
        rounds=args.rounds,
        compute=_compute(args),
        log=log,
    )
    if args.json:
        out.write(json.dumps(result) + "\n")
    else:
        out.write(bench.format_report(result) + "\n")
    return EXIT_OK


# --- parser and entry point -------------------------------------------------------------------


WORKERS_HELP = (
    "processes that run independent tasks side by side on the CPU, one torch thread each: "
    "'auto' (one per usable core) or N; default $METATRAIN_WORKERS or auto. Same results "
    "as one; ignored on a GPU. Training tasks only qualify without keep_adam_state; with it "
    "(the presets), N > 1 lets a conv net's serial steps use a second thread instead"
)


def _compute(args: argparse.Namespace) -> Compute:
    """The ``Compute`` the options ask for (``--device``, ``--workers``, ``--no-cuda-graphs``,
    ``--tf32``)."""
    return Compute(
        device=args.device,
        workers=args.workers,
        cuda_graphs=not getattr(args, "no_cuda_graphs", False),
        tf32=getattr(args, "tf32", False),
    )


def _add_compute_options(p: argparse.ArgumentParser, *, cuda_graphs: bool) -> None:
    """Where and how the work runs: --device, --threads, --workers (and --no-cuda-graphs,
    --tf32)."""
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    p.add_argument(
        "--threads", type=_positive, metavar="N", help="torch intra-op threads (default: torch's)"
    )
    p.add_argument("--workers", type=_workers, metavar="N|auto", help=WORKERS_HELP)
    if cuda_graphs:
        p.add_argument(
            "--no-cuda-graphs",
            action="store_true",
            help="on a GPU, launch each inner step's kernels one by one instead of replaying "
            "a captured CUDA graph (slower; for debugging)",
        )
        p.add_argument(
            "--tf32",
            action="store_true",
            help="on an NVIDIA GPU, let convolutions and matrix products use TF32 tensor "
            "cores (10-bit mantissa inputs); default IEEE float32, as the paper and a CPU",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Reptile / first-order MAML meta-learning (Nichol et al. 2018).",
        epilog="Exit codes: 0 ok, 2 bad arguments, 130 interrupted (Ctrl-C), 143 terminated "
        "(SIGTERM).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("presets", help="list the paper's presets and their hyperparameters")
    p.add_argument("--json", action="store_true", help="every field of every preset, as JSON")

    p = sub.add_parser(
        "train",
        help="meta-train a preset into a run folder (resumes from its checkpoint)",
        description="Meta-train into --out. If --out holds a checkpoint of the same config, "
        "training resumes from it; Ctrl-C writes a checkpoint and exits 130 (SIGTERM: 143).",
    )
    p.add_argument("--preset", required=True, metavar="NAME", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--iterations", type=_positive, metavar="N", help="meta-iterations (meta_iters)")
    p.add_argument("--seed", type=_non_negative, metavar="S", help="seed of everything")
    p.add_argument("--data-dir", metavar="DIR", help="the dataset's own folder (data_dir)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field; VALUE is JSON if it parses (1e-3, true), else a string",
    )
    _add_compute_options(p, cuda_graphs=True)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder")

    p = sub.add_parser(
        "evaluate",
        help="few-shot evaluation of a trained run; prints one JSON object",
        description="Evaluate RUN_DIR's initialization on few-shot tasks; prints one JSON "
        "object on stdout (progress on stderr). Unset options come from the run's config.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--tasks", type=_positive, metavar="N", help="default: final_eval_tasks")
    p.add_argument("--ways", type=_positive, metavar="N")
    p.add_argument("--shots", type=_positive, metavar="K", help="sine: points per task")
    p.add_argument("--queries", type=_positive, metavar="Q")
    p.add_argument(
        "--transductive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="classify all queries in one batch (default: the run's config)",
    )
    p.add_argument("--seed", type=_non_negative, metavar="S", help="seed of the tasks")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument(
        "--fresh-optimizer",
        action="store_true",
        help="start every task's Adam fresh, from the initialization alone (as a user who has "
        "only initialization.safetensors); default: the training run's Adam moments from the "
        "checkpoint, as the paper's code evaluates (the result's inner_optimizer_state says "
        "which)",
    )
    _add_compute_options(p, cuda_graphs=True)

    p = sub.add_parser(
        "split",
        help="list an Omniglot split's characters; prints one JSON object",
        description='Print {"train": [...], "test": [...]} of "ALPHABET/characterNN" names, '
        "each in the split's own (shuffled) order; validation_classes takes the last ones of "
        "train. Reads only file names.",
    )
    p.add_argument("--split", choices=("paper", "lake"), default="paper")
    p.add_argument("--split-seed", type=_non_negative, default=0, metavar="S", help="default 0")
    p.add_argument(
        "--split-version",
        dest="version",
        type=int,
        choices=VERSIONED_FIELDS["split_version"],
        default=VERSIONED_FIELDS["split_version"][1],
        help="2 (default): the paper code's procedure; 1: the order of runs made before it",
    )
    p.add_argument("--data-dir", metavar="DIR", help="default: $METATRAIN_DATA/omniglot")

    p = sub.add_parser(
        "bench",
        help="time the library against a plain PyTorch loop on real Omniglot",
        description="Times meta-training and evaluation of omniglot-5way-1shot with the "
        "library and with a plain per-task loop (deepcopy + fresh Adam), in this process. "
        "Needs Omniglot under $METATRAIN_DATA/omniglot.",
    )
    p.add_argument(
        "--iterations", type=_positive, metavar="N", help="timed meta-iterations per side"
    )
    p.add_argument(
        "--eval-tasks", type=_positive, metavar="N", help="timed evaluation tasks per side"
    )
    p.add_argument(
        "--seconds",
        type=_positive_float,
        default=20.0,
        help="target seconds per side when N is not given (default 20)",
    )
    p.add_argument(
        "--rounds",
        type=_positive,
        default=4,
        help="alternate the two sides this many times, to share out load from other "
        "processes (default 4)",
    )
    _add_compute_options(p, cuda_graphs=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(
    argv: Sequence[str] | None = None, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """Run the command line; returns the exit code (the caller passes it to ``sys.exit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser = build_parser()
    prog = PROG
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, or argparse's own exits
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
        prog = f"{PROG} {args.command}"
        if hasattr(args, "workers") and args.workers is None:
            args.workers = _default_workers()
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        if args.command == "presets":
            return cmd_presets(args, out, err)
        if args.command == "train":
            return cmd_train(args, argv, out, err)
        if args.command == "evaluate":
            return cmd_evaluate(args, out, err)
        if args.command == "split":
            return cmd_split(args, out, err)
        return cmd_bench(args, out, err)
    except UsageError as exc:
        err.write(f"{exc.prog or prog}: error: {_one_line(exc)}\n")
    except ConfigError as exc:
        err.write(f"{prog}: error: invalid configuration: {_one_line(exc)}\n")
    except DataError as exc:
        err.write(f"{prog}: error: {_one_line(exc)}\n")
    except CheckpointMismatchError as exc:
        err.write(f"{prog}: error: {_one_line(exc)}\n")
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return EXIT_INTERRUPTED
    err.flush()
    return EXIT_USAGE
