"""How metatrain computes: everything that makes the algorithms fast, behind them.

``metatrain.algorithms`` says what Reptile and FOMAML compute and ``metatrain.reference``
states it in the paper's plain form; the engine computes the same numbers, faster, and every
path is tested equal to the reference. Its pieces, each in its own module:

- ``compute``: ``Compute``, the settings (device, task workers, CUDA graphs, stacked tasks,
  TF32), and the ``Plan`` they make for one run;
- ``learner``: the network, its inner optimizer and its inner step, reused for every task;
- ``steps``: the inner step, chosen once: autograd, by hand (``by_hand``), on a helper
  thread, or replayed from a CUDA graph (``cuda_graphs``); Adam over flat buffers
  (``flat_adam``);
- ``tasks``: one task as a job (train, or adapt and score), the same in this process and in
  a task worker;
- ``runners``: tasks one at a time, side by side in worker processes (``pool``), or stacked
  (``stacked``), shared by training and evaluation;
- ``meta_step``: the outer step around a runner;
- ``device``: devices, memory layout, float32 precision, usable cores.

The design and the measurements behind each choice: ``docs/engine.md``.
"""

from .compute import Compute, Plan, resolve_workers, useful_workers
from .learner import Learner
from .meta_step import MetaStep
from .runners import PoolRunner, SerialRunner, StackedRunner, TaskRunner, make_runner

__all__ = [
    "Compute",
    "Plan",
    "Learner",
    "MetaStep",
    "TaskRunner",
    "SerialRunner",
    "PoolRunner",
    "StackedRunner",
    "make_runner",
    "resolve_workers",
    "useful_workers",
]
