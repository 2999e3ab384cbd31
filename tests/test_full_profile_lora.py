"""Lesson 05's full-profile code path (BERT-base on SST-2, LoRA r=8), run on local stand-ins.

No network here, so SST-2 and bert-base-uncased are replaced by look-alikes: a data set saved
with `save_to_disk` in SST-2's columns and splits, and a small randomly initialised BERT (the
same module names as BERT-base, 2 layers of width 32) saved with `save_pretrained`, with the
MiniLM tokenizer (bert-base-uncased's WordPiece vocabulary). The settings point at them through
the FTLAB_TEXT_MODEL and FTLAB_TEXT_DATASET overrides.
"""

import warnings

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

import ftlab
from ftlab.data import offline
from ftlab.data.text import load_text_dataset, text_loaders
from ftlab.lora import add_lora, lora_modules, merge_lora
from ftlab.models.classifiers import count_parameters, text_classifier
from ftlab.setup.assets import minilm_dir
from ftlab.setup.settings import LESSONS
from ftlab.training.loop import fit

peft = pytest.importorskip("peft")
LESSON = "05_parameter_efficient_lora"


def _sst2_standin(folder):
    features = Features(
        {"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]),
         "idx": Value("int32")}
    )  # fmt: skip
    reviews = offline.toy_reviews(num_train=32, num_test=40, seed=1)

    def split(rows, unlabelled=False):
        labels = [-1] * len(rows["label"]) if unlabelled else rows["label"]
        columns = {"sentence": rows["sentence"], "label": labels, "idx": list(range(len(labels)))}
        return Dataset.from_dict(columns, features=features)

    DatasetDict(
        {
            "train": split(reviews["train"][:]),
            "validation": split(reviews["test"][:24]),
            "test": split(reviews["test"][24:], unlabelled=True),  # SST-2's test has no labels
        }
    ).save_to_disk(str(folder))


def _small_bert_standin(folder):
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)  # fmt: skip
    BertModel(config).save_pretrained(folder)  # a bare encoder, like the hub checkpoint
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)


@pytest.fixture
def full_profile(monkeypatch, tmp_path):
    _sst2_standin(tmp_path / "sst2")
    _small_bert_standin(tmp_path / "bert")
    monkeypatch.setenv("FTLAB_PROFILE", "full")
    monkeypatch.setenv("FTLAB_TEXT_MODEL", str(tmp_path / "bert"))
    monkeypatch.setenv("FTLAB_TEXT_DATASET", str(tmp_path / "sst2"))
    return tmp_path


def test_full_profile_is_bert_base_on_sst2_with_lora_r8():
    full = {name: pair[0] for name, pair in LESSONS[LESSON].items()}
    assert full["text_model"] == "bert-base-uncased" and full["text_dataset"] == "glue/sst2"
    assert full["r"] == 8 and full["max_eval_samples"] is None


def test_full_profile_path_trains_saves_and_merges_lora(full_profile):
    settings = ftlab.settings("05", steps=2, batch_size=4, max_length=16)
    assert settings.profile == "full" and settings.adapter_lr == 5e-4
    reviews = load_text_dataset(settings.text_dataset)
    halves = reviews["validation"].train_test_split(test_size=0.5, seed=0)  # as the lesson
    assert len(halves["train"]) == len(halves["test"]) == 12
    model, tokenizer = text_classifier(settings.text_model, num_labels=2)
    train_dl, val_dl = text_loaders(
        {"train": reviews["train"], "validation": halves["train"]},
        tokenizer, settings.batch_size, settings.max_length, seed=settings.seed,
    )  # fmt: skip
    by_hand = add_lora(model, ("query", "value"), settings.r, settings.alpha)
    hidden, layers = 32, 2
    expected = layers * 2 * settings.r * 2 * hidden + hidden * 2 + 2
    assert count_parameters(by_hand, trainable_only=True) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # diagnose finds nothing: lr 5e-4 is fine
        fit(by_hand, train_dl, val_dl, lr=settings.adapter_lr, max_steps=settings.steps,
            progress=False, device="cpu")  # fmt: skip
    merge_lora(by_hand)
    assert not lora_modules(by_hand)

    base, _ = text_classifier(settings.text_model, num_labels=2)
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=0.0,
                             target_modules=["query", "value"], task_type="SEQ_CLS")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a renamed transformers API
        peft_model = peft.get_peft_model(base, config)
    assert count_parameters(peft_model, trainable_only=True) == expected
    fit(peft_model, train_dl, lr=settings.adapter_lr, max_steps=settings.steps, progress=False,
        device="cpu")  # fmt: skip
    peft_model.save_pretrained(full_profile / "adapter")
    fresh, _ = text_classifier(settings.text_model, num_labels=2)
    reloaded = peft.PeftModel.from_pretrained(fresh, full_profile / "adapter").eval()
    batch = next(iter(val_dl))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, peft_model.eval()(**inputs).logits)
