"""Checks of exercises/05_parameter_efficient_lora.ipynb: LoRA's forward, start, count, merge."""

from __future__ import annotations

import warnings

import torch

from ftlab.exercises.checks import Wrong, question
from ftlab.exercises.checks.tools import (
    answer,
    as_number,
    call,
    close,
    collect,
    live,
    tiny_bert,
)
from ftlab.exercises.serve import probe

RANKS = (1, 2, 4, 8)


def _lora_inputs(seed: int = 0):
    """Return x (batch, in), W (out, in), b (out,), A (r, in), B (out, r), alpha, r."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return randn(5, 6), randn(4, 6), randn(4), randn(3, 6), randn(4, 3), 6.0, 3


@question("05.q1", points=2)
def lora_forward(namespace: dict) -> str:
    function = answer(namespace, "lora_forward", "function")
    x, weight, bias, a, b, alpha, r = _lora_inputs()
    what = "lora_forward(x, weight, bias, A, B, alpha, r)"
    output = call(function, x, weight, bias, a, b, alpha, r, what=what)
    expected = x @ weight.T + bias + (alpha / r) * (x @ a.T @ b.T)  # (batch, out)
    if isinstance(output, torch.Tensor) and output.shape == expected.shape:
        if torch.allclose(output, expected - bias, atol=1e-4):
            raise Wrong("the bias b is missing: the frozen layer computes W x + b")
        if torch.allclose(output, x @ weight.T + bias + x @ a.T @ b.T, atol=1e-4):
            raise Wrong("the update is not scaled: multiply B A x by alpha / r")
        if torch.allclose(output, x @ weight.T + bias + alpha * r * (x @ a.T @ b.T), atol=1e-3):
            raise Wrong("the scale is alpha / r, not alpha · r")
    close(output, expected, what, atol=1e-4)
    return "W x + b + (alpha / r) · B A x, batched"


@question("05.q2", points=2)
def lora_start(namespace: dict) -> str:
    function = answer(namespace, "init_lora", "function")
    torch.manual_seed(0)
    found = call(function, 6, 4, 3, what="init_lora(in_features=6, out_features=4, r=3)")
    if not (isinstance(found, tuple) and len(found) == 2):
        raise Wrong("init_lora should return a pair (A, B)")
    a, b = found
    for name, value, shape in (("A", a, (3, 6)), ("B", b, (4, 3))):
        if not isinstance(value, torch.Tensor):
            raise Wrong(f"{name} should be a tensor, but it is a {type(value).__name__}")
        if tuple(value.shape) != shape:
            raise Wrong(f"{name} has shape {tuple(value.shape)} but should have {shape}: "
                        "A is (r, in_features), B is (out_features, r)")  # fmt: skip
    if b.abs().sum() > 0:
        raise Wrong("B is not zero, so B A ≠ 0 and the model changes before the first step: "
                    "start B at zero")  # fmt: skip
    if a.abs().sum() == 0:
        raise Wrong("A is zero too: with A = B = 0 both get zero gradients and nothing ever "
                    "trains. Start A random (e.g. nn.init.kaiming_uniform_)")  # fmt: skip
    if not (a.requires_grad and b.requires_grad):
        raise Wrong("A and B must train: make them nn.Parameter (or set requires_grad=True)")
    return "A random (r, in), B zero (out, r): B A = 0 at step 0"


def expected_count(hidden_size: int, num_layers: int, r: int, num_labels: int) -> int:
    """LoRA on query and value (hidden × hidden each) in every layer, plus the new head."""
    return num_layers * 2 * r * (hidden_size + hidden_size) + hidden_size * num_labels + num_labels


@question("05.q3", points=1)
def count_parameters(namespace: dict) -> str:
    function = answer(namespace, "count_lora_parameters", "function")
    for hidden_size, num_layers, r, num_labels in ((768, 12, 8, 2), (16, 2, 4, 3), (384, 6, 1, 2)):
        what = f"count_lora_parameters({hidden_size}, {num_layers}, {r}, {num_labels})"
        found = as_number(call(function, hidden_size, num_layers, r, num_labels, what=what), what)
        right = expected_count(hidden_size, num_layers, r, num_labels)
        head = hidden_size * num_labels + num_labels
        if found == right:
            continue
        if found == right - head:
            raise Wrong(f"{what} is {found:g}: the new head's {head} parameters train too")
        if found == right - num_layers * 2 * r * hidden_size:
            raise Wrong(f"{what} is {found:g}: count both A (r × in) and B (out × r)")
        raise Wrong(f"{what} is {found:g} but should be {right}: per layer, query and value "
                    "each add r·(in + out); then the head")  # fmt: skip
    return f"{expected_count(768, 12, 8, 2):,} for BERT-base at r = 8"


@question("05.q4", points=2)
def merge(namespace: dict) -> str:
    function = answer(namespace, "merge_weight", "function")
    x, weight, bias, a, b, alpha, r = _lora_inputs(seed=1)
    what = "merge_weight(weight, A, B, alpha, r)"
    merged = call(function, weight.clone(), a, b, alpha, r, what=what)
    expected = weight + (alpha / r) * b @ a  # (out, in)
    if isinstance(merged, torch.Tensor) and merged.shape == expected.shape:
        if torch.allclose(merged, (alpha / r) * b @ a, atol=1e-4):
            raise Wrong("the merged weight is W + (alpha / r) · B A: you left out W")
        if torch.allclose(merged, weight + b @ a, atol=1e-4):
            raise Wrong("scale the update: W + (alpha / r) · B A")
    close(merged, expected, what, atol=1e-4)
    unmerged = x @ weight.T + (alpha / r) * (x @ a.T @ b.T)
    close(x @ merged.T, unmerged, "the merged layer's output", atol=1e-4)
    return "one matrix, the same outputs as W x + (alpha / r) · B A x"


@probe
def peft_trainable(config) -> dict:
    """In the student's kernel: what a PEFT model built from their config trains."""
    from peft import LoraConfig, get_peft_model

    if not isinstance(config, LoraConfig):
        return {"type": type(config).__name__, "trainable": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(tiny_bert(), config)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    return {"type": "LoraConfig", "trainable": trainable}


@question("05.q5", points=2)
def head_in_modules_to_save(namespace: dict) -> str:
    facts = collect(namespace, peft_trainable, live(namespace, "fixed_config"))
    if facts["trainable"] is None:
        raise Wrong(f"fixed_config should be a peft.LoraConfig, not a {facts['type']}")
    trainable = facts["trainable"]
    if not any("classifier" in name for name in trainable):
        raise Wrong("the classifier still does not train: add task_type='SEQ_CLS' or "
                    "modules_to_save=['classifier'] to the LoraConfig")  # fmt: skip
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable if ".lora_" in name}
    if adapted != {"query", "value"}:
        raise Wrong(f"keep LoRA on query and value (target_modules); it is on {sorted(adapted)}")
    return "the head trains beside the adapters"


@question("05.q6", points=1)
def rank_prediction_recorded(namespace: dict) -> str:
    predicted = answer(namespace, "predicted_smallest_rank", "number")
    if predicted not in RANKS:
        raise Wrong(f"predicted_smallest_rank should be one of the ranks tried, {list(RANKS)}")
    return f"you predicted r = {predicted:g}"


@question("05.q6", points=1)
def smallest_rank_read_off(namespace: dict) -> str:
    accuracies = answer(namespace, "accuracies")
    found = answer(namespace, "smallest_rank", "number")
    if not isinstance(accuracies, dict) or set(accuracies) != set(RANKS):
        raise Wrong(
            f"accuracies should map each rank {list(RANKS)} to its accuracy: rerun the cell"
        )
    best = max(accuracies.values())
    right = min(r for r in RANKS if accuracies[r] >= best - 0.01)
    if found != right:
        raise Wrong(f"smallest_rank is {found:g}, but the smallest rank within 0.01 of the best "
                    f"accuracy ({best:.3f}) is {right}")  # fmt: skip
    return f"r = {right} is enough here"
