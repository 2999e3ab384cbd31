"""Checks of exercises/04_layer_freezing.ipynb: what to freeze, what the optimizer holds, lrs."""

from __future__ import annotations

import torch
from torch import nn

from ftlab.exercises.checks import Wrong, question
from ftlab.exercises.checks.tools import answer, are, attempt, call, count, tiny_bert, tiny_cnn


def expected_trainable(model: nn.Module, k: int | None = None, biases: bool = False) -> set[str]:
    """Return the parameter names that train: the head, the top k blocks, biases if asked.

    Blocks as in lesson 04 (ftlab.freeze): embeddings, each encoder layer (the top one with the
    pooler), the head (`classifier` or `fc`).
    """
    head = "classifier." if hasattr(model, "classifier") else "fc."
    names = [name for name, _ in model.named_parameters()]
    trainable = {name for name in names if name.startswith(head)}
    if biases:
        trainable |= {name for name in names if name.endswith(".bias")}
    if k:
        layers = len(model.bert.encoder.layer)
        top = tuple(f"bert.encoder.layer.{i}." for i in range(layers - k, layers))
        trainable |= {name for name in names if name.startswith((*top, "bert.pooler."))}
    return trainable


def block_depth(name: str, num_layers: int) -> int:
    """Return how many blocks below the head a BERT parameter sits (the head is depth 0)."""
    if name.startswith("classifier."):
        return 0
    if name.startswith("bert.pooler."):
        return 1  # with the top encoder layer, whose output it reads
    if name.startswith("bert.encoder.layer."):
        return num_layers - int(name.split(".")[3])
    return num_layers + 1  # bert.embeddings


def _compare_trainable(model: nn.Module, expected: set[str], label: str) -> None:
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    head = "classifier." if hasattr(model, "classifier") else "fc."
    frozen_head = sorted(n for n in expected - names if n.startswith(head))
    if frozen_head:
        raise Wrong(
            f"{count(frozen_head, 'parameter')} of the head {are(frozen_head)} frozen ({label})"
        )
    if expected - names:
        raise Wrong(f"{count(sorted(expected - names), 'parameter')} should train ({label})")
    if names - expected:
        extra = sorted(names - expected)
        raise Wrong(f"{count(extra, 'parameter')} {are(extra)} still trainable ({label})")


@question("04.q1", points=2)
def head_only(namespace: dict) -> str:
    function = answer(namespace, "freeze_all_but_head", "function")
    for model, label in ((tiny_bert(), "tiny BERT"), (tiny_cnn(), "small CNN with an fc head")):
        for start in (True, False):  # from all trainable, and from all frozen (head included)
            model.requires_grad_(start)
            call(function, model, what=f"freeze_all_but_head({label})")
            _compare_trainable(model, expected_trainable(model), label)
    return "only the head trains, on BERT and on a CNN"


@question("04.q2", points=1)
def frozen_prediction_recorded(namespace: dict) -> str:
    predicted = answer(namespace, "predicted_frozen_accuracy", "accuracy")
    return f"you predicted {predicted:g}"


@question("04.q2", points=1)
def frozen_gap_computed(namespace: dict) -> str:
    frozen = answer(namespace, "frozen_accuracy", "number")
    full = answer(namespace, "full_accuracy", "number")
    gap = answer(namespace, "gap", "number")
    if abs(gap - (full - frozen)) > 1e-9:
        raise Wrong(f"gap should be full_accuracy − frozen_accuracy = {full - frozen:.4f}")
    return f"frozen {frozen:.2f}, full {full:.2f}"


@question("04.q3", points=2)
def last_k_blocks(namespace: dict) -> str:
    function = answer(namespace, "unfreeze_last_k", "function")
    for k in (0, 1, 3):
        model = tiny_bert(num_layers=3)
        call(function, model, k, what=f"unfreeze_last_k(model, {k})")
        _compare_trainable(model, expected_trainable(model, k=k), f"k={k} of 3 layers")
    return "head plus the top k layers, for k = 0, 1, 3"


