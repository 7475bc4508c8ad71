"""Independent few-shot tasks side by side on several CPU cores (``workers`` > 1).

Why processes: one inner step of the paper's networks is a few milliseconds of small kernels,
too small for PyTorch's intra-op threads and too chatty for Python threads (the interpreter
lock serialises the per-op Python work). Processes, each with one thread and its own replica
of the network, scale with the cores (figures in docs/engine.md).

What may run side by side: tasks that share nothing but the starting weights.
- Evaluation tasks always qualify: each starts from the meta-weights and from the same
  optimizer state (fresh, or the training run's Adam moments restored after every task).
- Training tasks qualify when each task starts from a fresh inner optimizer (SGD, or Adam
  without ``keep_adam_state``). The paper's presets chain Adam's moments from task to task,
  which makes a meta-batch's tasks a strict sequence: those stay serial.

The pool knows no kinds of job: ``run`` takes a job function (``metatrain.engine.tasks``), which
travels to the workers by name with each job and is called there on the worker's
``TaskContext``. Exactness: the parent draws every task and every mini-batch order from its
random stream in the serial order, sends them out, and yields the answers in job order, so the
results are bit-identical to the serial loop run with one thread (tested). The workers hold no
state across calls but the weights and optimizer state the parent last sent, so checkpoints
and resumption are unchanged.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config
from .device import one_thread, prepare_model
from .learner import Learner
from .tasks import TaskContext

__all__ = ["TaskPool", "TaskWorkerError", "Job", "worker_entry"]

# The folder that holds the metatrain package, put on the workers' import path.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Jobs in flight per worker. One: a job is sent only to a worker that is waiting for one, so
# neither side can block writing into a full pipe while the other is also writing (a task's
# images and a share of the weights are larger than a pipe's buffer). The worker idles for the
# parent's round trip, a small fraction of a task.
_DEPTH = 1

# glibc's malloc in a worker: a fresh interpreter's heap is small, so each inner step's larger
# activations were mapped and unmapped from the system every time, a page fault per page per
# step (docs/engine.md). With these, freed memory stays in the heap. A value the user set
# wins; other C libraries ignore them.
_WORKER_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(128 * 1024 * 1024),
}

# A job: ``job(context, task, order, *extra)``, a module-level function (sent by name).
Job = Callable[..., Any]


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes) -> Any:
    # Only this process's own workers write these bytes.
    return pickle.loads(data)


def flatten(values: Sequence[torch.Tensor]) -> np.ndarray:
    """Tensors as one float32 vector, in logical (row-major) order: weights travel as one
    NumPy array, which pickles as a plain copy (a list of tensors takes many times longer)."""
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


def _to_wire(value: Any) -> Any:
    """Tensors as NumPy arrays (in tuples and lists too): they pickle as plain copies, where
    tensors cost many times more per message."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, tuple | list):
        return type(value)(_to_wire(v) for v in value)
    return value


def _from_wire(value: Any) -> Any:
    """``_to_wire`` undone: NumPy arrays back as tensors."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, tuple | list):
        return type(value)(_from_wire(v) for v in value)
    return value


class _Replica:
    """A worker's own network, learner and task context."""

    def __init__(self, model: nn.Module, config: Config) -> None:
        self.channels_last = prepare_model(model, torch.device("cpu"))
        self.context = TaskContext(Learner.from_config(model, config), config)

    def tensors(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, ...]:
        out = []
        for x in arrays:
            t = torch.from_numpy(x)
            if self.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            out.append(t)
        return tuple(out)

    def set_weights(self, vector: np.ndarray) -> None:
        theta = self.context.theta
        with torch.no_grad():
            torch._foreach_copy_(theta, unflatten(vector, theta))

    def set_optimizer_state(self, state: dict[str, Any] | None) -> None:
        learner = self.context.learner
        learner.optimizer.state.clear()
        if state is not None:
            learner.load_optimizer_state(state)
        self.context.snapshot = learner.optimizer_snapshot()

    def run(self, job: Job, task: Sequence[np.ndarray], order: np.ndarray, *extra: Any) -> Any:
        self.context.restore_weights()
        self.context.start_task()
        return _to_wire(job(self.context, self.tensors(task), order, *extra))


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
        replica = _Replica(model, Config.from_dict(config_dict))
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
            # Nothing to flush or save: skip the interpreter's teardown (torch's is slow,
            # which the parent would wait for on every evaluation).
            os._exit(0)
        try:
            if kind == "weights":
                replica.set_weights(payload)
                continue
            if kind == "optimizer":
                replica.set_optimizer_state(payload)
                continue
            if kind != "job":
                raise ValueError(f"unknown message {kind!r}")
            result = replica.run(*payload)
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
    first; then ``run`` yields each job's answer in job order.
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
        code = f"from metatrain.engine.pool import worker_entry; worker_entry({theirs.fileno()})"
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

    def run(self, job: Job, payloads: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """For each (task, mini-batch order, *extra): ``job(context, task, order, *extra)``
        on a worker, each task started from the broadcast weights and optimizer state. Yields
        the answers in job order, tensors as tensors.

        Jobs are pulled from ``payloads`` lazily, so a caller can stop early (a stop request)
        by ending its iterator: answers already in flight are still collected and yielded.
        Stopping the consumer part-way leaves answers in the pipes: close the pool then.
        """
        messages = ((job, _wire(task), *rest) for task, *rest in payloads)
        with one_thread():
            for answer in self._jobs(messages):
                yield _from_wire(answer)

    def _jobs(self, payloads: Iterable[Any]) -> Iterator[Any]:
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
                self._send(conn, _dumps(("job", next_job, payload)))
                in_flight[id(conn)] += 1
                next_job += 1
            while next_out in answers:
                yield answers.pop(next_out)
                next_out += 1
            if exhausted and next_out == next_job:
                return
            for ready in wait(self._conns):
                assert isinstance(ready, Connection)
                status, job_id, result = self._receive(ready)
                in_flight[id(ready)] -= 1
                if status != "ok":
                    raise TaskWorkerError(f"a task worker failed on job {job_id}:\n{result}")
                answers[job_id] = result

    def _receive(self, conn: Connection) -> tuple[str, int, Any]:
        try:
            message: tuple[str, int, Any] = _loads(conn.recv_bytes())
            return message
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


def _wire(task: Sequence[torch.Tensor]) -> tuple[np.ndarray, ...]:
    """A task's four tensors as NumPy arrays, the cheap form to pickle (a sine task also
    carries its amplitude and phase, which stay behind)."""
    return tuple(t.detach().cpu().numpy() for t in tuple(task)[:4])
