"""Lesson 02's full-profile code path, run on local stand-ins of the same shape.

No network here, so SST-2 and bert-base-uncased are replaced by look-alikes: a data set saved
with `save_to_disk` in SST-2's columns and splits (sentence, label, idx; train, validation and
an unlabelled test split), and a randomly initialised BERT-base (`BertConfig()` defaults) saved
with `save_pretrained`, with the MiniLM tokenizer (the same bert-base-uncased WordPiece vocab).
The settings point at them through the FTLAB_TEXT_MODEL and FTLAB_TEXT_DATASET overrides.
"""

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

import ftlab
from ftlab.data import offline
from ftlab.data.text import hub_dataset_args, load_text_dataset, text_loaders
from ftlab.models.classifiers import text_classifier
from ftlab.setup.assets import minilm_dir
from ftlab.setup.settings import LESSONS
from ftlab.training.loop import fit

SST2_FEATURES = Features(
    {
        "sentence": Value("string"),
        "label": ClassLabel(names=["negative", "positive"]),
        "idx": Value("int32"),
    }
)


def _sst2_standin(folder):
    reviews = offline.toy_reviews(num_train=48, num_test=40, seed=1)

    def split(rows, unlabelled=False):
        labels = [-1] * len(rows["label"]) if unlabelled else rows["label"]
        columns = {"sentence": rows["sentence"], "label": labels, "idx": list(range(len(labels)))}
        return Dataset.from_dict(columns, features=SST2_FEATURES)

    DatasetDict(
        {
            "train": split(reviews["train"][:]),
            "validation": split(reviews["test"][:24]),
            "test": split(reviews["test"][24:], unlabelled=True),
        }
    ).save_to_disk(str(folder))  # a str: older datasets hand the path to fsspec as it is


def _bert_base_standin(folder):
    from transformers import AutoTokenizer, BertConfig, BertModel

    model = BertModel(BertConfig())  # bert-base-uncased's shape: 12 layers, 768 wide
    model.save_pretrained(folder)  # a bare encoder, like the hub checkpoint: no classifier
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_profile")
    _sst2_standin(root / "sst2")
    _bert_base_standin(root / "bert-base")
    return {"text_dataset": str(root / "sst2"), "text_model": str(root / "bert-base")}


@pytest.fixture
def full_profile(monkeypatch, standins):
    monkeypatch.setenv("FTLAB_PROFILE", "full")
    monkeypatch.setenv("FTLAB_TEXT_MODEL", standins["text_model"])
    monkeypatch.setenv("FTLAB_TEXT_DATASET", standins["text_dataset"])
    return standins


def test_full_profile_names_the_public_checkpoint_and_data_set():
    full = {name: pair[0] for name, pair in LESSONS["02_bert_text_classification"].items()}
    assert full["text_model"] == "bert-base-uncased"
    assert hub_dataset_args(full["text_dataset"]) == (
        "glue",
        "sst2",
    )  # load_dataset("glue", "sst2")


def test_hub_name_goes_to_load_dataset(monkeypatch, standins):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None):
        calls.append((path, name))
        return datasets.load_from_disk(standins["text_dataset"])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_text_dataset("glue/sst2")
    assert calls == [("glue", "sst2")]
    assert set(loaded) == {"train", "validation"}  # SST-2's unlabelled test split is dropped


def test_full_profile_path_trains_bert_base_on_sst2_shaped_data(full_profile):
    settings = ftlab.settings(
        "02", batch_size=4, max_length=16, max_train_samples=8, max_eval_samples=8
    )
    assert settings.profile == "full" and settings.lr == 2e-5  # full values, except overrides
    assert settings.text_model == full_profile["text_model"]
    dataset = load_text_dataset(settings.text_dataset, settings.text_column, settings.label_column)
    assert set(dataset) == {"train", "validation"} and len(dataset["validation"]) == 24
    model, tokenizer = text_classifier(settings.text_model, num_labels=2)
    assert model.config.hidden_size == 768 and model.config.num_hidden_layers == 12
    train_dl, val_dl = text_loaders(
        dataset,
        tokenizer,
        settings.batch_size,
        settings.max_length,
        settings.max_train_samples,
        settings.max_eval_samples,
        seed=settings.seed,
    )
    batch = next(iter(train_dl))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 16
    history = fit(
        model,
        train_dl,
        val_dl,
        lr=settings.lr,
        max_steps=2,
        warmup_ratio=settings.warmup_ratio,
        progress=False,
        seed=settings.seed,
    )
    assert len(history.steps) == 2
    assert 0.0 <= history.epochs[-1]["val_accuracy"] <= 1.0
