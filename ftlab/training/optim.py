"""The optimizer and schedule of lesson 02's loop: AdamW's parameter groups, fused AdamW, schedules.

`fit` builds its default optimizer and schedule here; lessons 03 and 04 build their own
parameter groups with `decay_groups`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def default_optimizer(model, lr: float, weight_decay: float, device) -> torch.optim.AdamW:
    """Return AdamW over the trainable parameters; biases and norm weights get no weight decay.

    Fused on CPU and CUDA. Taught in lesson 02.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters: unfreeze at least the head")
    groups = decay_groups(trainable, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, fused=fused_adamw(device))


def decay_groups(params_or_groups, weight_decay: float) -> list[dict]:
    """Split parameters (or parameter groups) for AdamW: decay on matrices, none on vectors.

    Taught in lesson 02: weight matrices, embeddings and kernels (ndim >= 2) get `weight_decay`;
    biases and norm weights (1-D) get none. Each given group keeps its other keys (its "lr");
    a group's own "weight_decay" is kept for its matrices. Empty groups are left out.
    """
    items = list(params_or_groups)
    groups = items if items and isinstance(items[0], Mapping) else [{"params": items}]
    split = []
    for group in groups:
        params, rest = list(group["params"]), {k: v for k, v in group.items() if k != "params"}
        decay = rest.pop("weight_decay", weight_decay)
        split += [
            {**rest, "params": [p for p in params if p.ndim >= 2], "weight_decay": decay},
            {**rest, "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
    return [group for group in split if group["params"]]


def fused_adamw(device) -> bool:
    """Whether AdamW can run `fused=True` on `device`: on the CPU and CUDA. Taught in lesson 02.

    Fused, one kernel updates every parameter instead of one small computation per tensor.
    """
    return torch.device(device).type in ("cpu", "cuda")


def make_scheduler(optimizer, name: str | None, total_steps: int, warmup_ratio: float = 0.0):
    """Return a per-step schedule: "linear" or "cosine" decay after warm-up, "onecycle", or None.

    None keeps the learning rate constant (after the warm-up, if any). Taught in lesson 02.
    """
    warmup_steps = int(warmup_ratio * total_steps)
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        pct_start = warmup_ratio or 0.3
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr, total_steps, pct_start=pct_start
        )
    shapes = {
        "linear": lambda progress: max(0.0, 1.0 - progress),
        "cosine": lambda progress: max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress))),
        None: lambda progress: 1.0,
    }
    if name not in shapes:
        raise ValueError(f"scheduler must be 'linear', 'cosine', 'onecycle' or None, got {name!r}")

    def factor(step: int) -> float:  # multiplies each group's lr
        if step < warmup_steps:
            return step / warmup_steps
        return shapes[name]((step - warmup_steps) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
