"""The smoke test: before a long run, check that the model can overfit one batch.

A model that is wired correctly drives the loss on a single repeated batch close to zero within
a few dozen steps. If it cannot, a long run will not fix it: a head that forward never calls,
parameters the optimizer does not hold, a learning rate far too low, or an output the loss
cannot read. `smoke_test` trains on one batch, lists which parameters got a gradient and which
the optimizer holds, says PASS or FAIL with the reasons, and then puts the model and the
optimizer back as they were. Taught in lesson 02.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ftlab.data.batches import to_device
from ftlab.training.lr_find import restored
from ftlab.training.step import compute_loss

TOLERANCE = 0.1  # the last losses (mean of 3) must fall below this share of the first


@dataclass
class SmokeReport:
    """What `smoke_test` saw: the losses, the parameters with and without gradients, a verdict."""

    losses: list[float]
    with_gradient: list[str]
    without_gradient: list[str]  # trainable, yet no gradient reached them
    in_optimizer: list[str]
    missing_from_optimizer: list[str]  # trainable, yet the optimizer does not hold them
    frozen_in_optimizer: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        trainable = len(self.with_gradient) + len(self.without_gradient)
        lines = [
            f"smoke test: {'PASS' if self.passed else 'FAIL'}",
            _losses_line(self.losses),
            f"  gradients: {len(self.with_gradient)} of {trainable} trainable parameters"
            + (f" (none reached {_some(self.without_gradient)})" if self.without_gradient else ""),
            f"  optimizer: holds {len(self.in_optimizer)} parameters"
            + (
                f"; missing {_some(self.missing_from_optimizer)}"
                if self.missing_from_optimizer
                else ""
            )
            + (f"; frozen {_some(self.frozen_in_optimizer)}" if self.frozen_in_optimizer else ""),
        ]
        return "\n".join(lines + [f"  problem: {problem}" for problem in self.problems])


def smoke_test(model, batch, optimizer=None, steps=30, lr=1e-4, verbose=True) -> SmokeReport:
    """Overfit one batch for `steps` steps; report gradients, optimizer and a verdict.

    `optimizer` is the one the real run will use (its learning rates included); without it,
    AdamW at `lr` over the trainable parameters. Passes when every trainable parameter gets a
    gradient and sits in the optimizer, and the loss falls below TOLERANCE of its first value.
    The model, the optimizer and the random states are restored afterwards. Taught in lesson 02.
    """
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = to_device(batch, next(model.parameters()).device)
    with restored(model, optimizer):
        report = _optimizer_lists(model, optimizer)
        _overfit(model, batch, optimizer, steps, report)
    report.problems += _problems(report)
    if verbose:
        print(report)
    return report


def _optimizer_lists(model, optimizer) -> SmokeReport:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = list(model.named_parameters())
    return SmokeReport(
        losses=[],
        with_gradient=[],
        without_gradient=[],
        in_optimizer=[n for n, p in named if id(p) in held],
        missing_from_optimizer=[n for n, p in named if p.requires_grad and id(p) not in held],
        frozen_in_optimizer=[n for n, p in named if not p.requires_grad and id(p) in held],
    )


def _overfit(model, batch, optimizer, steps, report: SmokeReport) -> None:
    model.train()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        try:
            loss = compute_loss(model, batch)
        except (TypeError, ValueError) as error:  # an output the loss cannot read
            report.problems.append(f"no loss could be computed: {error}")
            return
        loss.backward()
        if step == 0:
            trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            report.with_gradient = [n for n, p in trainable if p.grad is not None]
            report.without_gradient = [n for n, p in trainable if p.grad is None]
        optimizer.step()
        report.losses.append(loss.item())


def _problems(report: SmokeReport) -> list[str]:
    problems = []
    if report.without_gradient:
        problems.append(
            f"{len(report.without_gradient)} trainable parameters got no gradient: forward never "
            "uses them (a head that is never called, or a wrapper that is not the model trained)"
        )
    if report.missing_from_optimizer:
        problems.append("trainable parameters are not in the optimizer: they never change")
    if report.frozen_in_optimizer:
        problems.append("frozen parameters are in the optimizer: build it from the trainable ones")
    losses = report.losses
    final = sum(losses[-3:]) / len(losses[-3:]) if losses else None  # dropout makes it jump
    if losses and not final < TOLERANCE * losses[0]:
        problems.append(
            f"the loss did not fall near 0 on one repeated batch ({losses[0]:.3f} -> "
            f"{final:.3f}, needed < {TOLERANCE * losses[0]:.3f}): the learning rate is too "
            "low (or too high), the head is not trained, or the labels do not fit the outputs"
        )
    return problems


def _losses_line(losses: list[float]) -> str:
    if not losses:
        return "  loss: none computed"
    final = sum(losses[-3:]) / len(losses[-3:])
    return f"  loss on one batch: {losses[0]:.3f} -> {final:.3f} in {len(losses)} steps"


def _some(names: list[str], shown: int = 3) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
