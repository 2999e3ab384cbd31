"""LoRA by hand: train a low-rank update beside each frozen weight, then merge it away.

Low-rank adaptation (Hu et al. 2021) keeps a pretrained weight W (out, in) frozen and learns
its change as a product of two thin matrices: W x + (alpha / r) · B A x, with A (r, in) and
B (out, r). A starts random and B at zero, so B A = 0 and the wrapped model computes exactly
what the pretrained one did until the first step. After training, W + (alpha / r) · B A is one
ordinary matrix again: the merged model has no extra modules and no extra cost at inference.
The names follow 🤗 PEFT's (`lora_A`, `lora_B`, `scaling`, `modules_to_save`), so that what is
written here maps onto its `LoraConfig` one to one. Taught in lesson 05.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LoRALinear", "add_lora", "merge_lora", "lora_modules"]


class LoRALinear(nn.Module):
    """An `nn.Linear` with a trainable low-rank update: W x + b + (alpha / r) · B A x.

    `base` keeps the pretrained layer (frozen); `lora_A` (r, in) is initialised like PEFT's
    (Kaiming-uniform), `lora_B` (out, r) at zero, so the output starts equal to `base`'s.
    Taught in lesson 05.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16):
        super().__init__()
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"the rank r must be a positive integer, got {r!r}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        weight = base.weight  # (out, in)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what PEFT does
        self.to(weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x @ self.lora_A.T) @ self.lora_B.T  # (..., in) -> (..., r) -> (..., out)
        return self.base(x) + self.scaling * update

    def merged(self) -> nn.Linear:
        """Return a plain `nn.Linear` holding W + (alpha / r) · B A: the same outputs."""
        base = self.base
        merged = nn.Linear(base.in_features, base.out_features, base.bias is not None)
        merged.to(device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(base.weight + self.scaling * self.lora_B @ self.lora_A)
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        return merged.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}"


def add_lora(
    model: nn.Module,
    targets: Sequence[str] = ("query", "value"),
    r: int = 8,
    alpha: float = 16,
    modules_to_save: Sequence[str] = ("classifier",),
) -> nn.Module:
    """Freeze `model`, wrap each `nn.Linear` named in `targets` in a `LoRALinear`; return it.

    A target matches a module whose name ends with it ("query" matches
    `bert.encoder.layer.0.attention.self.query`). `modules_to_save` name modules that train in
    full beside the adapters: a new classification head must, or it stays at its random
    initialisation. A name that matches nothing is an error. Taught in lesson 05.
    """
    model.requires_grad_(False)
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _matches(name, targets)
    ]
    if not found:
        raise ValueError(f"no nn.Linear in {type(model).__name__} is named {list(targets)}")
    for name, module in found:
        _replace(model, name, LoRALinear(module, r, alpha))
    for target in modules_to_save:
        saved = [m for n, m in model.named_modules() if _matches(n, [target])]
        if not saved:
            raise ValueError(f"modules_to_save: no module of {type(model).__name__} is {target!r}")
        for module in saved:
            module.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` by its merged `nn.Linear`, in place; return the model.

    Taught in lesson 05.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _replace(model, name, module.merged())
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Return the model's `LoRALinear` modules by name. Taught in lesson 05."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == target or name.endswith(f".{target}") for target in targets)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
