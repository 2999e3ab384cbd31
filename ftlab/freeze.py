"""Choose what to train: freeze by name pattern or by depth, in any model, with one API.

A model is seen as an ordered list of blocks, found from its structure rather than
hard-coded per architecture (`ftlab.models.blocks`): stem first, head last; `blocks=`
overrides this.
Patterns are globs matched against parameter names and the names of the modules that contain
them: "classifier", "bert.encoder.layer.5", "*.bias".

Freezing sets `requires_grad`; it leaves BatchNorm running statistics alone (they still update in
train mode). Taught in lesson 04.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from ftlab.models.blocks import match_parameters, resolve_blocks
from ftlab.training.optim import decay_groups

__all__ = [
    "freeze", "unfreeze", "head_only", "last_k", "bias_only", "full",
    "GradualUnfreezing", "layerwise_lr_groups", "discriminative_lr_groups", "TrainableReport",
    "trainable_report",
]  # fmt: skip


def freeze(model: nn.Module, pattern: str | Iterable[str]) -> list[str]:
    """Freeze the parameters matching a glob pattern (or any of several); return their names.

    Taught in lesson 04.
    """
    return _set_requires_grad(model, pattern, False)


def unfreeze(model: nn.Module, pattern: str | Iterable[str]) -> list[str]:
    """Unfreeze the parameters matching a glob pattern (or any of several); return their names.

    Taught in lesson 04.
    """
    return _set_requires_grad(model, pattern, True)


def head_only(model: nn.Module, blocks: Sequence | None = None) -> nn.Module:
    """Freeze everything except the head (the last block). Taught in lesson 04."""
    return last_k(model, 0, blocks=blocks)


def last_k(model: nn.Module, k: int, blocks: Sequence | None = None) -> nn.Module:
    """Train the head and the top `k` blocks below it; freeze the rest. Taught in lesson 04."""
    found = resolve_blocks(model, blocks)
    below_head = len(found) - 1
    if not isinstance(k, int) or not 0 <= k <= below_head:
        names = ", ".join(block.name for block in found[:-1])
        raise ValueError(
            f"k must be an integer from 0 to {below_head}: {type(model).__name__} has {below_head} "
            f"blocks below its head ({names}); got k={k!r}"
        )
    model.requires_grad_(False)
    for block in found[len(found) - 1 - k :]:
        for parameter in block.parameters(model):
            parameter.requires_grad_(True)
    return model


def bias_only(model: nn.Module, blocks: Sequence | None = None) -> nn.Module:
    """Train only the bias terms and the head (BitFit, Ben Zaken et al. 2022).

    Taught in lesson 04.
    """
    head_only(model, blocks=blocks)
    _set_requires_grad(model, "*.bias", True)
    return model


def full(model: nn.Module) -> nn.Module:
    """Unfreeze every parameter (full fine-tuning). Taught in lesson 04."""
    return model.requires_grad_(True)


class GradualUnfreezing:
    """An `ftlab.fit` callback: train the head, then unfreeze one more block per epoch, top first.

    Epoch 0 trains the head only, epoch e the head and the top e blocks (ULMFiT, Howard & Ruder
    2018). With `every_steps=N` a block is added every N optimizer steps instead, for short runs.
    Parameters that become trainable but are missing from the optimizer (you froze before `fit`
    built it) join it as new groups with the first group's lr, schedule and weight decay (none on
    biases and norms); `fit`'s default optimizer, built before this callback freezes, already
    holds them all, and AdamW skips a parameter while its grad is None. Newly unfrozen BatchNorm
    layers are put back in train mode. Taught in lesson 04.
    """

    def __init__(self, blocks: Sequence | None = None, every_steps: int | None = None):
        if every_steps is not None and (not isinstance(every_steps, int) or every_steps < 1):
            raise ValueError(f"every_steps must be a positive integer or None, got {every_steps!r}")
        self.blocks, self.every_steps = blocks, every_steps
        self.unfrozen: list[int] = []  # blocks below the head that train, after each change

    def on_train_start(self, state) -> None:
        """Freeze everything but the head before the first step."""
        self._found = resolve_blocks(state.model, self.blocks)
        self._apply(state, 0)

    def on_epoch_start(self, state) -> None:
        """Unfreeze the top `epoch` blocks (epoch counts from 0)."""
        if self.every_steps is None:
            self._apply(state, state.epoch)

    def on_step_end(self, state) -> None:
        """With `every_steps`, unfreeze one more block every `every_steps` steps."""
        if self.every_steps is not None and state.step % self.every_steps == 0:
            self._apply(state, state.step // self.every_steps)

    def _apply(self, state, k: int) -> None:
        k = min(k, len(self._found) - 1)
        if self.unfrozen and self.unfrozen[-1] == k:
            return
        last_k(state.model, k, blocks=self._found)
        _add_missing_to_optimizer(state.model, state.optimizer, getattr(state, "scheduler", None))
        for module in state.model.modules():  # a BatchNorm that trains again leaves eval mode
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and _counts(module)[0]:
                module.train(state.model.training)
        self.unfrozen.append(k)


def layerwise_lr_groups(
    model: nn.Module, lr: float, decay: float, blocks: Sequence | None = None
) -> list[dict]:
    """Return optimizer parameter groups: the head at `lr`, each block below at lr·decay^depth.

    Depth counts blocks below the head (the top block has depth 1). Only trainable parameters
    are included, each once; empty groups are left out. Taught in lesson 04.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}; 1 means the same lr everywhere")
    found = resolve_blocks(model, blocks)
    lrs = [lr * decay ** (len(found) - 1 - index) for index in range(len(found))]
    return discriminative_lr_groups(model, lrs, blocks=found)


