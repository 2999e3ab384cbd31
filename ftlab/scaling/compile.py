"""torch.compile for fine-tuning: a compiled step for `fit`, and a cache that survives a restart.

Taught in lesson 06. Compiling fuses the model's small kernels and, in "reduce-overhead" mode,
replays them as CUDA graphs; the cache saves the compiled artifacts so that a new session
(a Colab reconnect) skips most of the compilation.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ftlab.training import distributed
from ftlab.training.checkpoint import atomic_write
from ftlab.training.loop import EagerStep

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompiledStep(EagerStep):
    """Lesson 02's step on the model run through `torch.compile`. Taught in lesson 06.

    `fit(model, train_dl, step=CompiledStep("reduce-overhead", dynamic=True))`; the arguments
    are `compile_model`'s. Only the model's forward and backward are compiled: clipping and the
    optimizer step stay as in lesson 02.
    """

    def __init__(self, mode: str = "default", **options):
        _check_mode(mode)  # a typo is refused here, not after the first batch
        self.options = {"mode": mode, **options}

    def start(self, state, loop) -> None:
        """Wrap `state.model` in `torch.compile`; it compiles at the first batch."""
        super().start(state, loop)
        state.model = compile_model(state.model, **self.options)

    def __call__(self, state, batch, sync: bool) -> torch.Tensor:
        """Train on one batch with the compiled model; return its detached loss."""
        self.before_forward(state, batch)
        return super().__call__(state, batch, sync)

    @staticmethod
    def before_forward(state, batch) -> None:
        """Settle a HF model's problem_type: its first forward would change it, and recompile."""
        settle_problem_type(distributed.unwrap(state.model), _labels(batch))


def compile_model(
    model: nn.Module, mode: str = "default", *, dynamic: bool = False, backend="inductor"
):
    """Return `torch.compile(model)`: the model's forward and backward as compiled graphs.

    Taught in lesson 06. "reduce-overhead" adds CUDA graphs (CUDA only): the biggest gain at
    small batches, so pair it with `BucketCollator` and drop_last=True. `dynamic=False` compiles
    one graph per bucket; `dynamic=True` compiles one graph with a symbolic sequence length for
    every bucket (CUDA graphs are still recorded per shape): a shorter warm-up. `backend="eager"`
    captures the graphs without compiling them, which is quick (tests, counting graphs).
    """
    _check_mode(mode)
    if backend != "inductor":  # other backends (e.g. "eager" for tests) take no mode
        return torch.compile(model, backend=backend, dynamic=dynamic)
    return torch.compile(model, mode=mode, dynamic=dynamic)


@contextlib.contextmanager
def compile_cache(path):
    """Reuse `torch.compile`'s work on a fresh machine: load it from `path`, save it back there.

    Taught in lesson 06. Inductor keeps what it compiled in `TORCHINDUCTOR_CACHE_DIR`, a temporary
    folder: a second run on the same machine starts fast, a new Colab runtime compiles again.
    Inside `with compile_cache("/content/drive/MyDrive/ftlab.compiled"):` the artifacts
    saved in the file (if it exists) are loaded first, and everything compiled in this process
    is saved to it at the end (atomically; with several processes, by rank 0). Artifacts only
    serve the same torch and Triton versions and GPU model; others are compiled anew. Yields a
    report: `loaded` and `saved` artifact counts, `hits` of Inductor's graph cache in the block.
    """
    if not hasattr(torch.compiler, "save_cache_artifacts"):
        raise RuntimeError(
            f"compile_cache needs torch >= 2.7 (torch.compiler.save_cache_artifacts); this "
            f"is torch {torch.__version__}. Upgrade torch, or leave it out: Inductor's own cache "
            "folder still serves a second run on the same machine"
        )
    from torch._dynamo.utils import counters  # not at import: it takes seconds to load

    path = Path(path)
    report = {"path": str(path), "loaded": _load_artifacts(path) if path.exists() else 0}
    hits_before = counters["inductor"]["fxgraph_cache_hit"]
    try:
        yield report
    finally:
        report["hits"] = counters["inductor"]["fxgraph_cache_hit"] - hits_before
        artifacts = torch.compiler.save_cache_artifacts()  # None when nothing was compiled
        report["saved"] = _artifact_count(artifacts[1]) if artifacts else 0
        if artifacts and distributed.is_main_process():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda file: file.write(artifacts[0]))


def _load_artifacts(path: Path) -> int:
    compiler_cache_log = logging.getLogger("torch.compiler._cache")
    level = compiler_cache_log.level
    compiler_cache_log.setLevel(logging.ERROR)  # its own traceback for an unreadable file
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
    finally:
        compiler_cache_log.setLevel(level)
    if info is None:
        warnings.warn(
            f"{path} holds no compile artifacts this torch can read (written by another "
            "version, or damaged); compiling from scratch, and saving over it what compiles",
            stacklevel=3,
        )
        return 0
    return _artifact_count(info)


def _artifact_count(info) -> int:
    return sum(len(keys) for keys in info.artifacts.values())


def _check_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")


def _labels(batch) -> torch.Tensor | None:
    """The labels of a dict batch, which a Hugging Face forward reads; None otherwise."""
    return batch.get("labels") if isinstance(batch, dict) else None


def settle_problem_type(model: nn.Module, labels: torch.Tensor | None) -> None:
    """Set a Hugging Face model's `config.problem_type` now, by the rule its forward uses.

    Taught in lesson 06. A `...ForSequenceClassification` model picks its loss at the first
    forward with labels and stores the choice in its config; a compiled model sees that change
    and compiles everything again. Integer labels and num_labels > 1 mean
    "single_label_classification", num_labels == 1 "regression", anything else
    "multi_label_classification". Models without a config, or with the type set, are left alone.
    """
    config = getattr(model, "config", None)
    if labels is None or getattr(config, "problem_type", "unset") is not None:
        return
    if config.num_labels == 1:
        config.problem_type = "regression"
    elif labels.dtype in (torch.long, torch.int):
        config.problem_type = "single_label_classification"
    else:
        config.problem_type = "multi_label_classification"
