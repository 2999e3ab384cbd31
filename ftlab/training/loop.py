"""The training loop of lesson 02, packaged: `fit` and the step it runs on each batch.

The core of `fit` is the loop a learner writes by hand in lesson 02 (forward, loss, backward,
optimizer step, zero_grad). Around it, not inside layers of indirection: mixed precision,
gradient accumulation and clipping, a learning-rate schedule, progress bars, callbacks, early
stopping, checkpoints with exact resume (`checkpoint`), mistake detection before the first step
(`diagnose`) and failures that say what to fix. What runs on each batch is a step object:
`EagerStep` here; lesson 06's faster steps (`ftlab.scaling`) plug in the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ftlab.data.batches import batch_size, split_batch, to_device
from ftlab.setup.env import pick_device, pick_precision, seed_everything
from ftlab.training import checkpoint, distributed
from ftlab.training.diagnose import device_mismatch_message, out_of_memory_message, preflight
from ftlab.training.evaluation import AUTOCAST_DTYPES, evaluate
from ftlab.training.optim import default_optimizer, make_scheduler
from ftlab.training.state import History, StepLog, TrainState, as_early_stopping
from ftlab.training.step import compute_loss, optimizer_step


def fit(
    model, train_dl, val_dl=None, *, optimizer=None, lr=5e-5, num_epochs=1, max_steps=None,
    scheduler="linear", warmup_ratio=0.0, weight_decay=0.01, precision="auto", grad_accum_steps=1,
    max_grad_norm=1.0, callbacks=(), checkpoint_dir=None, resume=True, progress=True, seed=None,
    device=None, metrics=("accuracy",), early_stopping=None, check=True, checkpoint_every=None,
    keep_last=2, oom_retry=False, step=None,
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
    `step` trains on one batch: `EagerStep()` by default; lesson 06's `ftlab.scaling` has faster
    ones (`CompiledStep`, `CudaGraphStep`). Under `torchrun`/`accelerate launch` the same call
    trains data-parallel (`ftlab.training.distributed`): only rank 0 prints and writes.
    """
    device = distributed.local_device(pick_device(device))  # cuda:<local rank> under a launcher
    model.to(device)
    progress = progress and distributed.is_main_process()
    if seed is not None:
        seed_everything(seed)
    preflight(model, train_dl, optimizer, lr if optimizer is None else None, device, check,
              callbacks)  # fmt: skip
    optimizer = optimizer or default_optimizer(model, lr, weight_decay, device)
    # Launched on several processes: a DDP model and sharded loaders; one process: unchanged.
    model, train_dl, val_dl = distributed.prepare(model, train_dl, val_dl, device)
    total_steps = _total_steps(train_dl, num_epochs, grad_accum_steps, max_steps)
    loop = Loop(total_steps, step or EagerStep(), num_epochs, grad_accum_steps, max_grad_norm,
                metrics, checkpoint_dir, checkpoint_every, keep_last)  # fmt: skip
    callbacks = [*callbacks, *filter(None, [as_early_stopping(early_stopping)])]
    state = _new_state(model, optimizer, device, precision, callbacks, seed, oom_retry)
    state.scheduler = make_scheduler(optimizer, scheduler, total_steps, warmup_ratio)
    loop.train_step.start(state, loop)  # a lesson-06 step checks the run, compiles, ...
    if checkpoint_dir and resume:
        checkpoint.resume(checkpoint_dir, state, verbose=progress)
    return train(state, train_dl, val_dl, loop, StepLog(state, progress, num_epochs))


def train(state: TrainState, train_dl, val_dl, loop: Loop, log: StepLog) -> History:
    """Lesson 02's epochs: a pass over `train_dl`, then evaluation on `val_dl`, each epoch."""
    state.optimizer.zero_grad(set_to_none=True)  # gradients left from earlier use must not leak
    state.call("on_train_start")
    for epoch in range(state.epoch, loop.num_epochs):
        if state.step >= loop.total_steps or state.stop:
            break
        state.epoch, started = epoch, time.perf_counter()
        train_epoch(state, train_dl, log, loop)
        end_epoch(state, val_dl, log, loop, seconds=time.perf_counter() - started)
    state.call("on_train_end")
    return state.history


