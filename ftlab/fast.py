"""The fast path: fewer padded tokens, few distinct shapes, less host work per step.

Taught in lesson 06. At batch 32 a GPU spends most of a BERT step waiting for Python and for
kernel launches, not computing. Each piece below removes one kind of waste and works on its
own; `ftlab.fit` turns on the ones that are always safe (fused AdamW, non-blocking copies on
CUDA, no `.item()` per step) and leaves the rest to the caller.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ftlab import distributed
from ftlab.batches import to_device  # noqa: F401 (lesson 02's, non-blocking: pinned batches overlap)
from ftlab.checkpoint import atomic_write

BUCKET_MULTIPLE = 32  # pad lengths up to a multiple of this: few shapes, little waste
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Yield shuffled batches of indices whose lengths are close. Taught in lesson 06.

    Shuffle, cut into mega-batches of `mega_batch_size` examples, sort each by length, cut
    those into batches, shuffle the batches. The batch holding the longest example comes first,
    so an out-of-memory error shows at step 1. Seeded: `set_epoch(epoch)` picks the order of an
    epoch; without it, each new pass over the sampler advances the epoch by one.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        mega_batch_size: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        if self.lengths.ndim != 1 or len(self.lengths) == 0:
            raise ValueError("lengths must be a non-empty list with one length per example")
        self.batch_size = batch_size
        self.mega_batch_size = mega_batch_size or 50 * batch_size
        if self.mega_batch_size < batch_size:
            raise ValueError(
                f"mega_batch_size ({self.mega_batch_size}) must be >= batch_size ({batch_size})"
            )
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator)
        batches = []
        for mega in order.split(self.mega_batch_size):
            by_length = mega[self.lengths[mega].argsort(descending=True, stable=True)]
            batches.extend(by_length.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        longest = max(range(len(shuffled)), key=lambda i: int(self.lengths[shuffled[i]].max()))
        shuffled[0], shuffled[longest] = shuffled[longest], shuffled[0]
        for batch in shuffled:
            yield batch.tolist()


def bucket_length(length: int, multiple: int = BUCKET_MULTIPLE, max_length: int | None = None):
    """Round a length up to a multiple of `multiple`, capped at max_length. Taught in lesson 06."""
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    rounded = -(-length // multiple) * multiple
    return rounded if max_length is None else min(rounded, max_length)


class BucketCollator:
    """Pad tokenized examples to the batch's longest length, rounded up to a bucket.

    Taught in lesson 06. `multiple=1` is plain dynamic padding; `multiple=32` (the default)
    gives at most max_length / 32 distinct shapes, which compiled models and CUDA graphs need;
    `multiple=max_length` pads everything to max_length, as lesson 02's first loop did.
    Examples are dicts with "input_ids" (and optionally "attention_mask", "token_type_ids")
    plus "label" or "labels"; the batch is a dict of tensors with "labels".
    """

    def __init__(self, pad_token_id: int = 0, multiple: int = BUCKET_MULTIPLE, max_length=None):
        if multiple < 1:
            raise ValueError(f"multiple must be at least 1, got {multiple}")
        self.pad_token_id, self.multiple, self.max_length = pad_token_id, multiple, max_length

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(example["input_ids"]) for example in examples]
        if self.max_length is not None and max(lengths) > self.max_length:
            raise ValueError(
                f"an example has {max(lengths)} tokens, more than max_length={self.max_length}; "
                "tokenize with truncation=True and the same max_length"
            )
        width = bucket_length(max(lengths), self.multiple, self.max_length)
        batch = {"input_ids": self._pad(examples, "input_ids", width, self.pad_token_id)}
        batch["attention_mask"] = self._pad(examples, "attention_mask", width, 0)
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = self._pad(examples, "token_type_ids", width, 0)
        batch["labels"] = torch.tensor([_label_of(example) for example in examples])
        return batch

    @staticmethod
    def _pad(examples: list[dict], key: str, width: int, value: int) -> torch.Tensor:
        rows = []  # plain lists, padded here, then one tensor: far less host time than per row
        for example in examples:
            if key in example:
                values = example[key]  # a list, or a tensor / array from with_format
                row = values.tolist() if hasattr(values, "tolist") else list(values)
            else:  # attention_mask missing: every real token is attended to
                row = [1] * len(example["input_ids"])
            rows.append(row + [value] * (width - len(row)))
        return torch.tensor(rows, dtype=torch.long)  # (batch, width)


def compile_model(
    model: nn.Module, mode: str = "default", *, dynamic: bool = False, backend="inductor"
):
    """Return `torch.compile(model)`: the model's forward and backward as compiled graphs.

    Taught in lesson 06. "reduce-overhead" adds CUDA graphs (CUDA only): the biggest gain at
    small batches, so pair it with `BucketCollator` and drop_last=True. `dynamic=False` compiles
    one graph per bucket (about 20 s each for BERT-base on an H100); `dynamic=True` compiles
    one graph with a symbolic sequence length for every bucket (CUDA graphs are still recorded
    per shape). Only the model is compiled; the loop and the optimizer step stay Python
    (`fit(cuda_graph=True)`, `ftlab.graphs`, records the whole step).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    if backend != "inductor":  # other backends (e.g. "eager" for tests) take no mode
        return torch.compile(model, backend=backend, dynamic=dynamic)
    return torch.compile(model, mode=mode, dynamic=dynamic)


