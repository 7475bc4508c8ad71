"""The inner losses (metatrain.losses): each form a fast path uses is the plain form's numbers,
and what a loss declares is what the fast paths may use."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metatrain.losses import MSE, SUMMED_CROSS_ENTROPY, Loss


def test_the_classification_loss_is_the_cross_entropy_summed_over_the_batch():
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
    assert torch.equal(SUMMED_CROSS_ENTROPY(out, y), F.cross_entropy(out, y, reduction="sum"))
    assert SUMMED_CROSS_ENTROPY.per_example(torch.tensor(6.0), 6) == 1.0
    assert SUMMED_CROSS_ENTROPY.classifies and not MSE.classifies


@pytest.mark.parametrize("shape", [(5, 8), (7, 3, 2, 2)], ids=["flat", "feature-maps"])
def test_the_by_hand_linear_head_is_autograds_to_the_bit(shape):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(*shape, generator=g)
    linear = torch.nn.Linear(h[0].numel(), 3)
    y = torch.randint(0, 3, (shape[0],), generator=g)
    features = h.detach().requires_grad_(True)
    expected_out = linear(features.flatten(1))
    expected_loss = SUMMED_CROSS_ENTROPY(expected_out, y)
    grads = torch.autograd.grad(expected_loss, [features, linear.weight, linear.bias])
    with torch.no_grad():
        out, loss, grad_h, grad_w, grad_b = SUMMED_CROSS_ENTROPY.linear_head(
            h, y, linear.weight, linear.bias
        )
    assert torch.equal(out, expected_out.detach()) and torch.equal(loss, expected_loss.detach())
    for mine, theirs in zip((grad_h, grad_w, grad_b), grads, strict=True):
        assert torch.equal(mine, theirs)


def test_the_regression_loss_and_its_per_task_form():
    g = torch.Generator().manual_seed(2)
    out, y = torch.randn(4, 10, 1, generator=g), torch.randn(4, 10, 1, generator=g)
    per_task = MSE.per_task(out, y)
    assert per_task.shape == (4,)
    for t in range(4):
        assert float(per_task[t]) == pytest.approx(float(MSE(out[t], y[t])), rel=1e-6)
    assert MSE.per_example(torch.tensor(0.5), 10) == 0.5  # already a mean


def test_only_declared_forms_are_offered():
    assert SUMMED_CROSS_ENTROPY.has_linear_head and not SUMMED_CROSS_ENTROPY.has_per_task
    assert MSE.has_per_task and not MSE.has_linear_head
    with pytest.raises(NotImplementedError):
        MSE.linear_head(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1), torch.zeros(1))
    with pytest.raises(NotImplementedError):
        SUMMED_CROSS_ENTROPY.per_task(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1))
    with pytest.raises(NotImplementedError):
        Loss()(torch.zeros(1), torch.zeros(1))