class EagerStep:
    """Lesson 02's step on one batch; `fit` calls it for every batch and returns its loss.

    Taught in lesson 02: forward and backward under autocast, then, at the end of a
    gradient-accumulation group (`sync`), clip, step and zero_grad. `fit(step=...)` takes any
    object with these two methods: lesson 06's `ftlab.scaling` builds faster ones on this one.
    """

    def start(self, state: TrainState, loop: Loop) -> None:
        """Get ready before the first batch; raise, before any training, what cannot run."""
        self.grad_accum_steps, self.max_grad_norm = loop.grad_accum_steps, loop.max_grad_norm

    def __call__(self, state: TrainState, batch, sync: bool) -> torch.Tensor:
        """Train on one batch; return its detached loss."""
        with distributed.sync_gradients(state.model, sync):  # several processes: average
            loss = forward_backward(state, batch, self.grad_accum_steps)  # autocast, backward
        if sync:
            optimizer_step(state.optimizer, state.scaler, self.max_grad_norm)  # clip, step
            state.optimizer.zero_grad(set_to_none=True)
        return loss


@dataclass
class Loop:
    """What `fit` was asked to do, beside the model and the data: read by the epoch's loop."""

    total_steps: int
    train_step: EagerStep  # or any object with its start() and __call__()
    num_epochs: int = 1
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    metrics: tuple = ("accuracy",)
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    keep_last: int = 2


def train_epoch(state: TrainState, train_dl, log: StepLog, loop: Loop) -> None:
    """One pass over `train_dl`: lesson 02's loop — forward, loss, backward, step, zero_grad.

    With gradient accumulation the optimizer steps every `grad_accum_steps` batches; the pass
    ends early at `loop.total_steps` or when a callback sets `state.stop`.
    """
    state.model.train()
    state.call("on_epoch_start")
    num_batches = _num_batches(train_dl)  # None for a loader without a length
    batches = checkpoint.epoch_batches(train_dl, state)  # seeded order, resumable
    for step, batch in enumerate(log.progress(batches, num_batches), state.batch_in_epoch):
        batch = to_device(batch, state.device)
        sync = (step + 1) % loop.grad_accum_steps == 0 or step + 1 == num_batches
        loss = loop.train_step(state, batch, sync)  # forward, backward; at sync step, zero_grad
        log.add_batch(loss, batch_size(batch))
        if sync:
            state.scheduler.step()
            state.step, state.batch_in_epoch = state.step + 1, step + 1
            _after_step(state, log, loop)
            if state.step >= loop.total_steps or state.stop:
                break
    log.flush()


def end_epoch(state: TrainState, val_dl, log: StepLog, loop: Loop, seconds: float) -> None:
    """Evaluate on `val_dl`, record the epoch in the history, call callbacks, checkpoint."""
    val_model = distributed.unwrap(state.model)  # evaluated without the DDP and compile wrappers
    val_results = None
    if val_dl is not None:
        val_results = evaluate(val_model, val_dl, loop.metrics, state.device, state.precision)
    state.history.end_epoch(state.epoch, log.epoch_loss(state.epoch), val_results, seconds)
    state.batch_in_epoch = 0
    state.call("on_epoch_end")
    log.end_epoch()
    if loop.checkpoint_dir:
        checkpoint.save(loop.checkpoint_dir, state, loop.keep_last, epoch_done=True)


def _after_step(state: TrainState, log: StepLog, loop: Loop) -> None:
    log.end_step()
    state.call("on_step_end")
    if loop.checkpoint_dir and loop.checkpoint_every and state.step % loop.checkpoint_every == 0:
        log.flush()
        checkpoint.save(loop.checkpoint_dir, state, loop.keep_last)


def _new_state(model, optimizer, device, precision, callbacks, seed, oom_retry) -> TrainState:
    precision = pick_precision(device, precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = TrainState(model, optimizer, None, scaler, History(), device, precision, callbacks)
    state.oom_retry = oom_retry
    state.data_seed = seed if seed is not None else int(torch.randint(2**31, ()))
    return state


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
            if not (fresh and batch_size(batch) > state.batch_splits):
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


def _is_device_mismatch(error: RuntimeError) -> bool:
    text = str(error)
    return "same device" in text or "expected device" in text


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
