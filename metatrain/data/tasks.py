"""N-way K-shot tasks from a ClassDataset, and the paper's inner-loop mini-batches.

Everything random is drawn from a caller-owned ``numpy.random.Generator``, so a run is
reproducible from its seed, and each task costs a few NumPy calls and one gather.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from .base import ClassDataset


class Task(NamedTuple):
    """One few-shot task. Labels are 0..ways-1; examples are grouped by label (class-major).

    support_x: float32 (ways*shots, C, H, W); support_y: int64 (ways*shots,)
    query_x:   float32 (ways*queries, C, H, W); query_y: int64 (ways*queries,)
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Task:
        """The same task with every tensor on ``device``."""
        return Task(*(t.to(device, non_blocking=non_blocking) for t in self))


class TaskSampler:
    """Samples N-way K-shot tasks, as the paper's ``_sample_mini_dataset``/``_split_train_test``.

    Each task picks ``ways`` distinct classes uniformly at random; the order in which they are
    drawn is itself uniformly random, and class number k of the draw gets label k, so the
    labels are a fresh random permutation per task (a network cannot learn "class c is label
    0"). From each class, ``shots + queries`` distinct examples are drawn uniformly without
    replacement: the first ``shots`` go to the support set, the rest to the query set.
    Deterministic given the state of ``rng``.
    """

    def __init__(
        self,
        dataset: ClassDataset,
        ways: int,
        shots: int,
        queries: int,
        rng: np.random.Generator,
    ) -> None:
        if ways < 1 or shots < 1 or queries < 0:
            raise ValueError(
                f"need ways >= 1, shots >= 1, queries >= 0; got ways={ways}, "
                f"shots={shots}, queries={queries}"
            )
        if dataset.num_classes < ways:
            raise ValueError(
                f"a {ways}-way task needs at least {ways} classes; the dataset has "
                f"{dataset.num_classes}"
            )
        sizes = np.asarray(dataset.class_sizes(), dtype=np.int64)
        need = shots + queries
        too_small = np.flatnonzero(sizes < need)
        if too_small.size:
            i = int(too_small[0])
            raise ValueError(
                f"{too_small.size} class(es) have fewer than shots + queries = {need} examples, "
                f"e.g. class {i} ({dataset.names[i]!r}) has {sizes[i]}"
            )
        self.dataset = dataset
        self.ways, self.shots, self.queries = ways, shots, queries
        self.rng = rng
        self._sizes = sizes
        self._max_size = int(sizes.max())
        self._uniform = bool((sizes == self._max_size).all())
        self._support_y = torch.arange(ways).repeat_interleave(shots)
        self._query_y = torch.arange(ways).repeat_interleave(queries)

    def sample(self) -> Task:
        ways, shots, need = self.ways, self.shots, self.shots + self.queries
        classes = self.rng.choice(self.dataset.num_classes, size=ways, replace=False, shuffle=True)
        picks = self._pick_examples(classes, need)  # (ways, need), distinct per row
        flat_classes = np.concatenate([np.repeat(classes, shots), np.repeat(classes, self.queries)])
        flat_indices = np.concatenate([picks[:, :shots].ravel(), picks[:, shots:].ravel()])
        x = self.dataset.gather(flat_classes, flat_indices)
        split = ways * shots
        return Task(x[:split], self._support_y.clone(), x[split:], self._query_y.clone())

    def _pick_examples(self, classes: np.ndarray, need: int) -> np.ndarray:
        """``need`` distinct example indices per class, in uniformly random order.

        The first ``need`` positions of the argsort of i.i.d. uniform keys: a uniformly random
        ordered sample without replacement, for all classes in one call. Classes smaller than
        the largest get infinite keys past their end, so those indices are never picked.
        """
        keys = self.rng.random((len(classes), self._max_size))
        if not self._uniform:
            keys[np.arange(self._max_size)[None, :] >= self._sizes[classes][:, None]] = np.inf
        if need < self._max_size:
            part = np.argpartition(keys, need - 1, axis=1)[:, :need]
            order = np.argsort(np.take_along_axis(keys, part, axis=1), axis=1)
            return np.take_along_axis(part, order, axis=1)
        return np.argsort(keys, axis=1)[:, :need]

    def __iter__(self) -> Iterator[Task]:
        while True:
            yield self.sample()


def batch_order(
    n: int,
    batch_size: int,
    num_batches: int,
    rng: np.random.Generator,
    replacement: bool = False,
) -> np.ndarray:
    """The example indices of ``num_batches`` mini-batches: an int64 (num_batches, batch_size)
    array, drawn exactly as the paper's ``_mini_batches`` (see ``mini_batches``).

    Kept apart from the batches themselves so that the indices can be drawn in one process and
    the batches trained in another (``metatrain.engine.pool``) with the same random stream.
    """
    if batch_size < 1 or num_batches < 0:
        raise ValueError(
            f"need batch_size >= 1 and num_batches >= 0, got {batch_size}, {num_batches}"
        )
    if num_batches and n == 0:
        raise ValueError("cannot draw batches from zero examples")
    if replacement and num_batches and batch_size > n:
        raise ValueError(f"batch_size {batch_size} > {n} examples with replacement=True")
    if num_batches == 0:
        return np.empty((0, batch_size), dtype=np.int64)
    if replacement:
        return np.stack([rng.choice(n, size=batch_size, replace=False) for _ in range(num_batches)])
    total = batch_size * num_batches
    epochs = -(-total // n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])[:total]
    return order.reshape(num_batches, batch_size)


def batches_in_order(
    x: torch.Tensor, y: torch.Tensor, order: np.ndarray
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The mini-batches of (x, y) whose indices ``batch_order`` drew, one per row of ``order``.

    All rows are gathered at once and each batch is a slice of that (a view, laid out as ``x``
    is, channels_last included): one indexing operation per task instead of one per step."""
    order = np.asarray(order, dtype=np.int64)
    rows, size = order.shape
    flat = torch.from_numpy(order.reshape(-1)).to(x.device)
    xs = x[flat]
    ys = y[flat if y.device == x.device else flat.to(y.device)]
    return ((xs[b * size : (b + 1) * size], ys[b * size : (b + 1) * size]) for b in range(rows))


def mini_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    num_batches: int,
    rng: np.random.Generator,
    replacement: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``num_batches`` batches of ``batch_size`` examples of (x, y), the paper's ``_mini_batches``.

    Without replacement (the paper's default): shuffle the examples, take consecutive batches;
    when the shuffled list runs out, reshuffle and continue, a batch possibly spanning two
    shuffles (so it may hold one example twice when batch_size does not divide the count).
    With replacement: each batch is an independent sample of distinct examples.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} examples but y has {len(y)}")
    # Draw every index now: arguments are checked eagerly and the rng is consumed at call time.
    order = batch_order(n, batch_size, num_batches, rng, replacement)
    return batches_in_order(x, y, order)
