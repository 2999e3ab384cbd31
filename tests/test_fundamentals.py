"""Reference tests of lesson 01's from-scratch functions against PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ftlab.fundamentals import (
    cross_entropy_from_scratch,
    log_softmax_from_scratch,
    numerical_gradient,
    parameter_distance,
    relative_change_per_layer,
)


def test_log_softmax_matches_torch_on_random_and_extreme_logits():
    torch.manual_seed(0)
    for scale in (1.0, 1e3, 1e6):
        logits = torch.randn(5, 7) * scale
        expected = F.log_softmax(logits, dim=-1)
        assert torch.allclose(log_softmax_from_scratch(logits), expected, rtol=1e-5, atol=1e-5)


def test_cross_entropy_matches_torch_value_and_gradient():
    torch.manual_seed(1)
    logits = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (8,))
    ours = cross_entropy_from_scratch(logits, labels)
    (ours_grad,) = torch.autograd.grad(ours, logits)
    reference = F.cross_entropy(logits, labels)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(ours, reference, atol=1e-12)
    assert torch.allclose(ours_grad, reference_grad, atol=1e-12)
    expected_grad = (F.softmax(logits, -1) - F.one_hot(labels, 5)) / 8  # dL/dz = softmax - y
    assert torch.allclose(ours_grad, expected_grad.detach(), atol=1e-12)


def test_cross_entropy_stays_finite_where_the_naive_formula_overflows():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 5000.0, 1.0]])
    labels = torch.tensor([2, 0])
    naive = -(logits.exp() / logits.exp().sum(1, keepdim=True)).log()[[0, 1], labels].mean()
    assert not torch.isfinite(naive)
    ours = cross_entropy_from_scratch(logits, labels)
    assert torch.isfinite(ours)
    assert torch.allclose(ours, F.cross_entropy(logits, labels))


def test_cross_entropy_matches_torch_on_huge_float32_logits():
    # Lesson 01 shows this case (logits of scale 300, float32) next to its own function.
    generator = torch.Generator().manual_seed(0)
    logits = 300 * torch.randn(16, 10, generator=generator)  # (16, 10)
    labels = torch.randint(0, 10, (16,), generator=generator)
    assert torch.allclose(
        cross_entropy_from_scratch(logits, labels), F.cross_entropy(logits, labels)
    )


def test_cross_entropy_gradient_rows_sum_to_zero_and_stay_within_one_over_n():
    logits = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    logits.requires_grad_(True)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    (gradient,) = torch.autograd.grad(cross_entropy_from_scratch(logits, labels), logits)
    assert torch.allclose(gradient.sum(dim=1), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert gradient.abs().max() <= 1 / 6  # (softmax - one-hot) / N
    assert (gradient[torch.arange(6), labels] < 0).all()  # only the true class is pushed up


def test_two_class_cross_entropy_with_logits_zero_and_s_is_binary_cross_entropy():
    s = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    two_class = cross_entropy_from_scratch(torch.stack([torch.zeros_like(s), s], dim=1), y)
    assert torch.allclose(two_class, F.binary_cross_entropy_with_logits(s, y.double()))
    wrong = cross_entropy_from_scratch(torch.stack([s, torch.zeros_like(s)], dim=1), y)
    assert not torch.allclose(wrong, two_class)  # the logit belongs to class 1, not class 0


def test_cross_entropy_differs_from_a_wrong_formula():
    torch.manual_seed(2)
    logits, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    wrong = -F.softmax(logits, -1)[torch.arange(6), labels].mean()  # forgot the log
    assert not torch.allclose(cross_entropy_from_scratch(logits, labels), wrong)


@pytest.mark.parametrize(
    ("logits", "labels", "error"),
    [
        (torch.randn(4), torch.tensor([0, 1, 0, 1]), ValueError),  # 1-D logits
        (torch.randn(4, 3), torch.tensor([0, 1]), ValueError),  # wrong batch size
        (torch.randn(4, 3), F.one_hot(torch.tensor([0, 1, 2, 0]), 3), ValueError),  # one-hot
        (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError),  # float labels
        (torch.randn(4, 3), torch.tensor([0, 1, 3, 0]), ValueError),  # label out of range
        (torch.randint(0, 3, (4, 3)), torch.tensor([0, 1, 2, 0]), TypeError),  # int logits
    ],
)
def test_cross_entropy_rejects_bad_input_clearly(logits, labels, error):
    with pytest.raises(error):
        cross_entropy_from_scratch(logits, labels)


def test_numerical_gradient_matches_autograd():
    torch.manual_seed(3)
    x = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1])
    numeric = numerical_gradient(lambda z: cross_entropy_from_scratch(z, labels), x)
    x.requires_grad_(True)
    (analytic,) = torch.autograd.grad(F.cross_entropy(x, labels), x)
    assert (numeric - analytic).abs().max() < 1e-8
    wrong = analytic * 2  # a gradient off by a factor is caught
    assert (numeric - wrong).abs().max() > 1e-3


def test_numerical_gradient_rejects_float32_and_non_scalar_functions():
    with pytest.raises(TypeError):
        numerical_gradient(lambda z: z.sum(), torch.randn(3))
    with pytest.raises(ValueError):
        numerical_gradient(lambda z: z * 2, torch.randn(3, dtype=torch.float64))


def test_distance_and_relative_change_measure_a_known_move():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert parameter_distance(model, initial) == 0.0
    assert relative_change_per_layer(model, initial) == {"0.weight": 0.0, "1.weight": 0.0}
    with torch.no_grad():
        model[1].weight.mul_(1.5)  # moves by half its own norm
        model[0].bias.add_(1.0)  # four entries, each by 1
    changes = relative_change_per_layer(model, initial)
    assert changes["0.weight"] == 0.0
    assert changes["1.weight"] == pytest.approx(0.5, rel=1e-6)
    expected = (4.0 + (0.5 * initial["1.weight"].norm()) ** 2) ** 0.5
    assert parameter_distance(model, initial) == pytest.approx(expected.item(), rel=1e-6)


def test_distance_rejects_initial_weights_of_another_model():
    model = nn.Linear(3, 2)
    with pytest.raises(KeyError):
        parameter_distance(model, {"weight": torch.zeros(2, 3)})
    with pytest.raises(ValueError):
        relative_change_per_layer(model, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)})
