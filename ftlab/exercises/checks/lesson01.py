"""Checks of exercises/01_math_of_fine_tuning.ipynb: the math of fine-tuning, by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ftlab.exercises import mirror
from ftlab.exercises.checks import Wrong, question
from ftlab.exercises.checks.tools import (
    answer,
    as_number,
    call,
    close,
    collect,
    module_facts,
    verify,
)
from ftlab.exercises.serve import probe

HAND_WRITTEN = "implement the formula yourself: F.cross_entropy is what it is checked against"


def _loss(namespace: dict, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    function = answer(namespace, "stable_cross_entropy", "function")
    forbid = [("torch.nn.functional", name, HAND_WRITTEN) for name in ("cross_entropy", "nll_loss")]
    what = "stable_cross_entropy(logits, labels)"
    loss = call(function, logits, labels, what=what, forbid=forbid)
    if not isinstance(loss, torch.Tensor):
        raise Wrong(
            f"return the loss as a tensor (keep it differentiable), not {type(loss).__name__}"
        )
    if loss.ndim != 0:
        raise Wrong(
            f"your loss has shape {tuple(loss.shape)}: return the mean over the batch, a scalar"
        )
    return loss


@question("01.q1", points=1)
def cross_entropy_matches_torch(namespace: dict) -> str:
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))  # (batch, classes), (batch,)
    loss = _loss(namespace, logits, labels)
    expected = F.cross_entropy(logits, labels)
    value = loss.detach().to(expected.dtype)  # a float64 answer is compared, not refused
    if torch.isclose(value, expected * len(labels), rtol=1e-4):
        raise Wrong("your loss is 8× torch's on a batch of 8: average over the batch, not sum")
    if torch.isclose(value, -expected, rtol=1e-4):
        raise Wrong("your loss is minus torch's: cross-entropy is −log p_y, mind the sign")
    if torch.isclose(value, expected - logits.max(dim=1).values.mean(), rtol=1e-4):
        raise Wrong(
            "your loss is torch's minus each row's max (averaged): after subtracting the max "
            "before exp, add it back after the log, log Σ e^z = m + log Σ e^(z − m)"
        )
    close(loss, expected, "your loss on ordinary logits", atol=1e-5)
    return "matches F.cross_entropy"


@question("01.q1", points=1)
def cross_entropy_is_stable(namespace: dict) -> str:
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [500.0, 510.0, 490.0], [-800.0, -790.0, -805.0]])
    labels = torch.tensor([0, 2, 1])
    loss = _loss(namespace, logits, labels)
    expected = F.cross_entropy(logits, labels)
    if not torch.isfinite(loss):
        raise Wrong(
            f"on large logits (around ±1000) your loss is {loss.item()}: exp overflows. "
            "Subtract each row's max before exp (the log-sum-exp trick)"
        )
    difference = (loss.detach() - expected).abs().item()
    if difference > 1e-4:
        raise Wrong(
            f"your loss differs from torch's by {difference:.3g} on large logits: "
            "subtract each row's max before exp, and add it back after the log"
        )
    return "stable on logits of ±1000"


@question("01.q2", points=2)
def softmax_cross_entropy_gradient(namespace: dict) -> str:
    function = answer(namespace, "softmax_ce_grad", "function")
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])  # (batch, classes), (batch,)
    advice = "derive it by hand: autograd is what it is checked against"
    forbid = [("torch.autograd", "grad", advice), ("torch:Tensor", "backward", advice)]
    gradient = call(function, logits, labels, what="softmax_ce_grad(logits, labels)", forbid=forbid)
    leaf = logits.clone().requires_grad_(True)
    F.cross_entropy(leaf, labels).backward()
    expected = leaf.grad  # (softmax(z) - onehot(y)) / batch
    if isinstance(gradient, torch.Tensor) and gradient.shape == expected.shape:
        _name_gradient_slip(gradient.detach().to(expected.dtype), expected, logits, labels)
    close(gradient, expected, "your gradient", atol=1e-5)
    return "matches autograd"


def _name_gradient_slip(gradient, expected, logits, labels) -> None:
    # The typical wrong gradients, each with its cause.
    onehot = F.one_hot(labels, logits.shape[1]).to(expected.dtype)
    if torch.allclose(gradient, (logits - onehot) / len(labels), atol=1e-5):
        raise Wrong(
            "your gradient uses the logits themselves: apply softmax first, the gradient "
            "is softmax(z) − onehot(y)"
        )
    if torch.allclose(gradient, expected * len(labels), atol=1e-5):
        raise Wrong(
            "your gradient is 4× autograd's on a batch of 4: the loss is the mean over "
            "the batch, so divide by the batch size"
        )
    if torch.allclose(gradient, -expected, atol=1e-5):
        raise Wrong("your gradient has the wrong sign: it is softmax(z) − onehot(y)")
    if not torch.allclose(gradient.sum(dim=1), torch.zeros(4), atol=1e-5):
        raise Wrong(
            "each row of the gradient should sum to 0 (softmax sums to 1, and so does the "
            "one-hot label): subtract the one-hot labels from the softmax"
        )


@question("01.q3", points=2)
def adam_step_matches_torch(namespace: dict) -> str:
    function = answer(namespace, "adam_step", "function")
    param, m, v = torch.tensor([1.0, -2.0, 0.5]), torch.zeros(3), torch.zeros(3)
    for step in (1, 2, 3):
        grad = torch.tensor([0.3, -1.0, 2.0]) * step
        what = f"adam_step(param, grad, m, v, step={step}, lr=0.1)"
        returned = call(
            function, param.clone(), grad, m.clone(), v.clone(), step, lr=0.1, what=what
        )
        if not isinstance(returned, tuple) or len(returned) != 3:
            raise Wrong("adam_step should return a tuple (param, m, v)")
        expected = adam_reference(param, grad, m, v, step, lr=0.1)
        _compare_adam(returned, expected, param, grad, step)
        param, m, v = expected
    return "matches torch.optim.Adam for 3 steps"


def adam_reference(param, grad, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8):
    """Return torch.optim.Adam's (param, m, v) after one step (tested against it)."""
    # Written out because constructing a torch optimizer imports torch._dynamo (seconds).
    m = betas[0] * m + (1 - betas[0]) * grad
    v = betas[1] * v + (1 - betas[1]) * grad**2
    m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v


