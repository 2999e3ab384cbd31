"""The whole training step as a CUDA graph: recorded once per batch shape, then replayed.

Taught in lesson 06. `fit(model, train_dl, step=CudaGraphStep())` records lesson 02's step
(forward, loss, backward, clipping, AdamW, zeroing the gradients) as one CUDA graph per batch
shape, after a few eager steps, and replays it: almost no Python runs per step, which is what
a small-batch step on a fast GPU waits for. Bucket the lengths (`BucketCollator`) to keep the
shapes few. A replay reuses the memory addresses it recorded, so the gradients are zeroed in
place, never set to None, and the learning rate is read from a device tensor filled from the
schedule before each replay. `check_supported` refuses, before training, what cannot replay.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from dataclasses import dataclass

import torch

from ftlab.data.batches import copy_into, map_tensors
from ftlab.scaling import compile as compiling
from ftlab.training import distributed
from ftlab.training.evaluation import AUTOCAST_DTYPES
from ftlab.training.step import compute_loss, optimizer_step

WARMUP_STEPS = 3  # eager steps of a shape before it is recorded, as PyTorch's examples do
MAX_SHAPES = 8  # shapes beyond this many run eagerly: each graph keeps its activations' memory
GRAPH_DEVICES = ("cuda",)
RECORDING_FAILED = (
    "recording the training step as a CUDA graph failed, for batches {shape}: {error}\n"
    "A recorded step must not make the host wait for a GPU value: no .item(), float(tensor), "
    "`if tensor:`, .tolist(), print(tensor), .nonzero() or boolean-mask indexing in the model's "
    "forward or its loss. Remove those, or train without CudaGraphStep."
)


class CudaGraphStep:
    """`fit`'s step on each batch shape recorded as one CUDA graph and replayed. Lesson 06.

    `fit(model, train_dl, step=CudaGraphStep())`. `compile="default"` (or a dict of
    `compile_model`'s arguments) records Inductor's kernels instead of eager ones. `capture`,
    `warmup_steps` and `max_shapes` go to `GraphedStep`. `recordings` counts the graphs recorded.
    """

    def __init__(self, compile=None, **graphed_options):
        options = {"mode": compile} if isinstance(compile, str) else compile
        self.compiled = compiling.CompiledStep(**options) if compile else None
        self.compile, self.graphed_options, self.graphed = compile, graphed_options, None

    def start(self, state, loop) -> None:
        """Refuse what a replay cannot do, before any training; get ready to record."""
        check_supported(state.device, state.precision, loop.grad_accum_steps, state.oom_retry,
                        self.compile, state.optimizer)  # fmt: skip
        if self.compiled:
            self.compiled.start(state, loop)  # state.model compiled
        self.graphed = GraphedStep(
            state.model, state.optimizer, loop.max_grad_norm, state.precision, state.scaler,
            **self.graphed_options,
        )  # fmt: skip

    def __call__(self, state, batch, sync: bool) -> torch.Tensor:
        """Train on one batch: eagerly, recording, or replaying; return its detached loss."""
        if self.compiled:
            self.compiled.before_forward(state, batch)
        return self.graphed(batch)

    @property
    def recordings(self) -> int:
        """How many whole-step graphs this step has recorded (`ftlab bench` counts them)."""
        return self.graphed.recordings if self.graphed else 0


def check_supported(device, precision, grad_accum_steps, oom_retry, compile, optimizer) -> None:
    """Raise a ValueError that says what to change if `CudaGraphStep` cannot replay this run."""
    if torch.device(device).type not in GRAPH_DEVICES:
        raise ValueError(f"CudaGraphStep needs a CUDA GPU; this run is on {device}")
    problems = [  # (found, what to do instead)
        (precision == "fp16" and optimizer is not None and not _skips_on_device(optimizer),
         f"with fp16, GradScaler asks the host whether this {type(optimizer).__name__} may step; "
         "a fused AdamW decides on the GPU: leave optimizer=None, or pass AdamW(fused=True)"),
        (grad_accum_steps != 1, "gradient accumulation: use a larger batch, or grad_accum_steps=1"),
        (bool(oom_retry), "oom_retry re-splits batches into new shapes: pass oom_retry=False"),
        (_mode(compile) == "reduce-overhead", "compile='reduce-overhead' already records CUDA "
         "graphs: use CudaGraphStep(compile='default'), or no compile"),
        (distributed.world_size() > 1, "several processes: the gradient exchange is not "
         "recorded; leave CudaGraphStep out under torchrun"),
        (optimizer is not None and not _recordable(optimizer), f"this {type(optimizer).__name__} "
         "cannot be recorded: leave optimizer=None (fused AdamW), or build AdamW/Adam with "
         "fused=True or capturable=True"),
    ]  # fmt: skip
    for found, instead in problems:
        if found:
            raise ValueError(f"CudaGraphStep cannot replay this run: {instead}")


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