@contextlib.contextmanager
def compile_cache(path):
    """Reuse `torch.compile`'s work on a fresh machine: load it from `path`, save it back there.

    Taught in lesson 06. Inductor keeps what it compiled in `TORCHINDUCTOR_CACHE_DIR`, a temporary
    folder: a second run on the same machine starts fast, a new Colab runtime compiles again.
    Inside `with fast.compile_cache("/content/drive/MyDrive/ftlab.compiled"):` the artifacts
    saved in the file (if it exists) are loaded first, and everything compiled in this process
    is saved to it at the end (atomically; with several processes, by rank 0). Artifacts only
    serve the same torch and Triton versions and GPU model; others are compiled anew. Yields a
    report: `loaded` and `saved` artifact counts, `hits` of Inductor's graph cache in the block.
    """
    if not hasattr(torch.compiler, "save_cache_artifacts"):
        raise RuntimeError(
            f"fast.compile_cache needs torch >= 2.7 (torch.compiler.save_cache_artifacts); this "
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


def channels_last(model: nn.Module) -> nn.Module:
    """Store a CNN's weights as NHWC, the layout tensor cores read fastest. Taught in lesson 06.

    Feed it images in the same layout: `images.to(memory_format=torch.channels_last)`,
    or let `ImageNormalize(..., channels_last=True)` do it on the GPU.
    """
    return model.to(memory_format=torch.channels_last)


class ImageNormalize(nn.Module):
    """Turn uint8 images (batch, 3, H, W) into normalized floats on the model's device.

    Taught in lesson 06. Put it first in the model (`nn.Sequential(ImageNormalize(mean, std),
    model)`): the loader then copies uint8 bytes, a quarter of float32's, and the GPU does the
    arithmetic.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)  # (1, 3, 1, 1)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(f"ImageNormalize expects uint8 images, got {images.dtype}")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (images.float() - self.mean) / self.std  # (batch, 3, H, W) float32


def loader_kwargs(device: torch.device | str, num_workers: int = 0) -> dict:
    """Return DataLoader keywords: pinned memory on CUDA, so copies can overlap compute.

    Taught in lesson 06. Use with `to_device(batch, device)` (lesson 02), which copies
    non-blocking.
    """
    kwargs = {"pin_memory": torch.device(device).type == "cuda", "num_workers": num_workers}
    if num_workers > 0:
        kwargs["persistent_workers"] = True  # keep workers alive between epochs
    return kwargs


def _label_of(example: dict) -> int:
    for key in ("labels", "label"):
        if key in example:
            return int(example[key])
    raise KeyError(f"example has no 'label' or 'labels' key; its keys are {sorted(example)}")
