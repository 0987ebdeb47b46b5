"""A loss's row-wise form (``reml_core.inner_loop.row_wise``): the stacked paths take it instead of
``torch.func.vmap`` of the loss, so it must give vmap's numbers bit for bit, and only for the loss it marks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reml_core.inner_loop import batched_loss, mean_squared_error, mean_squared_error_rows, row_wise
from reml_plugins.files.sampler import FileTaskSampler
from reml_plugins.sine.sampler import SineConfig, SineTaskSampler

SHAPES = [(1, 5, 1), (7, 10, 1), (128, 100, 1), (33, 20, 3), (16, 5), (9,)]


@pytest.mark.numerics  # bit-for-bit against vmap: also run under other CPU dispatches
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_mean_squared_error_rows_are_vmaps_bits_values_and_gradients(shape):
    generator = torch.Generator().manual_seed(len(shape) * 100 + shape[0])
    prediction = (torch.randn(shape, generator=generator) * 3).requires_grad_(True)
    weights = torch.randn(shape[0], generator=generator)
    by_vmap = torch.func.vmap(lambda p, t: torch.mean((p - t) ** 2))
    targets = [
        torch.randn(shape, generator=generator),
        torch.randn(shape[1:], generator=generator).expand(shape),  # one target for every row (slot scores)
    ]
    for target in targets:
        expected = by_vmap(prediction, target)
        got = mean_squared_error_rows(prediction, target)
        assert got.shape == (shape[0],)
        assert torch.equal(got, expected)
        (expected_grad,) = torch.autograd.grad((expected * weights).sum(), prediction)
        (got_grad,) = torch.autograd.grad((got * weights).sum(), prediction)
        assert torch.equal(got_grad, expected_grad)
        for row in range(shape[0]):  # and each row is the loss of that row alone
            assert torch.equal(got[row], mean_squared_error(prediction[row], target[row]))


def test_batched_loss_takes_the_marked_form_and_vmaps_anything_else():
    sampler = SineTaskSampler(SineConfig())
    assert batched_loss(sampler.loss) is mean_squared_error_rows
    assert batched_loss(mean_squared_error) is mean_squared_error_rows
    assert FileTaskSampler.loss.row_losses is mean_squared_error_rows  # type: ignore[attr-defined]

    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(4, 6, 1, generator=generator), torch.randn(4, 6, 1, generator=generator)

    def absolute(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (p - t).abs().mean()

    np.testing.assert_allclose(batched_loss(absolute)(prediction, target), (prediction - target).abs().mean((1, 2)))
    logits, labels = torch.randn(3, 8, 5, generator=generator), torch.randint(0, 5, (3, 8), generator=generator)
    rows = batched_loss(F.cross_entropy)(logits, labels)
    expected = [F.cross_entropy(logits[row], labels[row]) for row in range(3)]
    np.testing.assert_allclose(rows, torch.stack(expected), rtol=1e-6)


def test_a_subclass_that_overrides_the_loss_is_not_given_the_parents_row_form():
    """A family derived from sine with its own loss: the stacked paths must compute *its* loss row by row."""

    class AbsoluteSine(SineTaskSampler):
        def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (prediction - target).abs().mean()

    class MarkedAbsoluteSine(SineTaskSampler):
        @row_wise(lambda p, t: (p - t).abs().mean(dim=(1, 2)))
        def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (prediction - target).abs().mean()

    prediction, target = torch.randn(5, 10, 1, generator=torch.Generator().manual_seed(1)), torch.full((5, 10, 1), 0.5)
    expected = (prediction - target).abs().mean((1, 2))
    for sampler in (AbsoluteSine(SineConfig()), MarkedAbsoluteSine(SineConfig())):
        np.testing.assert_allclose(batched_loss(sampler.loss)(prediction, target), expected, rtol=1e-6)
    assert not torch.allclose(mean_squared_error_rows(prediction, target), expected)
