"""Whole-step CUDA graphs: lesson 02's training step recorded once per batch shape, then replayed.

Taught in lesson 06. `compile="reduce-overhead"` puts the model's forward and backward in CUDA
graphs, but the rest of each step still runs in Python: the gradients come back one tensor per
parameter, clipping and AdamW launch their kernels, the loop adds its own. At batch 32 a BERT-base
step on a large GPU is a few milliseconds of arithmetic, and that Python is of the same order.
`fit(..., cuda_graph=True)` records the whole step (forward, loss, backward, clipping, AdamW,
zeroing the gradients) as one CUDA graph per batch shape, so bucket the lengths
(`bucketing.BucketCollator`); each later step of that shape copies the batch into the graph's own
input tensors and replays it. Nothing is compiled: a shape is recorded after a few eager steps.

A graph replays the memory addresses it was recorded with. So the weights, the gradients (zeroed,
never set to None), AdamW's state and the learning rate stay where they are: the learning rate
lives in a device tensor that each step fills from the schedule. When the trainable parameters
change (gradual unfreezing), the graphs are dropped and recorded again. What a replay cannot do
is refused before training by `check_supported`, with what to do instead.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from dataclasses import dataclass

import torch

from ftlab.data.batches import copy_into, map_tensors
from ftlab.training import distributed
from ftlab.training.evaluation import AUTOCAST_DTYPES

WARMUP_STEPS = 3  # eager steps of a shape before it is recorded, as PyTorch's examples do
MAX_SHAPES = 8  # shapes beyond this many run eagerly: each graph keeps its activations' memory
GRAPH_DEVICES = ("cuda",)
_RECORDED = Counter()  # whole-step graphs recorded in this process, by every GraphedStep
RECORDING_FAILED = (
    "recording the training step as a CUDA graph failed, for batches {shape}: {error}\n"
    "A recorded step must not make the host wait for a GPU value: no .item(), float(tensor), "
    "`if tensor:`, .tolist(), print(tensor), .nonzero() or boolean-mask indexing in the model's "
    "forward or its loss. Remove those, or train without cuda_graph=True."
)


def check_supported(device, precision, grad_accum_steps, oom_retry, compile, optimizer) -> None:
    """Raise a ValueError that says what to change if `fit(cuda_graph=True)` cannot replay."""
    if torch.device(device).type not in GRAPH_DEVICES:
        raise ValueError(f"cuda_graph=True needs a CUDA GPU; this run is on {device}")
    problems = [  # (found, what to do instead)
        (precision == "fp16" and optimizer is not None and not _skips_on_device(optimizer),
         f"with fp16, GradScaler asks the host whether this {type(optimizer).__name__} may step; "
         "a fused AdamW decides on the GPU: leave optimizer=None, or pass AdamW(fused=True)"),
        (grad_accum_steps != 1, "gradient accumulation: use a larger batch, or grad_accum_steps=1"),
        (bool(oom_retry), "oom_retry re-splits batches into new shapes: pass oom_retry=False"),
        (_mode(compile) == "reduce-overhead", "compile='reduce-overhead' already records CUDA "
         "graphs: use compile='default' (or none) with cuda_graph=True"),
        (distributed.world_size() > 1, "several processes: the gradient exchange is not "
         "recorded; leave cuda_graph off under torchrun"),
        (optimizer is not None and not _recordable(optimizer), f"this {type(optimizer).__name__} "
         "cannot be recorded: leave optimizer=None (fused AdamW), or build AdamW/Adam with "
         "fused=True or capturable=True"),
    ]  # fmt: skip
    for found, instead in problems:
        if found:
            raise ValueError(f"cuda_graph=True cannot replay this run: {instead}")


def _recordable(optimizer) -> bool:
    defaults = optimizer.defaults
    return "capturable" in defaults and bool(defaults.get("fused") or defaults["capturable"])


def _skips_on_device(optimizer) -> bool:
    """Whether `optimizer` skips an overflowed fp16 step itself, on the GPU (fused Adam/AdamW)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def capture_cuda_graph(step, pool, stream):
    """Record `step()` into a new CUDA graph sharing memory `pool`; return (replay, output, pool).

    Recording runs nothing: the graph's first replay is the step's first real run. `stream` is
    the one the warm-up steps ran on (cuBLAS keeps its handles per stream) and every recording.
    Only this thread is held to a recording's rules ("thread_local"): a DataLoader's pin-memory
    thread may allocate pinned memory meanwhile, which in the default "global" mode would break
    the recording and the loader with it.
    """
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
        output = step()
    return graph.replay, output, graph.pool()


@dataclass
class Recorded:
    """One batch shape's graph: how to replay it, its input tensors and its loss tensor."""

    replay: object
    inputs: object
    loss: torch.Tensor


