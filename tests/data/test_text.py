"""Tests for ftlab.data.text: loading, split rule, column checks, tokenization, dynamic padding."""

import datasets
import pytest
import torch
from datasets import Dataset, DatasetDict

from ftlab.data import offline
from ftlab.data.text import (
    hub_dataset_args,
    load_text_dataset,
    padding_waste,
    text_loaders,
    tokenize,
)
from ftlab.setup.assets import minilm_dir

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "labels")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def _sst2_like(test_labels=-1):
    """A tiny data set in SST-2's shape: sentence, label, idx; the test split unlabelled."""

    def split(sentences, labels):
        return Dataset.from_dict(
            {"sentence": sentences, "label": labels, "idx": list(range(len(sentences)))}
        )

    return DatasetDict(
        {
            "train": split(["a fine film", "a dull film", "great", "bad"], [1, 0, 1, 0]),
            "validation": split(["superb", "tedious"], [1, 0]),
            "test": split(["lovely", "awful"], [test_labels, test_labels]),
        }
    )


def test_toy_reviews_exposes_its_test_split_as_validation():
    reviews = load_text_dataset("toy_reviews")
    assert set(reviews) == {"train", "validation"}
    expected = offline.toy_reviews()["test"][:]["sentence"]
    assert reviews["validation"][:]["sentence"] == expected


def test_local_folder_keeps_validation_and_drops_the_unlabelled_test_split(tmp_path):
    _sst2_like().save_to_disk(str(tmp_path / "sst2"))
    loaded = load_text_dataset(str(tmp_path / "sst2"))
    assert set(loaded) == {"train", "validation"}
    assert loaded["validation"][:]["sentence"] == ["superb", "tedious"]


def test_an_unlabelled_evaluation_split_is_refused(tmp_path):
    data = _sst2_like()
    DatasetDict({"train": data["train"], "test": data["test"]}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match="no labels"):
        load_text_dataset(str(tmp_path / "d"))


def test_missing_column_error_names_the_columns_that_exist(tmp_path):
    data = _sst2_like().rename_column("sentence", "text")
    data.save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"no column 'sentence'.*\['text', 'label', 'idx'\]"):
        load_text_dataset(str(tmp_path / "d"))
    loaded = load_text_dataset(str(tmp_path / "d"), text_column="text")
    assert loaded["train"][0]["text"] == "a fine film"
    with pytest.raises(ValueError, match="no column 'stars'"):
        load_text_dataset(str(tmp_path / "d"), text_column="text", label_column="stars")


