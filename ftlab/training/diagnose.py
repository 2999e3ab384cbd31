"""Catch the classic fine-tuning mistakes before training, and explain failures during it.

`diagnose(model, optimizer, batch, lr)` checks, each finding with a one-line fix:
- `no_gradient`: a parameter requires grad but gets none from a real forward/backward on `batch`
  (a new head that `forward` never calls);
- `frozen_in_optimizer`: frozen parameters handed to the optimizer;
- `missing_from_optimizer`: trainable parameters the optimizer does not hold (they never change);
- `lr_too_high`, `head_lr_too_low`, `no_head`, `foreign_parameters`: the rates of the body and
  of a new head, a bare encoder trained without its head, an optimizer built from another model
  (see `ftlab.training.model_checks`);
- `batchnorm_train_mode`: BatchNorm layers whose parameters are all frozen, left in train mode
  (their running statistics drift away from the pretrained ones);
- `num_labels`: labels in the batch outside [0, number of model outputs);
- `frozen_head`: a new head (`classifier`, `score`, `head`, `fc`) that does not train while other
  parameters do: frozen, or left out of the optimizer, it stays random (lesson 05: a PEFT model
  without `task_type` or `modules_to_save`).
A batch rarely holds every class, so more outputs than classes seen is not reported.
`diagnose` leaves weights, gradients, buffers, train/eval modes and random states unchanged.

`fit` runs it first (`check=True`): a `num_labels` or `no_head` finding or an empty loader raises
(training would crash or do nothing); the others are warnings, since some are deliberate.
Taught in lesson 02 (and the exercises of lessons 03 and 04; `frozen_head` in lesson 05).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ftlab.data.batches import batch_size, labels_of, slice_batch, to_device
from ftlab.training.evaluation import forward_output
from ftlab.training.model_checks import HEAD_NAMES, model_findings

RAISING = ("num_labels", "no_head")  # findings that make fit refuse to start


@dataclass
class Finding:
    """One mistake found by `diagnose`: which check, what is wrong, how to fix it."""

    check: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}\n  fix: {self.fix}"


def diagnose(model, optimizer=None, batch=None, lr=None, verbose=True) -> list[Finding]:
    """Return (and print, if verbose) the classic mistakes in this setup. Taught in lesson 02."""
    findings = []
    if batch is not None:
        findings += _check_gradients_and_labels(model, batch)
    if optimizer is not None:
        findings += _check_optimizer(model, optimizer)
    findings += [Finding(*found) for found in model_findings(model, optimizer, lr)]
    findings += _check_batchnorm(model)
    findings += _check_frozen_head(model, optimizer)
    if verbose:
        print("\n".join(map(str, findings)) if findings else "diagnose: no problems found")
    return findings


def preflight(model, train_dl, optimizer, lr, device, check: bool, callbacks=()):
    """Before `fit` trains: refuse an empty loader and bad labels; warn about other findings.

    Returns the labels of the first batch (None if it has none), which `fit` reads once more.
    """
    try:
        with torch.random.fork_rng(devices=[]):  # peeking must not shift the seeded run
            batch = next(iter(train_dl))
    except StopIteration:
        raise ValueError(
            "train_dl is empty: it yields no batches. Check the data set's length, and that "
            "batch_size is not larger than the data set when drop_last=True"
        ) from None
    batch = to_device(batch, device)
    labels = labels_of(batch)
    labels_finding = label_range_finding(labels, num_labels_of(model))
    if labels_finding:
        raise ValueError(f"{labels_finding.message}. Fix: {labels_finding.fix}")
    if not check:
        return labels
    with _training_mode(model):  # judge the model as fit will run it
        findings = diagnose(model, optimizer, _first_rows(batch), lr, verbose=False)
    fixed_by_callbacks = {getattr(callback, "fixes", None) for callback in callbacks}
    for finding in findings:
        if finding.check in fixed_by_callbacks:
            continue
        if finding.check in RAISING:
            raise ValueError(f"{finding.message}. Fix: {finding.fix}")
        warnings.warn(str(finding), stacklevel=3)
    return labels


def num_labels_of(model) -> int | None:
    """Return the number of classes the model predicts, read off without a forward pass."""
    config = getattr(model, "config", None)
    if isinstance(getattr(config, "num_labels", None), int):
        return config.num_labels
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1].out_features if linears else None


def label_range_finding(labels, num_labels: int | None) -> Finding | None:
    """Return a `num_labels` finding if integer labels fall outside [0, num_labels)."""
    if labels is None or num_labels is None or labels.is_floating_point() or labels.numel() == 0:
        return None
    labels = labels[labels != -100]  # -100 is the "ignore" label of cross-entropy
    low, high = int(labels.min()), int(labels.max())
    if low >= 0 and high < num_labels:
        return None
    return Finding(
        "num_labels",
        f"labels range over [{low}, {high}] but the model has {num_labels} outputs "
        f"(labels must lie in [0, {num_labels}))",
        f"build the model with num_labels={high + 1} (or the number of classes), "
        "or map the labels to 0..num_labels-1",
    )


def nan_loss_message(step: int, epoch: int, loss: float, lr: float, state) -> str:
    """Explain a NaN or infinite loss: where it happened and what usually causes it."""
    causes = [f"the learning rate is too high (lr={lr:.2g}): try 10x smaller"]
    if state.precision == "fp16":
        causes.append("fp16 overflowed: use precision='bf16' (if the GPU has it) or 'fp32'")
    causes += [
        "the inputs hold NaN or inf: check the data",
        "max_grad_norm=None turned clipping off",
    ]
    return f"the loss is {loss} at step {step} (epoch {epoch}). Likely causes: " + "; ".join(causes)


def out_of_memory_message(state, batch, grad_accum_steps: int) -> str:
    """Explain a CUDA out-of-memory error with the batch size and the fix."""
    size = batch_size(batch) // state.batch_splits
    return (
        f"out of GPU memory at a batch of {size} examples (grad_accum_steps={grad_accum_steps}). "
        f"Fix: halve the batch size and double grad_accum_steps (batch {max(1, size // 2)}, "
        f"grad_accum_steps={2 * grad_accum_steps}: the same effective batch), shorten max_length "
        "or the image size, or pass oom_retry=True to fit to do this automatically"
    )


def device_mismatch_message(model, batch, error: Exception) -> str:
    """Explain 'tensors on different devices': where the model and the batch live."""
    model_devices = sorted({str(p.device) for p in model.parameters()})
    tensors = batch.values() if isinstance(batch, Mapping) else batch
    batch_devices = sorted({str(t.device) for t in tensors if torch.is_tensor(t)})
    return (
        f"model and batch are on different devices (model parameters on {model_devices}, "
        f"batch on {batch_devices}): {error}. Fix: call model.to(device) after changing the model "
        "(e.g. a new head), and register tensors a module creates as buffers "
        "(self.register_buffer) so that .to(device) moves them"
    )


def _check_gradients_and_labels(model, batch) -> list[Finding]:
    with _untouched(model):
        output, labels = forward_output(model, batch)
        # Any scalar of the output reaches every used parameter; a model with no logits (a
        # BertModel whose classifier forward never calls) is checked through all its tensors.
        sum(tensor.float().sum() for tensor in _output_tensors(output)).backward()
        silent = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    findings = []
    if silent:
        findings.append(
            Finding(
                "no_gradient",
                f"{len(silent)} trainable parameters get no gradient from a forward/backward "
                f"pass ({_some(silent)}): forward never uses them",
                "call the new module in forward (e.g. return self.head(features)), "
                "or freeze it with requires_grad_(False) if it is meant to be unused",
            )
        )
    logits = output if torch.is_tensor(output) else getattr(output, "logits", None)
    if logits is not None and logits.ndim >= 2:  # (batch, num_labels): labels must fit
        findings += filter(None, [label_range_finding(labels, logits.shape[-1])])
    return findings


def _output_tensors(output) -> list[torch.Tensor]:
    """The logits of an output, or else every tensor in it (hidden states, pooled vector)."""
    if torch.is_tensor(output):
        return [output]
    if getattr(output, "logits", None) is not None:
        return [output.logits]
    values = output.values() if isinstance(output, Mapping) else output
    tensors = [value for value in values if torch.is_tensor(value) and value.requires_grad]
    if not tensors:
        raise TypeError(f"the model's output ({type(output).__name__}) holds no tensor to check")
    return tensors


def _check_optimizer(model, optimizer) -> list[Finding]:
    names = {id(p): name for name, p in model.named_parameters()}
    held = [p for group in optimizer.param_groups for p in group["params"]]
    frozen = [names[id(p)] for p in held if not p.requires_grad and id(p) in names]
    held_ids = {id(p) for p in held}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held_ids]
    findings = []
    if frozen:
        message = (
            f"{len(frozen)} frozen parameters are in the optimizer ({_some(frozen)}): weight "
            "decay and momentum still move them whenever their grad is a zero tensor, and "
            "their optimizer state wastes memory"
        )
        fix = "build the optimizer from [p for p in model.parameters() if p.requires_grad]"
        findings.append(Finding("frozen_in_optimizer", message, fix))
    if missing:
        message = (
            f"{len(missing)} trainable parameters are not in the optimizer ({_some(missing)}): "
            "they never change (was the optimizer built before the new head?)"
        )
        fix = "build the optimizer after replacing the head and choosing what to freeze"
        findings.append(Finding("missing_from_optimizer", message, fix))
    return findings


def _check_batchnorm(model) -> list[Finding]:
    drifting = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.training
        and any(True for _ in module.parameters())
        and not any(p.requires_grad for p in module.parameters())
    ]
    if not drifting:
        return []
    message = (
        f"{len(drifting)} BatchNorm layers are frozen but in train mode ({_some(drifting)}): "
        "their running statistics drift away from the pretrained ones on every batch"
    )
    fix = (
        "call .eval() on them after model.train(); with fit, pass "
        "callbacks=[ftlab.training.state.FrozenBatchNormEval()]"
    )
    return [Finding("batchnorm_train_mode", message, fix)]


def _check_frozen_head(model, optimizer) -> list[Finding]:
    held = {id(p) for g in optimizer.param_groups for p in g["params"]} if optimizer else None

    def trains(module) -> bool:
        return any(p.requires_grad and (held is None or id(p) in held) for p in module.parameters())

    heads, inside = {}, ()
    for name, module in model.named_modules():  # the outermost module of each new head
        if name.rsplit(".", 1)[-1] in HEAD_NAMES[:-1] and not name.startswith(inside):
            heads[name], inside = module, (*inside, f"{name}.")
    frozen = [name for name, head in heads.items() if _counts_any(head) and not trains(head)]
    if not frozen or not trains(model):  # nothing trains at all: inference, not a mistake
        return []
    message = (
        f"the new head ({_some(frozen)}) does not train: its parameters are frozen or not in "
        "the optimizer while others train, so it keeps its random initialisation"
    )
    fix = (
        "with PEFT, pass task_type='SEQ_CLS' or modules_to_save=['classifier'] to LoraConfig; "
        "otherwise unfreeze the head (requires_grad_(True)) and give it to the optimizer"
    )
    return [Finding("frozen_head", message, fix)]


@contextmanager
def _untouched(model):
    """Run a forward/backward, then restore gradients, buffers, modes and random states."""
    grads = {p: p.grad for p in model.parameters()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    modes = {module: module.training for module in model.modules()}
    for p in model.parameters():
        p.grad = None
    devices = list(range(torch.cuda.device_count()))
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for p, grad in grads.items():
            p.grad = grad
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        for module, training in modes.items():
            module.training = training


@contextmanager
def _training_mode(model):
    modes = {module: module.training for module in model.modules()}
    model.train()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def _counts_any(module) -> bool:
    return any(True for _ in module.parameters())


def _first_rows(batch, rows: int = 8):
    return slice_batch(batch, 0, min(rows, batch_size(batch)))


def _some(names: list[str], shown: int = 3) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