class GraphedStep:
    """Called with a batch: lesson 02's whole step on it; returns the detached loss.

    The first `warmup_steps` batches of each shape run eagerly on a side stream, the one every
    recording uses too; the next one records the shape's graph, and from then on its batches
    are replayed.
    `capture` records a step: `capture_cuda_graph`, or a stand-in in the tests.
    """

    def __init__(self, model, optimizer, max_grad_norm, precision, scaler=None, capture=None,
                 warmup_steps=None, max_shapes=None):  # fmt: skip
        self.model, self.optimizer = model, optimizer
        self.max_grad_norm, self.precision = max_grad_norm, precision
        self.capture = capture or capture_cuda_graph
        self.warmup_steps = WARMUP_STEPS if warmup_steps is None else warmup_steps
        if self.warmup_steps < 1:  # a recording would make them anew at every replay
            raise ValueError(
                f"warmup_steps must be at least 1, got {self.warmup_steps}: the first eager step "
                "makes AdamW's state and GradScaler's scale, which a recording must find in place"
            )
        self.max_shapes = MAX_SHAPES if max_shapes is None else max_shapes
        self.device = next(model.parameters()).device
        if scaler is None:  # fit passes its own, whose scale its checkpoints keep
            scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.scaler = scaler
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.graphs, self.eager_steps, self.recordings = {}, Counter(), 0
        self.pool, self.trainable, self.lr = None, None, None

    def __call__(self, batch) -> torch.Tensor:
        if self._trainable() != self.trainable:  # first call, or gradual unfreezing
            self._forget()
        key = shape_key(batch)
        recorded = self.graphs.get(key)
        ready = self.eager_steps[key] >= self.warmup_steps and len(self.graphs) < self.max_shapes
        if recorded is None and ready:
            recorded = self.graphs[key] = self._record(batch)
        if recorded is None:
            self.eager_steps[key] += 1
            return self._eager_step(batch)
        self._fill_lr()
        copy_into(recorded.inputs, batch)
        recorded.replay()
        return recorded.loss.clone()  # the next replay overwrites the graph's loss

    def step(self, batch) -> torch.Tensor:
        """Lesson 02's step, as recorded: autocast forward and loss, backward, clip, step, zero.

        With fp16 the loss is scaled and the gradients unscaled before clipping, all on the GPU:
        a fused AdamW reads GradScaler's overflow flag there and skips an overflowed step itself.
        """
        from ftlab.training.step import compute_loss, optimizer_step

        dtype = AUTOCAST_DTYPES[self.precision]
        with torch.autocast(
            self.device.type, dtype=dtype, enabled=self.precision != "fp32", cache_enabled=False
        ):  # no autocast cache: its bf16 copies of the weights would outlive a recording
            loss = compute_loss(self.model, batch)
        self.scaler.scale(loss).backward()  # scaled only with fp16
        optimizer_step(self.optimizer, self.scaler, self.max_grad_norm)  # unscale, clip, step
        self.optimizer.zero_grad(set_to_none=False)  # the graph's gradients stay where they are
        return loss.detach()

    def _fill_lr(self) -> None:
        """Copy the schedule's learning rates for this step into the tensor the graphs read."""
        self.lr.copy_(torch.tensor(_lrs(self.optimizer)), non_blocking=True)

    def _eager_step(self, batch) -> torch.Tensor:
        with _on_stream(self.stream):
            loss = self.step(batch)
        if self.stream is not None:  # made on the side stream, read on the main one
            loss.record_stream(torch.cuda.current_stream(self.device))
        return loss

    def _record(self, batch) -> Recorded:
        inputs = map_tensors(
            batch, torch.Tensor.clone
        )  # the graph's own inputs: each replay reads them
        groups = self.optimizer.param_groups
        saved = [(group["lr"], group["capturable"]) for group in groups]
        for group, lr in zip(groups, self.lr, strict=True):  # AdamW as recorded: it reads
            group["lr"], group["capturable"] = lr, True  # the learning rate from the device
        try:
            step = functools.partial(self.step, inputs)
            replay, loss, self.pool = self.capture(step, self.pool, self.stream)
        except RuntimeError as error:  # torch.AcceleratorError is one
            raise RuntimeError(
                RECORDING_FAILED.format(shape=shape_key(batch), error=error)
            ) from error
        finally:
            for group, (lr, capturable) in zip(groups, saved, strict=True):
                group["lr"], group["capturable"] = lr, capturable
        self.recordings += 1
        _RECORDED["graphs"] += 1
        return Recorded(replay, inputs, loss)

    def _trainable(self) -> tuple:
        groups = self.optimizer.param_groups
        return tuple(id(p) for group in groups for p in group["params"] if p.requires_grad)

    def _forget(self) -> None:
        """Drop every graph: the parameters that train changed, so their addresses did too."""
        self.graphs.clear()
        self.eager_steps.clear()
        self.trainable = self._trainable()
        self.lr = torch.tensor(_lrs(self.optimizer), device=self.device)


def recordings_made() -> int:
    """How many whole-step graphs have been recorded in this process so far (`ftlab bench`)."""
    return _RECORDED["graphs"]


def shape_key(batch) -> tuple:
    """What decides whether a batch can replay a graph: each tensor's name, shape and dtype."""
    items = batch.items() if isinstance(batch, dict) else enumerate(batch)
    return tuple((name, tuple(value.shape), value.dtype) for name, value in items)


def _lrs(optimizer) -> list[float]:
    return [float(group["lr"]) for group in optimizer.param_groups]


def _mode(compile) -> str | None:
    return compile.get("mode") if isinstance(compile, dict) else compile


@contextlib.contextmanager
def _on_stream(side):
    """Run the block on CUDA stream `side`, ordered after and before the main stream's work."""
    if side is None:  # not CUDA
        yield
        return
    main = torch.cuda.current_stream(side.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        yield
    main.wait_stream(side)