def _compare_adam(returned, expected, param, grad, step) -> None:
    (new_param, new_m, new_v), (param_ref, m_ref, v_ref) = returned, expected
    close(new_m, m_ref, f"m after step {step}", atol=1e-6)
    if step == 1 and isinstance(new_v, torch.Tensor) and new_v.shape == grad.shape:
        if torch.allclose(new_v.detach().to(grad.dtype), (1 - 0.999) * grad, atol=1e-7):
            raise Wrong("v should average the squared gradient: v = β2·v + (1 − β2)·grad**2")
    close(new_v, v_ref, f"v after step {step}", atol=1e-6)
    uncorrected = param - 0.1 * m_ref / (v_ref.sqrt() + 1e-8)
    if step == 1 and isinstance(new_param, torch.Tensor) and new_param.shape == param.shape:
        if torch.allclose(new_param.detach(), uncorrected, atol=1e-5):
            raise Wrong(
                "your step is Adam without bias correction (3× too large at step 1): divide m "
                "by (1 − β1^step) and v by (1 − β2^step) before the update"
            )
    close(new_param, param_ref, f"the parameter after step {step}", atol=1e-5)


@question("01.q4", points=1)
def prediction_recorded(namespace: dict) -> str:
    predicted = answer(namespace, "predicted_max_lr", "number")
    if predicted <= 0:
        raise Wrong("a learning rate is positive: record your guess, e.g. predicted_max_lr = 0.1")
    return f"you predicted {predicted:g}"


@question("01.q4", points=1)
def reflection_computed(namespace: dict) -> str:
    curvature = answer(namespace, "a", "number")
    critical = answer(namespace, "critical_lr", "number")
    if abs(critical - 2 / curvature) > 1e-6:
        raise Wrong(
            f"critical_lr is {critical:g}: one step multiplies θ by (1 − lr·a), which shrinks "
            "only while |1 − lr·a| < 1, so the largest stable lr is 2/a"
        )
    predicted = answer(namespace, "predicted_max_lr", "number")
    measured = answer(namespace, "measured_max_lr", "number")
    error = answer(namespace, "prediction_error", "number")
    if abs(error - abs(predicted - measured)) > 1e-6:
        raise Wrong(
            f"prediction_error is {error:g} but |predicted_max_lr − measured_max_lr| is "
            f"{abs(predicted - measured):g}"
        )
    return f"critical lr 2/a = {critical:g}; measured {measured:g}"


