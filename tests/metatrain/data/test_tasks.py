"""TaskSampler and mini_batches.

The synthetic datasets write each image's own (class, index) into its pixels, so a test can
read back exactly which examples a task holds.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import torch

from metatrain.data import (
    ClassDataset,
    Task,
    TaskSampler,
    TensorClassDataset,
    batches_in_order,
    mini_batches,
)
from metatrain.data.omniglot import omniglot_splits


def coded_dataset(num_classes: int = 12, per_class: int = 8) -> TensorClassDataset:
    """Pixel (0, 0) = class, pixel (0, 1) = index of the image in its class."""
    storage = torch.zeros((num_classes, per_class, 1, 2, 2), dtype=torch.uint8)
    storage[:, :, 0, 0, 0] = torch.arange(num_classes)[:, None]
    storage[:, :, 0, 0, 1] = torch.arange(per_class)[None, :]
    return TensorClassDataset(storage, range(num_classes), [f"c{i}" for i in range(num_classes)])


class UnevenDataset(ClassDataset):
    """Class i has sizes[i] images; pixels encode (class, index) as in coded_dataset."""

    def __init__(self, sizes: list[int]) -> None:
        self._sizes = np.array(sizes, dtype=np.int64)

    @property
    def names(self) -> list[str]:
        return [f"u{i}" for i in range(len(self._sizes))]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, 1, 2)

    def class_sizes(self) -> np.ndarray:
        return self._sizes

    def gather_uint8(self, classes: np.ndarray, indices: np.ndarray) -> np.ndarray:
        assert (indices < self._sizes[classes]).all(), "index past the end of a class"
        out = np.zeros((len(classes), 1, 1, 2), dtype=np.uint8)
        out[:, 0, 0, 0] = classes
        out[:, 0, 0, 1] = indices
        return out


def decode(x: torch.Tensor) -> list[tuple[int, int]]:
    codes = (x[:, 0, 0, :2] * 255).round().long()
    return [(int(c), int(i)) for c, i in codes]


def sampler(ways=5, shots=3, queries=2, seed=0, dataset=None) -> TaskSampler:
    return TaskSampler(
        dataset or coded_dataset(), ways, shots, queries, np.random.default_rng(seed)
    )


def test_task_shapes_and_dtypes():
    task = sampler(ways=5, shots=3, queries=2).sample()
    assert isinstance(task, Task)
    assert task.support_x.shape == (15, 1, 2, 2) and task.support_x.dtype == torch.float32
    assert task.query_x.shape == (10, 1, 2, 2)
    assert task.support_y.dtype == torch.int64 and task.query_y.dtype == torch.int64
    assert task.support_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert task.query_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_zero_queries_gives_an_empty_query_set():
    task = sampler(queries=0).sample()
    assert task.query_x.shape == (0, 1, 2, 2) and task.query_y.shape == (0,)


def test_same_seed_gives_identical_tasks_and_other_seeds_differ():
    a, b, c = sampler(seed=4), sampler(seed=4), sampler(seed=5)
    tasks_a = [a.sample() for _ in range(20)]
    tasks_b = [b.sample() for _ in range(20)]
    tasks_c = [c.sample() for _ in range(20)]
    for ta, tb in zip(tasks_a, tasks_b, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(ta, tb, strict=True))
    assert any(
        not torch.equal(ta.support_x, tc.support_x) for ta, tc in zip(tasks_a, tasks_c, strict=True)
    )


def test_each_label_is_one_class_and_classes_are_distinct():
    s = sampler(ways=5, shots=3, queries=2)
    for _ in range(50):
        task = s.sample()
        label_to_class = {}
        for x, y in ((task.support_x, task.support_y), (task.query_x, task.query_y)):
            for (cls, _), label in zip(decode(x), y.tolist(), strict=True):
                assert label_to_class.setdefault(label, cls) == cls
        assert len(set(label_to_class.values())) == 5


def test_labels_are_a_fresh_permutation_per_task():
    s = sampler(ways=5, shots=1, queries=0, dataset=coded_dataset(num_classes=5))
    seen = Counter()
    for _ in range(600):
        task = s.sample()
        order = tuple(cls for cls, _ in decode(task.support_x))  # class of label 0, 1, ...
        assert sorted(order) == [0, 1, 2, 3, 4]
        seen[order] += 1
    assert len(seen) > 100  # 120 permutations exist; a fixed labelling would give 1
    first = Counter({cls: 0 for cls in range(5)})
    for order, count in seen.items():
        first[order[0]] += count
    assert min(first.values()) > 80  # every class gets label 0 about 600 / 5 = 120 times


def test_support_and_query_examples_are_distinct_within_a_class():
    s = sampler(ways=4, shots=5, queries=3, dataset=coded_dataset(per_class=8))
    for _ in range(50):
        task = s.sample()
        support, query = decode(task.support_x), decode(task.query_x)
        assert len(set(support)) == len(support) and len(set(query)) == len(query)
        assert not set(support) & set(query)


def test_classes_and_examples_are_drawn_uniformly():
    s = sampler(ways=3, shots=2, queries=1, dataset=coded_dataset(num_classes=6, per_class=5))
    classes, examples = Counter(), Counter()
    for _ in range(3000):
        task = s.sample()
        picked = decode(task.support_x) + decode(task.query_x)
        classes.update({c for c, _ in picked})
        examples.update(i for _, i in picked)
    assert all(1300 < n < 1700 for n in classes.values())  # expected 1500 each
    assert all(5100 < n < 5700 for n in examples.values())  # expected 3000 * 9 / 5 = 5400


def test_uneven_classes_never_index_past_their_end():
    dataset = UnevenDataset([3, 10, 4, 50, 3])
    s = sampler(ways=3, shots=2, queries=1, dataset=dataset)
    used = Counter()
    for _ in range(500):
        task = s.sample()
        for cls, i in decode(task.support_x) + decode(task.query_x):
            assert i < dataset.class_sizes()[cls]
            used[cls, i] += 1
    assert {i for (c, i) in used if c == 3} == set(range(50))  # the big class is fully used
    assert {i for (c, i) in used if c in (0, 4)} == {0, 1, 2}


def test_it_rejects_more_ways_than_classes():
    with pytest.raises(ValueError, match="6-way task needs at least 6 classes; the dataset has 5"):
        sampler(ways=6, dataset=coded_dataset(num_classes=5))


def test_it_rejects_classes_smaller_than_shots_plus_queries():
    with pytest.raises(ValueError, match=r"shots \+ queries = 4.*'u2'\) has 3"):
        sampler(ways=2, shots=3, queries=1, dataset=UnevenDataset([5, 6, 3, 9]))


@pytest.mark.parametrize(("ways", "shots", "queries"), [(0, 1, 1), (2, 0, 1), (2, 1, -1)])
def test_it_rejects_nonsense_sizes(ways, shots, queries):
    with pytest.raises(ValueError, match="need ways >= 1"):
        sampler(ways=ways, shots=shots, queries=queries)


def test_task_to_moves_every_tensor():
    task = sampler().sample().to("cpu")
    assert isinstance(task, Task) and all(t.device.type == "cpu" for t in task)


def test_real_omniglot_tasks_and_sampling_speed(omniglot):
    splits = omniglot_splits(omniglot, "paper", 0, 0, True)
    s = TaskSampler(splits.train, 5, 10, 1, np.random.default_rng(0))
    task = s.sample()
    assert task.support_x.shape == (50, 1, 28, 28) and task.query_x.shape == (5, 1, 28, 28)
    start = time.perf_counter()
    for _ in range(200):
        s.sample()
    rate = 200 / (time.perf_counter() - start)
    assert (
        rate > 200
    )  # measured ~5,000 tasks/s on a shared 2-core CPU; this only catches regressions


# --- mini_batches ----------------------------------------------------------------------------


def test_mini_batches_cycle_through_reshuffled_epochs():
    x = torch.arange(10).float()[:, None]
    y = torch.arange(10)
    batches = list(mini_batches(x, y, 4, 7, np.random.default_rng(0)))
    assert len(batches) == 7 and all(bx.shape == (4, 1) for bx, _ in batches)
    stream = torch.cat([by for _, by in batches]).tolist()  # 28 = 2 full epochs + 8
    assert sorted(stream[:10]) == sorted(stream[10:20]) == list(range(10))
    assert len(set(stream[20:])) == 8
    assert stream[:10] != stream[10:20]  # reshuffled, not repeated
    for bx, by in batches:
        assert torch.equal(bx[:, 0].long(), by)  # x and y stay paired


def test_a_batch_may_span_two_epochs_like_the_paper():
    x, y = torch.arange(5).float(), torch.arange(5)
    batches = [by.tolist() for _, by in mini_batches(x, y, 3, 2, np.random.default_rng(1))]
    flat = batches[0] + batches[1]
    assert sorted(flat[:5]) == [0, 1, 2, 3, 4]  # batch 2 finishes epoch 1 then starts epoch 2


def test_mini_batches_are_deterministic_given_the_rng():
    x, y = torch.randn(12, 3), torch.arange(12)
    a = [by for _, by in mini_batches(x, y, 5, 6, np.random.default_rng(3))]
    b = [by for _, by in mini_batches(x, y, 5, 6, np.random.default_rng(3))]
    c = [by for _, by in mini_batches(x, y, 5, 6, np.random.default_rng(4))]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_mini_batches_with_replacement_draw_distinct_examples_per_batch():
    x, y = torch.arange(6).float(), torch.arange(6)
    batches = list(mini_batches(x, y, 4, 50, np.random.default_rng(0), replacement=True))
    assert len(batches) == 50 and all(len(set(by.tolist())) == 4 for _, by in batches)


def test_batches_in_order_follow_the_rows_and_keep_channels_last():
    x = torch.randn(12, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    y = torch.arange(12)
    order = np.array([[3, 1, 4], [1, 5, 9], [2, 6, 5]])
    batches = list(batches_in_order(x, y, order))
    assert len(batches) == 3
    for (bx, by), row in zip(batches, order, strict=True):
        index = torch.from_numpy(row)
        assert torch.equal(bx, x[index]) and torch.equal(by, y[index])
        assert bx.is_contiguous(memory_format=torch.channels_last)
    assert list(batches_in_order(x, y, np.empty((0, 3), dtype=np.int64))) == []


def test_mini_batches_check_their_arguments_eagerly():
    x, y = torch.zeros(4, 2), torch.zeros(4)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="y has 3"):
        mini_batches(x, y[:3], 2, 1, rng)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        mini_batches(x, y, 0, 1, rng)
    with pytest.raises(ValueError, match="zero examples"):
        mini_batches(x[:0], y[:0], 2, 1, rng)
    with pytest.raises(ValueError, match="replacement=True"):
        mini_batches(x, y, 5, 1, rng, replacement=True)
    assert list(mini_batches(x, y, 2, 0, rng)) == []


def test_images_reads_one_class_and_rejects_bad_indices():
    dataset = coded_dataset(num_classes=3, per_class=4)
    assert decode(dataset.images(2, [3, 0])) == [(2, 3), (2, 0)]
    with pytest.raises(IndexError, match="class 1 has 4 images"):
        dataset.images(1, [4])
    with pytest.raises(IndexError, match="class index 3 out of range"):
        dataset.images(3, [0])
