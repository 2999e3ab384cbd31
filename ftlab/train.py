"""The training loop of lesson 02, packaged: `fit`, `evaluate`, `predict` and `History`.

The core of `fit` is the loop a learner writes by hand in lesson 02 (forward, loss, backward,
optimizer step, zero_grad). Around it, not inside layers of indirection: mixed precision,
gradient accumulation and clipping, a learning-rate schedule, progress bars, callbacks, early
stopping, checkpoints with exact resume (`ftlab/checkpoint.py`), mistake detection before the
first step (`ftlab/diagnose.py`) and failures that say what to fix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ftlab import checkpoint, distributed, fast
from ftlab.callbacks import History, StepLog, TrainState, as_early_stopping
from ftlab.diagnose import device_mismatch_message, out_of_memory_message, preflight
from ftlab.env import pick_device, pick_precision, seed_everything
from ftlab.metrics import get_metric

__all__ = ["History", "fit", "evaluate", "predict", "compute_loss", "optimizer_step"]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def fit(
    model, train_dl, val_dl=None, *, optimizer=None, lr=5e-5, num_epochs=1, max_steps=None,
    scheduler="linear", warmup_ratio=0.0, weight_decay=0.01, precision="auto", grad_accum_steps=1,
    max_grad_norm=1.0, callbacks=(), checkpoint_dir=None, resume=True, progress=True, seed=None,
    device=None, metrics=("accuracy",), early_stopping=None, check=True, checkpoint_every=None,
    keep_last=2, oom_retry=False, compile=None, channels_last=False,
) -> History:  # fmt: skip
    """Train `model` on `train_dl`, evaluate on `val_dl` after each epoch; return the History.

    Taught in lesson 02, where the same loop is written by hand. `optimizer=None` builds AdamW
    over the trainable parameters (no weight decay on biases and norm weights); a given optimizer
    is used as it is, and `lr` and `weight_decay` are then ignored. `max_steps` caps the optimizer
    steps. `checkpoint_dir` saves at each epoch end (and every `checkpoint_every` steps) and, with
    `resume=True`, continues from the last checkpoint found there. `check=True` runs `diagnose`
    first: labels outside the model's outputs or an empty loader raise, other findings warn.
    `oom_retry=True` redoes a batch that ran out of GPU memory in halves (same effective batch).
    `early_stopping`: `EarlyStopping(monitor="accuracy", patience=2)` or a dict of its arguments.
    Lesson 06: `compile="default"|"reduce-overhead"` runs the model through `torch.compile`;
    `channels_last=True` stores a CNN's weights NHWC; under `torchrun`/`accelerate launch` the
    same call trains data-parallel (see `ftlab.distributed`): only rank 0 prints and writes.
    """
    device = distributed.local_device(pick_device(device))  # cuda:<local rank> under a launcher
    model.to(device)
    if channels_last:
        fast.channels_last(model)
    progress = progress and distributed.is_main_process()
    if seed is not None:
        seed_everything(seed)
    lr_used = lr if optimizer is None else None
    preflight(model, train_dl, optimizer, lr_used, device, check, callbacks)
    optimizer = optimizer or default_optimizer(model, lr, weight_decay, device)
    # Launched on several processes: a DDP model and sharded loaders; one process: unchanged.
    model, train_dl, val_dl = distributed.prepare(model, train_dl, val_dl, device)
    if compile:
        model = fast.compile_model(model, compile)
    total_steps = _total_steps(train_dl, num_epochs, grad_accum_steps, max_steps)
    precision = pick_precision(device, precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    callbacks = [*callbacks, *filter(None, [as_early_stopping(early_stopping)])]
    schedule = make_scheduler(optimizer, scheduler, total_steps, warmup_ratio)
    data_seed = seed if seed is not None else int(torch.randint(2**31, ()))
    state = TrainState(model, optimizer, schedule, scaler, History(), device, precision, callbacks)
    state.oom_retry, state.data_seed = oom_retry, data_seed
    if checkpoint_dir and resume:
        checkpoint.resume(checkpoint_dir, state, verbose=progress)
    log = StepLog(state, progress, num_epochs)
    num_batches = _num_batches(train_dl)  # None for a loader without a length
    optimizer.zero_grad(set_to_none=True)  # gradients left from earlier use must not leak in
    state.call("on_train_start")
    for epoch in range(state.epoch, num_epochs):
        if state.step >= total_steps or state.stop:
            break
        state.epoch, started = epoch, time.perf_counter()
        model.train()
        state.call("on_epoch_start")
        batches = checkpoint.epoch_batches(train_dl, state)  # seeded order, resumable
        for step, batch in enumerate(log.progress(batches, num_batches), state.batch_in_epoch):
            batch = to_device(batch, device)
            sync = (step + 1) % grad_accum_steps == 0 or step + 1 == num_batches
            with distributed.sync_gradients(model, sync):  # several processes: average gradients
                loss = forward_backward(state, batch, grad_accum_steps)  # autocast, loss, backward
            log.add_batch(loss, _batch_size(batch))
            if sync:
                optimizer_step(optimizer, scaler, max_grad_norm)
                state.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step, state.batch_in_epoch = state.step + 1, step + 1
                log.end_step()
                state.call("on_step_end")
                if checkpoint_dir and checkpoint_every and state.step % checkpoint_every == 0:
                    log.flush()
                    checkpoint.save(checkpoint_dir, state, keep_last)
                if state.step >= total_steps or state.stop:
                    break
        log.flush()
        val_model = distributed.unwrap(model)  # evaluated without the DDP and compile wrappers
        val_results = evaluate(val_model, val_dl, metrics, device, precision) if val_dl else None
        seconds = time.perf_counter() - started
        state.history.end_epoch(epoch, log.epoch_loss(epoch), val_results, seconds)
        state.batch_in_epoch = 0
        state.call("on_epoch_end")
        log.end_epoch()
        if checkpoint_dir:
            checkpoint.save(checkpoint_dir, state, keep_last, epoch_done=True)
    state.call("on_train_end")
    return state.history


def forward_backward(state: TrainState, batch, grad_accum_steps: int) -> torch.Tensor:
    """Run autocast → compute_loss → scaled backward on one batch; return the detached loss.

    A failure becomes a message that says what to fix. With `oom_retry`, a batch that runs out
    of memory is redone in halves (then quarters, ...), which gives the same gradient; only a
    batch that starts a gradient-accumulation group can be redone (no gradients to lose).
    """
    fresh = state.oom_retry and all(p.grad is None for p in state.model.parameters())
    while True:
        try:
            return _backward_in_chunks(state, batch, grad_accum_steps)
        except torch.OutOfMemoryError as error:
            message = out_of_memory_message(state, batch, grad_accum_steps)
            if not (fresh and _batch_size(batch) > state.batch_splits):
                raise torch.OutOfMemoryError(message) from error
        except RuntimeError as error:
            if not _is_device_mismatch(error):
                raise
            raise RuntimeError(device_mismatch_message(state.model, batch, error)) from error
        # Outside the except block the failed attempt's activations are freed: retry smaller.
        state.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        state.batch_splits *= 2


def _backward_in_chunks(state: TrainState, batch, grad_accum_steps: int) -> torch.Tensor:
    dtype = AUTOCAST_DTYPES[state.precision]
    total = 0.0
    for chunk, weight in split_batch(batch, state.batch_splits):  # one chunk, weight 1, usually
        with torch.autocast(state.device.type, dtype=dtype, enabled=state.precision != "fp32"):
            loss = compute_loss(state.model, chunk)
        state.scaler.scale(loss * weight / grad_accum_steps).backward()
        total = total + loss.detach() * weight
    return total


def compute_loss(model, batch) -> torch.Tensor:
    """Return the mean loss of a batch: HF `output.loss` for dicts, cross-entropy for (x, y).

    Taught in lesson 02.
    """
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise ValueError(
                f"a dict batch needs a 'labels' key to compute a loss; got {list(batch)}"
            )
        output = model(**batch)
        if getattr(output, "loss", None) is not None:
            return output.loss
        return F.cross_entropy(_logits_of(output), batch["labels"])
    inputs, labels = _unpack(batch)
    logits = model(inputs)  # (batch, num_labels)
    return F.cross_entropy(_logits_of(logits), labels)


def optimizer_step(optimizer, scaler, max_grad_norm: float | None) -> None:
    """Unscale the gradients, clip their norm to `max_grad_norm`, step. Taught in lesson 02."""
    scaler.unscale_(optimizer)  # no-op unless fp16: clipping must see the true gradients
    if max_grad_norm:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scaler.step(optimizer)  # skips the step if fp16 gradients overflowed
    scaler.update()


def default_optimizer(model, lr: float, weight_decay: float, device) -> torch.optim.AdamW:
    """Return AdamW over the trainable parameters; biases and norm weights get no weight decay.

    Taught in lesson 02.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters: unfreeze at least the head")
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},  # bias, norm
    ]
    groups = [group for group in groups if group["params"]]
    return torch.optim.AdamW(groups, lr=lr, fused=torch.device(device).type == "cuda")


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


