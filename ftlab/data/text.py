"""Text data for fine-tuning: load a data set, tokenize it, batch it with dynamic padding.

Every data set comes back with the same two splits, so that lessons need not care where it
came from: "train", and "validation", the split we evaluate on. The rule: a data set's own
"validation" split is used if it has one, otherwise its "test" split is renamed "validation";
other splits are dropped. SST-2 (GLUE) therefore keeps train and validation (its test split has
no labels), and `toy_reviews` exposes its test split (the unseen adjectives) as "validation".

Taught in lesson 02.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch.utils.data import DataLoader

EVAL_SPLITS = ("validation", "test")  # the first one a data set has is its evaluation split
PROGRESS_MIN_ROWS = 10_000  # show datasets' progress bar only for maps that take a while


def load_text_dataset(name: str, text_column: str = "sentence", label_column: str = "label"):
    """Return a DatasetDict with "train" and "validation" splits, columns checked.

    `name` is "toy_reviews" (the offline set), a local folder written by `save_to_disk`, or a
    hub data set as `hub_dataset_args` reads it ("glue/sst2" loads `load_dataset("glue", "sst2")`).
    Taught in lesson 02.
    """
    from datasets import DatasetDict

    found = _load(name)
    if not isinstance(found, DatasetDict):
        raise ValueError(
            f"{name!r} holds a single split; save a DatasetDict with a 'train' split and a "
            "'validation' or 'test' split (e.g. dataset.train_test_split(test_size=0.2))"
        )
    if "train" not in found:
        raise ValueError(f"{name!r} has no 'train' split; its splits are {list(found)}")
    eval_split = evaluation_split(found)
    splits = DatasetDict({"train": found["train"], "validation": found[eval_split]})
    for split, dataset in splits.items():
        check_columns(dataset, text_column, label_column, where=f"{name!r} ({split})")
    if max(splits["validation"].unique(label_column)) < 0:
        raise ValueError(
            f"{name!r}: the {eval_split!r} split has no labels (all are -1); "
            "evaluate on a labelled split, e.g. carve one out of train with train_test_split"
        )
    return splits


def hub_dataset_args(name: str) -> tuple[str, str | None]:
    """Split a hub data set name into `load_dataset`'s (path, config).

    "glue/sst2" -> ("glue", "sst2"); "nyu-mll/glue/sst2" -> ("nyu-mll/glue", "sst2"); a colon
    names the config explicitly: "nyu-mll/glue:sst2", and "stanfordnlp/imdb:" (nothing after
    the colon) is a repository with an owner and no config. "imdb" -> ("imdb", None).
    """
    if ":" in name:
        path, _, config = name.partition(":")
        return path, config or None
    path, _, config = name.rpartition("/")
    return (path, config) if path else (name, None)


def evaluation_split(dataset_dict) -> str:
    """Return the name of the split to evaluate on: "validation" if present, else "test"."""
    for split in EVAL_SPLITS:
        if split in dataset_dict:
            return split
    raise ValueError(
        f"no evaluation split: the splits are {list(dataset_dict)}, and one must be named "
        f"{' or '.join(repr(s) for s in EVAL_SPLITS)}"
    )


def check_columns(dataset, text_column: str, label_column: str, where: str = "the data set"):
    """Raise a ValueError naming the columns that exist if a configured column is missing."""
    missing = [c for c in (text_column, label_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{where} has no column {' or '.join(repr(c) for c in missing)}; its columns are "
            f"{dataset.column_names}. Pass text_column=... and label_column=... "
            "(or set FTLAB_TEXT_COLUMN / FTLAB_LABEL_COLUMN) to name the right ones"
        )


def tokenize(
    dataset, tokenizer, max_length: int, text_column: str = "sentence", label_column="label"
):
    """Tokenize a split in batches, truncating to `max_length`; keep "labels", drop the raw text.

    No padding here: the collator pads each batch to its own longest sentence. Taught in lesson 02.
    """
    check_columns(dataset, text_column, label_column)

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch[text_column], truncation=True, max_length=max_length)
        encoded["labels"] = batch[label_column]  # the name the model's forward expects
        return encoded

    with _progress_bars(len(dataset) >= PROGRESS_MIN_ROWS):
        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def text_loaders(
    dataset_dict,
    tokenizer,
    batch_size: int,
    max_length: int,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    pad_to_multiple_of: int | None = None,
    padding: str = "longest",
    text_column: str = "sentence",
    label_column: str = "label",
) -> tuple[DataLoader, DataLoader]:
    """Return (train_dl, val_dl): tokenized, padded per batch, train shuffled by a seeded generator.

    `max_*_samples` keep a seeded random subset. `padding="max_length"` pads every batch to
    `max_length` instead (for comparison); `pad_to_multiple_of=8` suits GPU tensor cores.
    The same seed gives the same batches in the same order. Taught in lesson 02.
    """
    from transformers import DataCollatorWithPadding

    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be 'longest' (dynamic) or 'max_length', got {padding!r}")
    columns = {"text_column": text_column, "label_column": label_column}
    train = _subset(dataset_dict["train"], max_train_samples, seed)
    val = _subset(dataset_dict[evaluation_split(dataset_dict)], max_eval_samples, seed)
    train = tokenize(train, tokenizer, max_length, **columns)
    val = tokenize(val, tokenizer, max_length, **columns)
    collator = DataCollatorWithPadding(
        tokenizer,
        padding=padding,
        max_length=max_length if padding == "max_length" else None,
        pad_to_multiple_of=pad_to_multiple_of,
    )
    generator = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collator
    )
    val_dl = DataLoader(val, batch_size=batch_size, shuffle=False, collate_fn=collator)
    return train_dl, val_dl


def padding_waste(dataloader: DataLoader) -> dict[str, float]:
    """Count the positions a model computes and how many of them are padding. Taught in lesson 02.

    Returns {"batches", "positions", "padding", "waste"}; waste is padding / positions.
    """
    batches = positions = padding = 0
    for batch in dataloader:
        mask = batch["attention_mask"]  # (batch, seq_len): 1 = real token, 0 = padding
        batches += 1
        positions += mask.numel()
        padding += int((mask == 0).sum())
    if positions == 0:
        raise ValueError("the dataloader yielded no batches")
    return {
        "batches": batches,
        "positions": positions,
        "padding": padding,
        "waste": padding / positions,
    }


def _load(name: str):
    if name == "toy_reviews":
        from ftlab.data.offline import toy_reviews

        return toy_reviews()
    if Path(name).expanduser().is_dir():
        from datasets import load_from_disk

        return load_from_disk(str(Path(name).expanduser()))
    from datasets import load_dataset

    return load_dataset(*hub_dataset_args(name))


def _subset(dataset, max_samples: int | None, seed: int):
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Hide datasets' progress bar while `enabled` is False; leave it as it was otherwise."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
