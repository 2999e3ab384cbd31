"""fit's step strategy: `fit(step=...)` starts the step once, then calls it on every batch."""

import pytest
import torch
from tiny_models import loaders, mlp, one_thread  # noqa: F401 (autouse fixture)

from ftlab.training.loop import EagerStep, fit

QUIET = {"progress": False, "device": "cpu", "lr": 1e-2, "num_epochs": 2, "seed": 0}


class CountingStep(EagerStep):
    """Lesson 02's step, counting how fit uses it."""

    def __init__(self):
        self.started, self.syncs = 0, []

    def start(self, state, loop):
        super().start(state, loop)
        self.started += 1

    def __call__(self, state, batch, sync):
        self.syncs.append(sync)
        return super().__call__(state, batch, sync)


def test_fit_starts_the_given_step_once_and_calls_it_on_every_batch():
    train_dl, _ = loaders(shuffle=False)
    counting, default = mlp(), mlp()
    step = CountingStep()
    fit(counting, train_dl, grad_accum_steps=2, step=step, **QUIET)
    fit(default, train_dl, grad_accum_steps=2, **QUIET)  # fit's own EagerStep
    assert step.started == 1 and len(step.syncs) == 2 * len(train_dl)
    assert step.syncs[:4] == [False, True, False, True]  # the optimizer steps every 2 batches
    for a, b in zip(counting.parameters(), default.parameters(), strict=True):
        assert torch.equal(a, b)


class Refusing(EagerStep):
    def start(self, state, loop):
        raise ValueError("this run cannot use this step")


def test_a_step_that_refuses_the_run_stops_fit_before_any_training():
    model, (train_dl, _) = mlp(), loaders()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="cannot use this step"):
        fit(model, train_dl, step=Refusing(), **QUIET)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