def evaluate(model, dl, metrics=("accuracy",), device=None, precision="auto") -> dict:
    """Return {"loss": mean cross-entropy, "accuracy": ..., ...} of `model` on `dl`.

    Runs in eval mode without gradients and puts the model back in its previous mode.
    Taught in lesson 02.
    """
    logits, labels = predict(model, dl, device, precision)
    if labels is None:
        raise ValueError("evaluate needs labels in the batches; use predict for unlabelled data")
    results = {"loss": F.cross_entropy(logits, labels).item()}
    for metric in metrics:
        name, function = get_metric(metric)
        results[name] = function(logits, labels)
    return results


@torch.no_grad()
def predict(model, dl, device=None, precision="auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (logits (n, num_labels) float32 on the CPU, labels (n,) or None).

    Taught in lesson 02.
    """
    device = torch.device(device) if device is not None else _device_of(model)
    precision = pick_precision(device, precision)
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    try:
        for batch in dl:
            batch = to_device(batch, device)
            with torch.autocast(device.type, AUTOCAST_DTYPES[precision], precision != "fp32"):
                logits, labels = _forward_for_logits(model, batch)
            logits, labels = distributed.gather(dl, logits, labels)  # sharded: every process's rows
            all_logits.append(logits.float())  # stays on the device: one copy at the end
            if labels is not None:
                all_labels.append(labels)
    finally:
        model.train(was_training)
    if not all_logits:
        raise ValueError("the data loader is empty: nothing to predict or evaluate")
    labels = torch.cat(all_labels).cpu() if all_labels else None
    return torch.cat(all_logits).cpu(), labels


def to_device(batch, device):
    """Move every tensor of a batch (dict, tuple or list) to `device`. Taught in lesson 02."""
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device) for value in batch)
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    return batch


def split_batch(batch, parts: int):
    """Yield (chunk, weight) pairs: `parts` slices along the batch axis, weight = share of rows."""
    size = _batch_size(batch)
    if parts == 1:
        yield batch, 1.0
        return
    for start in range(0, size, math.ceil(size / parts)):
        stop = min(size, start + math.ceil(size / parts))
        yield _slice(batch, start, stop), (stop - start) / size


def _slice(batch, start: int, stop: int):
    if isinstance(batch, Mapping):
        return {key: _slice(value, start, stop) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice(value, start, stop) for value in batch)
    return batch[start:stop] if torch.is_tensor(batch) else batch


def _batch_size(batch) -> int:
    if isinstance(batch, Mapping):
        return len(batch["labels"]) if "labels" in batch else len(next(iter(batch.values())))
    return len(_unpack(batch)[1])


def _unpack(batch):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"expected a batch as a dict with 'labels' or an (inputs, labels) pair, got "
            f"{type(batch).__name__}; return (x, y) from the dataset or use a dict collate_fn"
        )
    return batch


def _logits_of(output) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    if getattr(output, "logits", None) is not None:  # Hugging Face outputs hold .logits
        return output.logits
    raise TypeError(
        f"the model returned a {type(output).__name__} with no logits, so there is nothing to "
        "classify with: its forward never applies a classification head. Return logits from "
        "forward (e.g. self.classifier(pooled)), or use AutoModelForSequenceClassification"
    )


def _forward_for_logits(model, batch):
    output, labels = _forward_output(model, batch)
    return _logits_of(output), labels


def _forward_output(model, batch):
    """Run the model on a batch without its labels; return (raw output, labels or None)."""
    if isinstance(batch, Mapping):
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        return model(**inputs), batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return model(batch[0]), batch[1]
    return model(batch), None  # unlabelled inputs


def _is_device_mismatch(error: RuntimeError) -> bool:
    text = str(error)
    return "same device" in text or "expected device" in text


def _device_of(model) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _num_batches(train_dl) -> int | None:
    try:
        return len(train_dl)
    except TypeError:
        return None


def _total_steps(train_dl, num_epochs: int, grad_accum_steps: int, max_steps: int | None) -> int:
    num_batches = _num_batches(train_dl)
    if num_batches is None:
        if max_steps is None:
            raise ValueError("train_dl has no length: pass max_steps to fit")
        return max_steps
    total = math.ceil(num_batches / grad_accum_steps) * num_epochs
    return total if max_steps is None else min(total, max_steps)
