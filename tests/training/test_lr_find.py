"""lr_find: the range test finds the descent, restores everything, refuses bad runs."""

import math

import pytest
import torch
from tiny_models import (
    loaders,
    mlp,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_bert,
    token_loaders,
)

from ftlab.training.lr_find import LRFindResult, lr_find


def state_of(model, optimizer):
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    return weights, repr(optimizer.state_dict())


def test_model_optimizer_modes_and_random_state_are_restored():
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train_dl, _ = loaders()
    model.eval()
    weights, optimizer_state = state_of(model, optimizer)
    torch.manual_seed(5)
    expected_draw = torch.rand(1)
    torch.manual_seed(5)
    lr_find(model, train_dl, optimizer, num_steps=30)
    assert torch.rand(1) == expected_draw  # the test drew no random numbers of the caller's
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert repr(optimizer.state_dict()) == optimizer_state  # same lr, no Adam moments
    assert optimizer.param_groups[0]["lr"] == 3e-3 and not optimizer.state
    assert not model.training  # eval mode, as it was


def test_the_model_did_train_during_the_test_so_restoring_was_needed():
    model = mlp()
    train_dl, _ = loaders()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    seen = []
    hook = model[0].register_forward_hook(lambda m, i, o: seen.append(m.weight.detach().clone()))
    lr_find(model, train_dl, num_steps=20)
    hook.remove()
    assert not torch.equal(seen[-1], weights["0.weight"])  # it moved during the sweep
    assert torch.equal(model[0].weight, weights["0.weight"])  # and is back


def test_suggestion_lies_where_the_loss_falls_on_a_toy_problem():
    torch.manual_seed(0)
    result = lr_find(mlp(), loaders()[0], start_lr=1e-5, end_lr=10, num_steps=100)
    assert isinstance(result, LRFindResult) and len(result.lrs) == len(result.losses)
    ratios = [b / a for a, b in zip(result.lrs[:-1], result.lrs[1:], strict=True)]
    assert ratios == pytest.approx([ratios[0]] * len(ratios))  # exponential growth
    assert result.lrs[0] == pytest.approx(1e-5)
    i = result.lrs.index(result.suggestion)
    lowest = result.losses.index(min(result.losses))
    assert 0 < i < lowest  # in the descending region, before the minimum
    assert result.losses[i + 1] < result.losses[i - 1]  # the loss falls there
    assert result.losses[lowest] < 0.5 * result.losses[0]  # the toy problem does get learned
    assert result.min_lr == result.lrs[lowest]


def test_stops_once_the_loss_exceeds_four_times_its_minimum():
    result = lr_find(mlp(), loaders()[0], start_lr=1e-4, end_lr=1e4, num_steps=100)
    assert len(result.lrs) < 100  # diverged before the end
    assert result.losses[-1] > 4 * min(result.losses) or not math.isfinite(result.raw_losses[-1])
    assert result.losses[-2] <= 4 * min(result.losses[:-1])  # and not earlier


def test_dict_batches_and_parameter_groups_keep_their_ratio():
    model = tiny_bert()
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": 1e-4}, {"params": model.classifier.parameters(), "lr": 1e-3}]
    )
    seen = []
    original_step = optimizer.step

    def step(*args, **kwargs):
        seen.append([group["lr"] for group in optimizer.param_groups])
        return original_step(*args, **kwargs)

    optimizer.step = step
    result = lr_find(model, token_loaders()[0], optimizer, num_steps=12, end_lr=1e-2)
    assert len(result.lrs) == 12  # 4 batches per pass: the loader was cycled
    assert all(body_lr == pytest.approx(head_lr / 10) for body_lr, head_lr in seen)
    assert [head_lr for _, head_lr in seen] == pytest.approx(result.lrs)
    assert [group["lr"] for group in optimizer.param_groups] == [1e-4, 1e-3]


def test_too_short_runs_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="too short"):
        lr_find(mlp(), loaders()[0], num_steps=3)
    # Starting far too high: the loss is non-finite or diverges within a few steps.
    with pytest.raises(ValueError, match="recorded only"):
        lr_find(mlp(), loaders()[0], start_lr=1e6, end_lr=1e9, num_steps=50, max_grad_norm=None)
    with pytest.raises(ValueError, match="start_lr"):
        lr_find(mlp(), loaders()[0], start_lr=1e-2, end_lr=1e-3)


def test_an_empty_loader_is_refused():
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 8)), 4)
    with pytest.raises(ValueError, match="no batches"):
        lr_find(mlp(), empty, num_steps=10)


def test_the_plot_shows_loss_against_lr_on_a_log_axis_with_the_pick_marked():
    from ftlab import plot

    result = lr_find(mlp(), loaders()[0], start_lr=1e-5, end_lr=10, num_steps=40)
    fig = plot.lr_find(result)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    raw, smoothed, dot = ax.lines[:3]
    assert (
        list(smoothed.get_ydata()) == result.losses and list(raw.get_ydata()) == result.raw_losses
    )
    assert list(dot.get_xdata()) == [result.suggestion]
    assert any(f"{result.suggestion:.1e}" in text.get_text() for text in ax.get_legend().texts)