@question("04.q3", points=1)
def k_too_large_is_an_error(namespace: dict) -> str:
    function = answer(namespace, "unfreeze_last_k", "function")
    raised = attempt(function, tiny_bert(num_layers=3), 5)
    if raised is None:
        raise Wrong("unfreeze_last_k(model, 5) on a 3-layer model should raise a ValueError")
    if raised.not_implemented:
        raise Wrong("unfreeze_last_k still raises NotImplementedError")
    if raised.type != "ValueError":
        raise Wrong(f"k=5 raised {raised.type}; raise a ValueError instead")
    if "3" not in raised.message:
        raise Wrong(f"the error should say how many layers there are (3): {raised.message}")
    return f"ValueError: {raised.message}"


@question("04.q4", points=1)
def bitfit(namespace: dict) -> str:
    function = answer(namespace, "bias_only", "function")
    model = tiny_bert()
    call(function, model, what="bias_only(model)")
    _compare_trainable(model, expected_trainable(model, biases=True), "biases and the head")
    share = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{share} of {sum(p.numel() for p in model.parameters())} parameters train"


@question("04.q5", points=2)
def optimizer_holds_exactly_the_trainable(namespace: dict) -> str:
    function = answer(namespace, "make_optimizer", "function")
    model = tiny_bert()
    model.requires_grad_(False)
    model.classifier.requires_grad_(True)
    model.bert.encoder.layer[1].requires_grad_(True)
    optimizer = call(function, model, 1e-3, what="make_optimizer(model, lr=1e-3)")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise Wrong(f"make_optimizer should return a torch optimizer, not {optimizer!r:.60}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    frozen = [n for n, p in named.items() if not p.requires_grad and id(p) in held]
    left_out = [n for n, p in named.items() if p.requires_grad and id(p) not in held]
    if left_out:
        raise Wrong(
            f"{count(left_out, 'trainable parameter')} {are(left_out)} not in the optimizer"
        )
    if frozen:
        raise Wrong(
            f"the optimizer holds {count(frozen, 'frozen parameter')}: hand it only "
            "[p for p in model.parameters() if p.requires_grad]"
        )
    if any(abs(group["lr"] - 1e-3) > 1e-12 for group in optimizer.param_groups):
        raise Wrong("use the lr argument for every parameter group")
    return f"{len(held)} trainable tensors, no frozen ones"


@question("04.q6", points=3)
def layerwise_decay(namespace: dict) -> str:
    function = answer(namespace, "layerwise_lr_groups", "function")
    model = tiny_bert(num_layers=2)
    model.bert.embeddings.requires_grad_(False)  # frozen parameters belong in no group
    what = "layerwise_lr_groups(model, lr=1e-3, decay=0.5)"
    groups = call(function, model, lr=1e-3, decay=0.5, what=what)
    found = _lr_of_each_parameter(groups)
    named = dict(model.named_parameters())
    frozen = [n for n, p in named.items() if not p.requires_grad and id(p) in found]
    if frozen:
        raise Wrong(
            f"{count(frozen, 'frozen parameter')} {are(frozen)} in the groups: leave them out"
        )
    missing = [n for n, p in named.items() if p.requires_grad and id(p) not in found]
    if missing:
        raise Wrong(f"{count(missing, 'trainable parameter')} {are(missing)} in no group")
    for name, p in named.items():
        depth = block_depth(name, num_layers=2)
        wanted = 1e-3 * 0.5**depth
        if p.requires_grad and abs(found[id(p)] - wanted) > 1e-12:
            raise Wrong(
                f"{name} gets lr {found[id(p)]:g} but should get lr·decay^{depth} = {wanted:g} "
                f"({depth} blocks below the head)"
            )
    return "lr·decay^depth for every block, frozen parameters left out"


def _lr_of_each_parameter(groups) -> dict[int, float]:
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and "params" in g and "lr" in g for g in groups
    ):
        raise Wrong("return a list of parameter groups, dicts with 'params' and 'lr'")
    found = {}
    for group in groups:
        for p in group["params"]:
            if id(p) in found:
                raise Wrong("a parameter appears in two groups: give each parameter one lr")
            found[id(p)] = group["lr"]
    return found