def _probe_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5))
    model.append(nn.Linear(32, 3))
    return model, torch.randn(64, 6), torch.randint(0, 3, (64,))


@probe
def evaluation_facts(function) -> dict:
    """In the student's kernel: call evaluate_accuracy twice on a model in train mode."""
    model, x, labels = _probe_model()
    built = mirror.fingerprint(model)
    model.train()  # as it is right after training
    grad_enabled = []
    model[0].register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    running_mean = model[1].running_mean.clone()
    what = "evaluate_accuracy(model, x, labels)"
    first = call(function, model, x, labels, what=what)
    second = call(function, model, x, labels, what=what)
    moved = not torch.equal(running_mean, model[1].running_mean)
    return {"print": built, "accuracies": [first, second], "grad": grad_enabled, "moved": moved}


def _evaluation_probe(namespace: dict) -> tuple[float, float, list, bool]:
    function = answer(namespace, "evaluate_accuracy", "function")
    facts = collect(namespace, evaluation_facts, function)
    verify(_probe_model()[0], facts["print"])
    first, second = (as_number(a, "the accuracy you return") for a in facts["accuracies"])
    return first, second, list(facts["grad"]), facts["moved"] is True


@question("01.q5", points=1)
def evaluation_in_eval_mode(namespace: dict) -> str:
    first, second, _, moved = _evaluation_probe(namespace)
    if first != second:
        raise Wrong(
            f"your accuracy changes between two calls ({first:.3f}, {second:.3f}): dropout "
            "is still active. Call model.eval() before evaluating"
        )
    if moved:
        raise Wrong(
            "evaluating changed BatchNorm's running statistics: in train mode every forward "
            "pass updates them. Call model.eval() before evaluating"
        )
    if not 0 <= first <= 1:
        raise Wrong(f"accuracy should be between 0 and 1, got {first}")
    return "deterministic, running statistics untouched"


@question("01.q5", points=1)
def evaluation_without_gradients(namespace: dict) -> str:
    _, _, grad_enabled, _ = _evaluation_probe(namespace)
    if any(grad_enabled):
        raise Wrong(
            "gradients were tracked during evaluation: wrap the forward pass in "
            "torch.no_grad() (it saves the memory of the whole graph)"
        )
    return "no graph built"


@question("01.q6", points=2)
def body_frozen_head_trains(namespace: dict) -> str:
    counted = answer(namespace, "frozen_count", "number")
    facts = collect(namespace, module_facts, answer(namespace, "mlp"))
    if facts["type"] != "Sequential" or facts["length"] != 5:
        raise Wrong(
            "`mlp` should be the 5-module nn.Sequential of the exercise; run its cell again"
        )
    parameters = facts["parameters"]  # [name, requires_grad, numel]
    head = [(n, grad, size) for n, grad, size in parameters if n.startswith("4.")]
    still_trainable = [f"mlp.{n}" for n, grad, _ in parameters if grad and not n.startswith("4.")]
    frozen_head = [f"mlp.{n}" for n, grad, _ in head if not grad]
    if frozen_head:
        raise Wrong(
            f"{len(frozen_head)} parameters of the head (mlp[4]) are frozen: the head must train"
        )
    if still_trainable:
        raise Wrong(
            f"{', '.join(still_trainable)} still require gradients: call "
            "requires_grad_(False) on mlp[0] and mlp[2]"
        )
    frozen = sum(size for _, grad, size in parameters if not grad)
    if counted != frozen:
        raise Wrong(
            f"frozen_count is {counted:g} but {frozen} parameters are frozen: sum p.numel() "
            "over the parameters with requires_grad False"
        )
    return f"{frozen} frozen, {sum(size for _, _, size in head)} train"
