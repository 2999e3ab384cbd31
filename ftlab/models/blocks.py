"""A model as an ordered list of blocks, found from its structure. Taught in lesson 04.

The stem first (BERT's embeddings, ResNet's conv1 + bn1, timm's conv_stem + bn1), then each
element of the model's one layer stack (BERT's encoder.layer[i], timm's blocks[i]) or each stage
when there are several (ResNet's layer1..layer4), and the head (the model's last child with
parameters) last. Modules after the stack (BERT's pooler, timm's conv_head + bn2) go with the top
block, since they read its output. `blocks(model, override=[...])` lists them yourself.

Patterns are globs (`fnmatch`: `*` also crosses dots) matched against parameter names and the
names of the modules that contain them: "classifier", "bert.encoder.layer.5", "*.bias".
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Block:
    """One block of a model: a name, the modules it holds, and its parameter names in order."""

    name: str
    modules: tuple[str, ...]
    parameter_names: tuple[str, ...]

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Return this block's parameters in `model`."""
        named = dict(model.named_parameters())
        return [named[name] for name in self.parameter_names]


def blocks(model: nn.Module, override: Sequence | None = None) -> list[Block]:
    """Return the model's blocks in order, stem first and head last. Taught in lesson 04.

    `override` lists the blocks yourself, bottom to top with the head last: each entry a glob
    pattern or a list of patterns, e.g. `["embed*", "layers.0", "layers.1", "out"]`.
    """
    if override is not None:
        return _blocks_from_patterns(model, override)
    children = _parameterised_children("", model)
    if not children:
        raise ValueError(f"{type(model).__name__} has no parameters, so it has no blocks")
    *trunk, head = children
    direct = [name for name, _ in model.named_parameters(recurse=False)]
    while len(trunk) == 1 and _find_stack(*trunk[0]) is None and _parameterised_children(*trunk[0]):
        name, module = trunk[0]  # a wrapper such as BertModel inside BertForSequenceClassification
        direct += [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        trunk = _parameterised_children(name, module)
    found = [_block(model, group) for group in _group_trunk(trunk)]
    if direct:
        stem = found[0] if found else Block("", (), ())
        found[:1] = [
            Block(stem.name or "direct", stem.modules, tuple(direct) + stem.parameter_names)
        ]
    return found + [_block(model, [head])]


def match_parameters(model: nn.Module, patterns: list[str]) -> list[str]:
    """Return the parameter names matching any pattern; raise if a pattern matches nothing."""
    names = [name for name, _ in model.named_parameters()]
    matched = []
    for pattern in patterns:
        hits = [name for name in names if _matches(name, pattern)]
        if not hits:
            modules = [name for name, _ in model.named_modules() if name]
            close = difflib.get_close_matches(pattern, names + modules, n=5, cutoff=0.0)
            raise ValueError(
                f"pattern {pattern!r} matches no parameter of {type(model).__name__}. Patterns are "
                f"globs on parameter or module names; closest names: {close}"
            )
        matched += [name for name in hits if name not in matched]
    return matched


def _matches(name: str, pattern: str) -> bool:
    """True if the glob matches the parameter name or a module that contains it."""
    parts = name.split(".")
    prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)


def resolve_blocks(model: nn.Module, given: Sequence | None) -> list[Block]:
    """Blocks as given (Block objects or patterns), or found from the structure if None."""
    if given is None:
        return blocks(model)
    if all(isinstance(block, Block) for block in given):
        return list(given)
    return blocks(model, override=given)


def _blocks_from_patterns(model: nn.Module, override: Sequence) -> list[Block]:
    if isinstance(override, str) or len(override) < 1:
        raise ValueError("override must be a list of blocks (patterns), bottom to top, head last")
    found, seen = [], {}
    for entry in override:
        patterns = [entry] if isinstance(entry, str) else list(entry)
        names = match_parameters(model, patterns)
        twice = [name for name in names if name in seen]
        if twice:
            raise ValueError(f"{twice[0]!r} is in block {seen[twice[0]]!r} and in {patterns}")
        block_name = " + ".join(patterns)
        seen.update(dict.fromkeys(names, block_name))
        found.append(Block(block_name, tuple(patterns), tuple(names)))
    return found


def _parameterised_children(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return (qualified name, child) for each direct child holding parameters."""
    return [
        (f"{prefix}.{name}" if prefix else name, child)
        for name, child in module.named_children()
        if any(True for _ in child.parameters())
    ]


def _find_stack(name: str, module: nn.Module) -> tuple[str, nn.Module] | None:
    """Return the layer stack (ModuleList/Sequential of 2+ blocks) at or just inside `module`."""
    while True:
        children = _parameterised_children(name, module)
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(children) >= 2:
            return name, module
        if len(children) != 1 or any(True for _ in module.parameters(recurse=False)):
            return None
        name, module = children[0]  # e.g. BertEncoder -> its ModuleList `layer`


def _group_trunk(trunk: list[tuple[str, nn.Module]]) -> list[list[tuple[str, nn.Module]]]:
    """Split the modules below the head into blocks (see the module docstring)."""
    stacks = [_find_stack(name, module) for name, module in trunk]
    expand = sum(stack is not None for stack in stacks) == 1
    groups, run, after_stack = [], [], False
    for (name, module), stack in zip(trunk, stacks, strict=True):
        if stack is None:
            run.append((name, module))
            continue
        if run:
            groups.append(run)
        run, after_stack = [], True
        if expand:
            groups += [[child] for child in _parameterised_children(*stack)]
        else:
            groups.append([(name, module)])  # one of several stages, e.g. ResNet's layer2
    if run and after_stack:
        groups[-1] = groups[-1] + run  # pooler / conv_head read the top block's output
    elif run:
        groups.append(run)
    return groups


def _block(model: nn.Module, group: list[tuple[str, nn.Module]]) -> Block:
    modules = tuple(name for name, _ in group)
    parameter_names = tuple(
        parameter_name
        for name, module in group
        for parameter_name, _ in module.named_parameters(prefix=name)
    )
    return Block(" + ".join(modules), modules, parameter_names)
