"""Batches of similar lengths: less padding, few distinct shapes. Taught in lesson 06.

Sorting a text data set into buckets of close lengths and padding each batch to a multiple of
`BUCKET_MULTIPLE` wastes few padded tokens and gives a compiled or graphed model few shapes to
handle. `loader_kwargs` pins host memory on CUDA so that batch copies overlap compute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BUCKET_MULTIPLE = 32  # pad lengths up to a multiple of this: few shapes, little waste


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
