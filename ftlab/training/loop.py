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
from dataclasses import dataclass

import torch

from ftlab.data.batches import batch_size, split_batch, to_device
from ftlab.scaling import compile as compiling
from ftlab.scaling import cuda_graphs as graphs
from ftlab.scaling import vision
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
    keep_last=2, oom_retry=False, compile=None, channels_last=False, cuda_graph=False,
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
    Lesson 06: `compile="default"|"reduce-overhead"` runs the model through `torch.compile`
    (or a dict of `compile_model`'s arguments: `{"mode": "reduce-overhead", "dynamic": True}`);
    `channels_last=True` stores a CNN's weights NHWC; `cuda_graph=True` records each batch
    shape's whole step as a CUDA graph and replays it (`ftlab.scaling.cuda_graphs`); under
    `torchrun`/`accelerate launch` the same call trains data-parallel
    (`ftlab.training.distributed`): only rank 0 prints and writes.
    """
    device = distributed.local_device(pick_device(device))  # cuda:<local rank> under a launcher
    if cuda_graph:  # what a replayed step cannot do is refused before any work
        graphs.check_supported(device, pick_precision(device, precision), grad_accum_steps,
                               oom_retry, compile, optimizer)  # fmt: skip
    model.to(device)
    if channels_last:
        vision.channels_last(model)
    progress = progress and distributed.is_main_process()
    if seed is not None:
        seed_everything(seed)
    first_labels = preflight(
        model, train_dl, optimizer, lr if optimizer is None else None, device, check, callbacks
    )
    optimizer = optimizer or default_optimizer(model, lr, weight_decay, device)
    # Launched on several processes: a DDP model and sharded loaders; one process: unchanged.
    model, train_dl, val_dl = distributed.prepare(model, train_dl, val_dl, device)
    if compile:
        model = _compiled(model, compile, first_labels)
    total_steps = _total_steps(train_dl, num_epochs, grad_accum_steps, max_steps)
    loop = Loop(total_steps, grad_accum_steps, max_grad_norm, metrics, checkpoint_dir,
                checkpoint_every, keep_last)  # fmt: skip
    callbacks = [*callbacks, *filter(None, [as_early_stopping(early_stopping)])]
    state = _new_state(model, optimizer, device, precision, callbacks, seed, oom_retry)
    if cuda_graph:  # lesson 06: each batch shape's whole step, recorded once and replayed
        loop.graphed = graphs.GraphedStep(model, optimizer, max_grad_norm, state.precision,
                                          state.scaler)  # fmt: skip
    state.scheduler = make_scheduler(optimizer, scheduler, total_steps, warmup_ratio)
    if checkpoint_dir and resume:
        checkpoint.resume(checkpoint_dir, state, verbose=progress)
    log = StepLog(state, progress, num_epochs)
    optimizer.zero_grad(set_to_none=True)  # gradients left from earlier use must not leak in
    state.call("on_train_start")
    for epoch in range(state.epoch, num_epochs):
        if state.step >= total_steps or state.stop:
            break
        state.epoch, started = epoch, time.perf_counter()
        train_epoch(state, train_dl, log, loop)
        end_epoch(state, val_dl, log, loop, seconds=time.perf_counter() - started)
    state.call("on_train_end")
    return state.history


@dataclass
class Loop:
    """What `fit` was asked to do, beside the model and the data: read by the epoch's loop."""

    total_steps: int
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    metrics: tuple = ("accuracy",)
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    keep_last: int = 2
    graphed: graphs.GraphedStep | None = None  # fit(cuda_graph=True): steps replayed


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
        loss = train_step(state, batch, loop, sync)  # forward, backward; step and zero_grad
        log.add_batch(loss, batch_size(batch))
        if sync:
            state.scheduler.step()
            state.step, state.batch_in_epoch = state.step + 1, step + 1
            _after_step(state, log, loop)
            if state.step >= loop.total_steps or state.stop:
                break
    log.flush()


def train_step(state: TrainState, batch, loop: Loop, sync: bool) -> torch.Tensor:
    """Lesson 02's step on one batch; return its detached loss.

    Forward and backward (autocast, scaled), then, at the end of a gradient-accumulation group
    (`sync`), clip, step and zero_grad. With `fit(cuda_graph=True)` the same step is replayed
    from a CUDA graph (lesson 06).
    """
    if loop.graphed:
        return loop.graphed(batch)
    with distributed.sync_gradients(state.model, sync):  # several processes: average gradients
        loss = forward_backward(state, batch, loop.grad_accum_steps)  # autocast, backward
    if sync:
        optimizer_step(state.optimizer, state.scaler, loop.max_grad_norm)
        state.optimizer.zero_grad(set_to_none=True)
    return loss


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


def _compiled(model, compile, first_labels):
    """Return fit's model through torch.compile; `compile`: a mode, or compile_model's args."""
    # HF's first forward would set config.problem_type, which forces a second compilation
    compiling.settle_problem_type(distributed.unwrap(model), first_labels)
    options = {"mode": compile} if isinstance(compile, str) else dict(compile)
    return compiling.compile_model(model, **options)


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