def discriminative_lr_groups(
    model: nn.Module, lrs: Sequence[float] | dict[str, float], blocks: Sequence | None = None
) -> list[dict]:
    """Return parameter groups with an explicit lr per block (a list bottom to top, or a dict).

    Each group is `{"params", "lr", "name"}`; only trainable parameters, each once; a trainable
    parameter outside every block is an error. Taught in lesson 04.
    """
    found = resolve_blocks(model, blocks)
    names = [block.name for block in found]
    if isinstance(lrs, dict):
        unknown = sorted(set(lrs) - set(names))
        if unknown or len(lrs) != len(found):
            raise ValueError(f"lrs must give one lr for each block {names}; got keys {list(lrs)}")
        lrs = [lrs[name] for name in names]
    if len(lrs) != len(found):
        raise ValueError(f"got {len(lrs)} lrs for {len(found)} blocks {names}: give one per block")
    named = dict(model.named_parameters())
    groups = []
    for block, lr in zip(found, lrs, strict=True):
        params = [named[n] for n in block.parameter_names if named[n].requires_grad]
        if params:
            groups.append({"params": params, "lr": lr, "name": block.name})
    covered = {n for block in found for n in block.parameter_names}
    left_out = [n for n, p in named.items() if p.requires_grad and n not in covered]
    if left_out:
        raise ValueError(
            f"trainable parameters outside every block would not train: {left_out[:5]}"
        )
    return groups


@dataclass
class TrainableReport:
    """Per block, trainable and total parameters; prints as a table. Taught in lesson 04."""

    rows: list[tuple[str, int, int]]  # (block, trainable, total)

    @property
    def trainable(self) -> int:
        """Return the number of trainable parameters."""
        return sum(row[1] for row in self.rows)

    @property
    def total(self) -> int:
        """Return the number of parameters."""
        return sum(row[2] for row in self.rows)

    @property
    def adamw_state_bytes(self) -> int:
        """Return AdamW's state size in fp32: two moments per trainable parameter, 4 bytes each."""
        return 2 * self.trainable * 4

    def __repr__(self) -> str:
        width = max([len("block")] + [len(row[0]) for row in self.rows])
        lines = [f"{'block':<{width}}  {'trainable':>11}  {'total':>11}"]
        for name, trainable, total in self.rows + [("total", self.trainable, self.total)]:
            lines.append(f"{name:<{width}}  {trainable:>11,}  {total:>11,}")
        share = self.trainable / max(self.total, 1)
        lines.append(
            f"trainable share {share:.2%}, AdamW state {self.adamw_state_bytes / 2**20:.1f} MiB"
        )
        return "\n".join(lines)


def trainable_report(model: nn.Module, blocks: Sequence | None = None) -> TrainableReport:
    """Return, per block, the trainable and total parameter counts. Taught in lesson 04."""
    found = resolve_blocks(model, blocks)
    named = dict(model.named_parameters())
    rows = [(block.name, *_counts([named[n] for n in block.parameter_names])) for block in found]
    covered = {n for block in found for n in block.parameter_names}
    rest = [p for n, p in named.items() if n not in covered]
    if rest:
        rows.append(("(outside blocks)", *_counts(rest)))
    return TrainableReport(rows)


def _counts(params: list[nn.Parameter] | nn.Module) -> tuple[int, int]:
    """Return (trainable, total) numbers of parameters of a list or a module."""
    params = list(params.parameters()) if isinstance(params, nn.Module) else params
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _set_requires_grad(model: nn.Module, pattern: str | Iterable[str], value: bool) -> list[str]:
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    matched = match_parameters(model, patterns)
    named = dict(model.named_parameters())
    for name in matched:
        named[name].requires_grad_(value)
    return matched


def _add_missing_to_optimizer(model: nn.Module, optimizer, scheduler=None) -> None:
    """Add trainable parameters the optimizer lacks, following its first group's settings."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in model.parameters() if p.requires_grad and id(p) not in held]
    if not missing:
        return
    settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    # biases and norm weights get no weight decay (lesson 02)
    for group in decay_groups([{**settings, "params": missing}], 0.0):
        optimizer.add_param_group(group)
        if hasattr(scheduler, "base_lrs"):  # LambdaLR and friends keep one base lr per group
            scheduler.base_lrs.append(scheduler.base_lrs[0])
        if hasattr(scheduler, "lr_lambdas"):
            scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