def test_missing_splits_are_explained(tmp_path):
    data = _sst2_like()
    data["train"].save_to_disk(str(tmp_path / "single"))
    with pytest.raises(ValueError, match="single split"):
        load_text_dataset(str(tmp_path / "single"))
    DatasetDict({"train": data["train"]}).save_to_disk(str(tmp_path / "no_eval"))
    with pytest.raises(ValueError, match="no evaluation split"):
        load_text_dataset(str(tmp_path / "no_eval"))
    DatasetDict({"validation": data["validation"]}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(ValueError, match="no 'train' split"):
        load_text_dataset(str(tmp_path / "no_train"))


def test_hub_names_split_into_path_and_config():
    assert hub_dataset_args("glue/sst2") == ("glue", "sst2")
    assert hub_dataset_args("nyu-mll/glue/sst2") == ("nyu-mll/glue", "sst2")
    assert hub_dataset_args("nyu-mll/glue:sst2") == ("nyu-mll/glue", "sst2")
    assert hub_dataset_args("stanfordnlp/imdb:") == ("stanfordnlp/imdb", None)
    assert hub_dataset_args("imdb") == ("imdb", None)


def test_tokenize_keeps_labels_drops_text_and_truncates(tokenizer):
    data = _sst2_like()["train"]
    long = data.add_item({"sentence": "word " * 50, "label": 1, "idx": 4})
    tokenized = tokenize(long, tokenizer, max_length=8)
    assert set(tokenized.column_names) == set(MODEL_INPUTS)
    assert tokenized[:]["labels"] == [1, 0, 1, 0, 1]
    ids = tokenized[0]["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert max(len(row) for row in tokenized[:]["input_ids"]) == 8  # truncated, not padded
    assert len(tokenized[2]["input_ids"]) == 3  # [CLS] great [SEP]: no padding yet
    with pytest.raises(ValueError, match="its columns are"):
        tokenize(data, tokenizer, max_length=8, text_column="text")


def test_tokenize_leaves_the_progress_bar_setting_as_it_was(tokenizer):
    datasets.enable_progress_bars()
    tokenize(_sst2_like()["train"], tokenizer, max_length=8)
    assert datasets.is_progress_bar_enabled()


def test_dynamic_padding_pads_each_batch_to_its_longest_sentence(tokenizer):
    reviews = load_text_dataset("toy_reviews")
    train_dl, val_dl = text_loaders(reviews, tokenizer, batch_size=16, max_length=32)
    widths = set()
    for batch in val_dl:
        lengths = batch["attention_mask"].sum(dim=1)  # (batch,) real tokens per sentence
        assert batch["input_ids"].shape[1] == lengths.max()  # padded to the batch's longest
        assert set(batch) == set(MODEL_INPUTS)
        widths.add(batch["input_ids"].shape[1])
    assert len(widths) > 1 and max(widths) < 32
    assert len(train_dl.dataset) == 1008 and len(val_dl.dataset) == 864


def test_padding_to_max_length_wastes_more_than_dynamic_padding(tokenizer):
    reviews = load_text_dataset("toy_reviews")
    kwargs = dict(batch_size=16, max_length=32, max_eval_samples=64)
    _, dynamic_dl = text_loaders(reviews, tokenizer, **kwargs)
    _, fixed_dl = text_loaders(reviews, tokenizer, padding="max_length", **kwargs)
    assert all(batch["input_ids"].shape[1] == 32 for batch in fixed_dl)
    dynamic, fixed = padding_waste(dynamic_dl), padding_waste(fixed_dl)
    assert fixed["positions"] == 64 * 32 and fixed["batches"] == 4
    real_tokens = dynamic["positions"] - dynamic["padding"]
    assert real_tokens == fixed["positions"] - fixed["padding"]  # same sentences, same tokens
    assert dynamic["waste"] < fixed["waste"]
    _, multiple_dl = text_loaders(reviews, tokenizer, pad_to_multiple_of=8, **kwargs)
    assert all(batch["input_ids"].shape[1] % 8 == 0 for batch in multiple_dl)
    with pytest.raises(ValueError, match="padding must be"):
        text_loaders(reviews, tokenizer, padding="left", **kwargs)


def test_padding_waste_counts_zeros_of_the_attention_mask():
    batches = [{"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}]
    assert padding_waste(batches) == {"batches": 1, "positions": 8, "padding": 3, "waste": 3 / 8}
    with pytest.raises(ValueError, match="no batches"):
        padding_waste([])


def _order(train_dl):
    return [batch["input_ids"][:, 1].tolist() for batch in train_dl]


def test_seeded_shuffle_is_reproducible_and_subsets_are_seeded(tokenizer):
    reviews = load_text_dataset("toy_reviews")
    kwargs = dict(batch_size=8, max_length=16, max_train_samples=64, max_eval_samples=16)
    first, _ = text_loaders(reviews, tokenizer, seed=3, **kwargs)
    again, val_dl = text_loaders(reviews, tokenizer, seed=3, **kwargs)
    other, _ = text_loaders(reviews, tokenizer, seed=4, **kwargs)
    assert _order(first) == _order(again)
    assert _order(first) != _order(other)
    assert len(first.dataset) == 64 and len(val_dl.dataset) == 16
    assert first.dataset[:]["input_ids"] != other.dataset[:]["input_ids"]  # another subset
    unshuffled = [batch["labels"].tolist() for batch in val_dl]
    assert unshuffled == [batch["labels"].tolist() for batch in val_dl]  # eval order fixed
