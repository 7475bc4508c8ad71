"""Independent few-shot tasks side by side on several CPU cores (``workers`` > 1).

Why processes: one inner step of the paper's networks is a few milliseconds of small kernels,
too small for PyTorch's intra-op threads (two threads were slower than one on this project's
2-core machine) and too chatty for Python threads (two threads, each training its own network,
gave 1.3x: the interpreter lock serialises the per-op Python work). Two processes, each with
one thread and its own replica of the network, ran at 2x.

What may run side by side: tasks that share nothing but the starting weights.
- Evaluation tasks always qualify: each starts from the meta-weights and from the same
  optimizer state (fresh, or the training run's Adam moments restored after every task).
- Training tasks qualify when each task starts from a fresh inner optimizer (SGD, or Adam
  without ``keep_adam_state``). The paper's presets chain Adam's moments from task to task,
  which makes a meta-batch's tasks a strict sequence: those stay serial.

Exactness: the parent draws every task and every mini-batch order from its random stream in
the serial order, sends them out, and combines the answers in task order, so the results
(weights, metrics, accuracies) are bit-identical to the serial loop run with one thread
(tested). The workers hold no state across calls but the weights and optimizer state the
parent last sent, so checkpoints and resumption are unchanged.

Workers are fresh interpreters that import only metatrain (see ``TaskPool._start_worker``),
talk to the parent over a socket pair, ignore Ctrl-C, which the parent handles (the CLI
writes a checkpoint first), and exit when the parent's end of the socket closes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import Config
from .models import build_model
from .stacked import stackable

__all__ = [
    "TaskPool",
    "TaskWorkerError",
    "usable_cores",
    "cgroup_cpu_limit",
    "resolve_workers",
    "useful_workers",
    "one_thread",
    "worker_entry",
]

# The folder that holds the metatrain package, put on the workers' import path.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Jobs in flight per worker. One: a job is sent only to a worker that is waiting for one, so
# neither side can block writing into a full pipe while the other is also writing (a task's
# images and a share of the weights are larger than a pipe's buffer). The worker idles for the
# parent's round trip, well under 1 % of a task.
_DEPTH = 1


# glibc's malloc in a worker: a fresh interpreter's heap is small, so each inner step's larger
# activations (0.5 MB for the Omniglot net) were mapped and unmapped from the system every time:
# 1,650 page faults per training task, 16.7 instead of 11-12.5 ms of CPU (Omniglot 5-way, one
# thread). With these, freed memory stays in the heap: no faults. A value the user set wins;
# other C libraries ignore them.
_WORKER_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(128 * 1024 * 1024),
}


def usable_cores() -> int:
    """CPU cores this process may keep busy: its affinity mask (not the machine's count),
    capped by its cgroup's CPU quota (a container started with ``--cpus 2`` on a 64-core
    host sees 64 cores in its mask; 64 task workers would then share two cores' time)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = max(1, os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return cores


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_limit(
    root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup"
) -> float | None:
    """This process's CPU quota in cores (quota / period of cgroup v2's ``cpu.max`` or v1's
    ``cpu.cfs_quota_us``), or None where there is none or it cannot be read."""
    text = _read(proc_cgroup)
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts[0], parts[1], parts[2].lstrip("/")
        if hierarchy == "0" and controllers == "":  # cgroup v2
            for folder in (os.path.join(root, path), root):
                value = _read(os.path.join(folder, "cpu.max"))
                if value is None:
                    continue
                quota, _, period = value.partition(" ")
                if quota != "max" and _positive(quota) and _positive(period):
                    limits.append(int(quota) / int(period))
                break
        elif "cpu" in controllers.split(","):  # cgroup v1
            for folder in (
                os.path.join(root, controllers, path),
                os.path.join(root, "cpu", path),
                os.path.join(root, controllers),
                os.path.join(root, "cpu"),
            ):
                quota = _read(os.path.join(folder, "cpu.cfs_quota_us"))
                period = _read(os.path.join(folder, "cpu.cfs_period_us"))
                if quota is None or period is None:
                    continue
                if _positive(quota) and _positive(period):  # -1: no quota
                    limits.append(int(quota) / int(period))
                break
    return min(limits) if limits else None


def _positive(text: str) -> bool:
    return text.isdigit() and int(text) > 0


def resolve_workers(workers: int | str | None, device: torch.device) -> int:
    """The number of task workers to start: ``"auto"``/None is every usable core on CPU;
    always 1 on a GPU, where one process keeps the device busy."""
    if device.type != "cpu":
        return 1
    if workers is None or workers == "auto":
        return usable_cores()
    count = int(workers)
    if count < 1:
        raise ValueError(f"workers must be at least 1, got {count}")
    return count


def useful_workers(config: Config, count: int, stack_tasks: bool = True) -> int:
    """The task workers a training run of ``config`` keeps busy: ``count``, or 1 where its tasks
    are adapted stacked instead (a regression MLP with SGD, ``metatrain.stacked``: far faster
    than workers, for training and evaluation alike). Otherwise evaluation tasks always run in
    the workers (training tasks too when they do not share Adam's moments)."""
    if count <= 1:
        return count
    stacked = (
        stack_tasks
        and not config.is_classification
        and stackable(build_model(config), config.inner_optimizer)
    )
    if stacked:
        return 1
    return count


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes) -> Any:
    # Only this process's own workers write these bytes.
    return pickle.loads(data)


