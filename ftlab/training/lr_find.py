"""The learning-rate range test: the loss against an exponentially growing learning rate.

Train for `num_steps` mini-batches while the learning rate grows from `start_lr` to `end_lr`
by the same factor each step (Smith, "Cyclical Learning Rates for Training Neural Networks",
2017; fastai's `lr_find` is the version most people know). At a tiny rate the loss does not
move; at a good rate it falls fast; at too high a rate it blows up. The test stops once the
smoothed loss exceeds `diverge_factor` times its minimum, and then puts the model and the
optimizer back exactly as they were: it only measures.

The suggestion is the rate where the smoothed loss falls steepest (per unit of log lr) before
its minimum: there a step of that size still lowers the loss fastest, while the minimum itself
sits at the edge of divergence. `result.min_lr / 10` is the other common rule, more cautious.
Taught in lesson 02.
"""

from __future__ import annotations

import copy
import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ftlab.data.batches import to_device
from ftlab.training.step import compute_loss

MIN_POINTS = 8  # fewer recorded steps cannot show a descent and a minimum


@dataclass
class LRFindResult:
    """What the range test measured: one learning rate and one smoothed loss per step."""

    lrs: list[float]
    losses: list[float]  # smoothed (exponential moving average, bias-corrected)
    raw_losses: list[float]
    suggestion: float  # steepest descent of the smoothed loss, before its minimum
    min_lr: float  # the learning rate at the smoothed loss's minimum
    rule: str = "steepest descent of the smoothed loss before its minimum"

    def __repr__(self) -> str:
        return (
            f"LRFindResult({len(self.lrs)} steps, lr {self.lrs[0]:.1e} to {self.lrs[-1]:.1e}; "
            f"suggestion {self.suggestion:.1e} ({self.rule}); minimum at {self.min_lr:.1e})"
        )


def lr_find(
    model, train_dl, optimizer=None, *, start_lr=1e-7, end_lr=10.0, num_steps=100,
    smoothing=0.9, diverge_factor=4.0, max_grad_norm=1.0, device=None,
) -> LRFindResult:  # fmt: skip
    """Run the learning-rate range test on `model`, then restore it. Taught in lesson 02.

    `optimizer` defaults to AdamW over the trainable parameters. With several parameter groups,
    every group's rate is scaled by the same factor (their ratios are kept) and the rate
    recorded is the largest group's. Batches are dicts with "labels" or (inputs, labels) pairs;
    `train_dl` is cycled if it has fewer than `num_steps` batches.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if num_steps < MIN_POINTS:
        raise ValueError(
            f"num_steps={num_steps} is too short for a range test: it needs at least {MIN_POINTS} "
            "steps to show the loss falling and then rising (100 is usual)"
        )
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=start_lr)
    device = device or next(model.parameters()).device
    factor = (end_lr / start_lr) ** (1 / (num_steps - 1))
    with restored(model, optimizer, train_dl):
        lrs, raw_losses = _sweep(
            model, train_dl, optimizer, start_lr, factor, num_steps, smoothing, diverge_factor,
            max_grad_norm, device,
        )  # fmt: skip
    return _result(lrs, raw_losses, smoothing)


@contextmanager
def restored(model, optimizer, train_dl=None):
    """Afterwards, put weights, buffers, gradients, optimizer state, modes and RNGs back.

    Used by `lr_find` and the smoke test, which train only to measure. The random states are
    those of torch (CPU and CUDA) and of the loader's own generator, if it has one.
    """
    generator = getattr(train_dl, "generator", None)  # a seeded loader's shuffle
    generator_state = generator.get_state() if generator is not None else None
    model_state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    grads = {p: None if p.grad is None else p.grad.clone() for p in model.parameters()}
    modes = {module: module.training for module in model.modules()}
    devices = list(range(torch.cuda.device_count()))
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        for p, grad in grads.items():
            p.grad = grad
        for module, training in modes.items():
            module.training = training
        if generator is not None:
            generator.set_state(generator_state)


def _sweep(model, train_dl, optimizer, start_lr, factor, num_steps, smoothing, diverge_factor,
           max_grad_norm, device):  # fmt: skip
    """Train one batch per step at a growing rate; stop at num_steps or on divergence."""
    peaks = [group["lr"] for group in optimizer.param_groups]
    shares = [peak / max(peaks) if max(peaks) > 0 else 1.0 for peak in peaks]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    lrs, raw_losses, smoothed, best = [], [], 0.0, math.inf
    for step, batch in enumerate(itertools.islice(_cycle(train_dl), num_steps)):
        lr = start_lr * factor**step
        for group, share in zip(optimizer.param_groups, shares, strict=True):
            group["lr"] = lr * share
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(model, to_device(batch, device))
        if not torch.isfinite(loss):
            break
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        lrs.append(lr)
        raw_losses.append(loss.item())
        smoothed = smoothing * smoothed + (1 - smoothing) * raw_losses[-1]
        current = smoothed / (1 - smoothing ** (step + 1))  # bias-corrected average
        best = min(best, current)
        if current > diverge_factor * best:
            break
    return lrs, raw_losses


def _result(lrs, raw_losses, smoothing) -> LRFindResult:
    if len(lrs) < MIN_POINTS:
        raise ValueError(
            f"the range test recorded only {len(lrs)} steps before the loss diverged or the data "
            f"ran out (at least {MIN_POINTS} are needed): lower start_lr, or check the loss on "
            "one batch first (ftlab.smoke_test)"
        )
    losses = _smooth(raw_losses, smoothing)
    lowest = min(range(len(losses)), key=losses.__getitem__)
    suggestion, rule = _steepest(lrs, losses, lowest)
    return LRFindResult(lrs, losses, raw_losses, suggestion, lrs[lowest], rule)


def _steepest(lrs, losses, lowest) -> tuple[float, str]:
    """The rate of steepest descent before the minimum; min/10 if there is no descent."""
    log_lrs = [math.log10(lr) for lr in lrs]
    slopes = [
        (losses[i + 1] - losses[i - 1]) / (log_lrs[i + 1] - log_lrs[i - 1])
        for i in range(1, lowest)  # central differences, strictly inside the descent
    ]
    if not slopes or min(slopes) >= 0:
        return lrs[lowest] / 10, "the minimum's learning rate / 10 (the loss never fell)"
    steepest = 1 + min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[steepest], "steepest descent of the smoothed loss before its minimum"


def _smooth(values, smoothing) -> list[float]:
    average, smoothed = 0.0, []
    for step, value in enumerate(values):
        average = smoothing * average + (1 - smoothing) * value
        smoothed.append(average / (1 - smoothing ** (step + 1)))
    return smoothed


def _cycle(train_dl):
    """Yield batches forever, restarting the loader; refuse one that yields nothing."""
    while True:
        empty = True
        for batch in train_dl:
            empty = False
            yield batch
        if empty:
            raise ValueError("train_dl yields no batches: nothing to run a range test on")