def flatten(values: Sequence[torch.Tensor]) -> np.ndarray:
    """Tensors as one float32 vector, in logical (row-major) order: weights travel as one
    NumPy array, which pickles as a plain copy (a list of tensors took 20x longer)."""
    return torch.cat([v.detach().reshape(-1) for v in values]).numpy()


def unflatten(vector: np.ndarray, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``vector`` shaped as ``like`` (copy them with ``_foreach_copy_``, which
    writes element by element whatever the destination's memory layout)."""
    flat = torch.from_numpy(vector)
    return [
        part.view(t.shape)
        for part, t in zip(flat.split([t.numel() for t in like]), like, strict=True)
    ]


# --- the worker -------------------------------------------------------------------------------


class _Worker:
    """A worker's replica: its own network, learner and buffers."""

    def __init__(self, model: nn.Module, config: Config) -> None:
        from .algorithms import Learner
        from .runtime import prepare_model

        self.channels_last = prepare_model(model, torch.device("cpu"))
        self.config = config
        self.learner = Learner.from_config(model, config)
        self.theta: list[torch.Tensor] = self.learner.copy_params()
        self.scratch = [torch.zeros_like(t) for t in self.theta]
        self.snapshot: dict[Any, dict[str, Any]] | None = None

    def _tensors(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        if self.channels_last and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def set_weights(self, vector: np.ndarray) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.theta, unflatten(vector, self.theta))

    def set_optimizer_state(self, state: dict[str, Any] | None) -> None:
        optimizer = self.learner.optimizer
        optimizer.state.clear()
        if state is not None:
            self.learner.load_optimizer_state(state)
        self.snapshot = self.learner.optimizer_snapshot()

    def _start_task(self) -> None:
        learner = self.learner
        learner.load_params(self.theta)
        learner.begin_task()
        if learner.keep_state and self.snapshot is not None:
            learner.optimizer_restore(self.snapshot)

    def train(self, task: tuple[np.ndarray, ...], order: np.ndarray) -> tuple[Any, Any]:
        from .algorithms import task_update

        self._start_task()
        task = tuple(self._tensors(t) for t in task)
        recorder = _StepRecorder()
        share = task_update(self.learner, self.config, task, order, recorder, self.scratch)
        return flatten(share), recorder.steps

    def evaluate(
        self, task: tuple[np.ndarray, ...], order: np.ndarray, transductive: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        from .evaluate import evaluate_task

        self._start_task()
        prepared = tuple(self._tensors(t) for t in task)
        score, before = evaluate_task(self.learner, self.config, prepared, order, transductive)
        return score.numpy(), None if before is None else before.numpy()


class _StepRecorder:
    """Records each inner step's (mean loss, correct, examples), for the parent's running sums."""

    def __init__(self) -> None:
        self.steps: list[tuple[np.ndarray, np.ndarray | None, int]] = []

    def add(self, mean_loss: torch.Tensor, correct: torch.Tensor | None, n: int) -> None:
        # NumPy, not tensors: they pickle as plain copies (tensors cost ~20x more per message).
        self.steps.append((mean_loss.numpy(), None if correct is None else correct.numpy(), n))


def worker_entry(fd: int) -> None:
    """A task worker's main loop (``python -c`` runs this in a fresh interpreter; see TaskPool).

    First message: (the network, config dict); then jobs until "stop" or the parent's end of
    the socket closes (the parent exited: so does the worker).
    """
    # The parent decides what Ctrl-C or a shutdown means (checkpoint, then close the pool). A
    # SIGTERM sent to the whole process group (systemd, a container runtime) must not kill
    # the workers first and fail the run; a worker still ends when the parent's socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    conn = Connection(fd)
    try:
        model, config_dict = _loads(conn.recv_bytes())
        worker = _Worker(model, Config.from_dict(config_dict))
    except EOFError:
        return
    except BaseException:
        conn.send_bytes(_dumps(("error", -1, traceback.format_exc())))
        return
    conn.send_bytes(_dumps(("ready", -1, os.getpid())))
    while True:
        try:
            kind, job_id, payload = _loads(conn.recv_bytes())
        except EOFError:
            os._exit(0)
        if kind == "stop":
            # Nothing to flush or save: skip the interpreter's teardown (torch's took ~0.3 s,
            # which the parent would wait for on every evaluation).
            os._exit(0)
        try:
            if kind == "weights":
                worker.set_weights(payload)
                continue
            if kind == "optimizer":
                worker.set_optimizer_state(payload)
                continue
            if kind == "train":
                result: Any = worker.train(payload[0], payload[1])
            elif kind == "evaluate":
                result = worker.evaluate(payload[0], payload[1], payload[2])
            else:
                raise ValueError(f"unknown job kind {kind!r}")
            conn.send_bytes(_dumps(("ok", job_id, result)))
        except BaseException:
            conn.send_bytes(_dumps(("error", job_id, traceback.format_exc())))


# --- the parent's side ------------------------------------------------------------------------


class TaskWorkerError(RuntimeError):
    """A task worker failed or died; the message carries its traceback or exit code."""


class TaskPool:
    """``workers`` processes, each with a replica of ``model`` (copied now) and ``config``.

    Use as a context manager (the workers are stopped on exit, also on errors). Broadcast the
    weights (``set_weights``) and, for evaluation, the optimizer state (``set_optimizer_state``)
    first; then ``train_tasks``/``evaluate_tasks`` yield answers in job order.
    """

    def __init__(self, model: nn.Module, config: Config, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"a TaskPool needs at least 2 workers, got {workers}")
        if next(model.parameters()).device.type != "cpu":
            raise ValueError("task workers run on the CPU; the model is not on the CPU")
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        start = _dumps((model, config.to_dict()))
        try:
            for _ in range(workers):
                self._start_worker()
            for conn in self._conns:  # after all have started: they import torch side by side
                conn.send_bytes(start)
            for conn in self._conns:  # wait for every replica: errors surface here, not later
                status, _, detail = self._receive(conn)
                if status != "ready":
                    raise TaskWorkerError(f"a task worker could not start:\n{detail}")
        except BaseException:
            self.close()
            raise

    def _start_worker(self) -> None:
        """A fresh interpreter running ``worker_entry`` on one end of a socket pair.

        Not ``multiprocessing``'s spawn: that re-runs the caller's main script in the worker,
        which breaks any script without an ``if __name__ == "__main__"`` guard; a worker here
        imports only metatrain. (Not fork either: forking a process that already runs
        threads, such as the heartbeat, can deadlock.)
        """
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        for key, value in _WORKER_MALLOC.items():
            env.setdefault(key, value)
        env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])])
        code = f"from metatrain.parallel import worker_entry; worker_entry({theirs.fileno()})"
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env
            )
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        self._conns.append(conn)
        self._procs.append(proc)

    @property
    def workers(self) -> int:
        return len(self._conns)

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (politely, then by force) and release the pipes."""
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send_bytes(_dumps(("stop", 0, None)))
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    # --- broadcasts ---

    def _broadcast(self, kind: str, payload: Any) -> None:
        data = _dumps((kind, 0, payload))
        for conn in self._conns:
            self._send(conn, data)

    def set_weights(self, values: Sequence[torch.Tensor]) -> None:
        """Every task starts from these weights (in the model's parameter order)."""
        self._broadcast("weights", flatten([v.detach().cpu() for v in values]))

    def set_optimizer_state(self, state: dict[str, Any] | None) -> None:
        """Every task starts from this optimizer ``state_dict`` (None: a fresh optimizer)."""
        self._broadcast("optimizer", state)

    # --- jobs ---

    def train_tasks(
        self,
        jobs: Iterable[tuple[Sequence[torch.Tensor], np.ndarray]],
        like: Sequence[torch.Tensor],
    ) -> Iterator[tuple[list[torch.Tensor], list[tuple[torch.Tensor, Any, int]]]]:
        """For each (task, mini-batch order): (the task's share of the update, shaped as
        ``like``; its steps' (mean loss, correct, examples)), in job order."""
        for vector, steps in self._run("train", ((_wire(t), o) for t, o in jobs)):
            yield (
                unflatten(vector, like),
                [
                    (torch.from_numpy(loss), None if c is None else torch.from_numpy(c), n)
                    for loss, c, n in steps
                ],
            )

    def evaluate_tasks(
        self,
        jobs: Iterable[tuple[Sequence[torch.Tensor], np.ndarray]],
        transductive: bool,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """For each (task, mini-batch order): (score, loss before adaptation or None)."""
        for score, before in self._run("evaluate", ((_wire(t), o, transductive) for t, o in jobs)):
            yield torch.from_numpy(score), None if before is None else torch.from_numpy(before)

    def _run(self, kind: str, payloads: Iterable[Any]) -> Iterator[Any]:
        """Send jobs to the least busy worker, ``_DEPTH`` in flight each; yield in job order.

        Jobs are pulled from ``payloads`` lazily, so a caller can stop early (a stop request)
        by ending its iterator: answers already in flight are still collected and yielded.
        Stopping the consumer part-way leaves answers in the pipes: close the pool then.
        """
        with one_thread():
            yield from self._jobs(kind, payloads)

    def _jobs(self, kind: str, payloads: Iterable[Any]) -> Iterator[Any]:
        pending = iter(payloads)
        exhausted = False
        in_flight = {id(conn): 0 for conn in self._conns}
        answers: dict[int, Any] = {}
        next_job = 0
        next_out = 0
        while True:
            while not exhausted:
                conn = min(self._conns, key=lambda c: in_flight[id(c)])
                if in_flight[id(conn)] >= _DEPTH:
                    break
                try:
                    payload = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                self._send(conn, _dumps((kind, next_job, payload)))
                in_flight[id(conn)] += 1
                next_job += 1
            while next_out in answers:
                yield answers.pop(next_out)
                next_out += 1
            if exhausted and next_out == next_job:
                return
            for conn in wait(self._conns):
                assert isinstance(conn, Connection)
                status, job_id, result = self._receive(conn)
                in_flight[id(conn)] -= 1
                if status != "ok":
                    raise TaskWorkerError(f"a task worker failed on job {job_id}:\n{result}")
                answers[job_id] = result

    def _receive(self, conn: Connection) -> tuple[str, int, Any]:
        try:
            return _loads(conn.recv_bytes())
        except (EOFError, OSError):  # EOF, or a reset when the worker died with data unread
            raise self._died(conn) from None

    def _send(self, conn: Connection, data: bytes) -> None:
        try:
            conn.send_bytes(data)
        except OSError:  # broken pipe / reset: the worker is gone
            raise self._died(conn) from None

    def _died(self, conn: Connection) -> TaskWorkerError:
        proc = self._procs[self._conns.index(conn)]
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        return TaskWorkerError(
            f"a task worker exited unexpectedly (exit code {proc.returncode}); "
            "out of memory is the usual cause"
        )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """This thread on one torch thread while other threads or processes compute beside it
    (task workers, or ``metatrain.threaded_backward``'s helper). A second OpenMP thread
    spin-waits after each small op and takes a core from them: with two threads the parent
    of two task workers burned 50-56 ms of CPU per meta-iteration of a fresh-Adam run
    instead of 9, and the meta-iteration took 91-106 ms instead of 82 (2-core machine)."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _wire(task: Sequence[torch.Tensor]) -> tuple[np.ndarray, ...]:
    """A task's four tensors as NumPy arrays, the cheap form to pickle (a sine task also
    carries its amplitude and phase, which stay behind)."""
    return tuple(t.detach().cpu().numpy() for t in tuple(task)[:4])
