"""The speed-ups: length-grouped batches and bucketed padding, compile, image helpers."""

import pytest
import torch
from torch import nn

from ftlab.data import bucketing
from ftlab.data.batches import to_device
from ftlab.scaling import compile as compiling
from ftlab.scaling import vision


def _lengths(n=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 60, (n,), generator=generator).tolist()


def test_sampler_yields_every_index_once_per_epoch():
    lengths = _lengths(203)
    sampler = bucketing.LengthGroupedBatchSampler(lengths, batch_size=16, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13
    assert sorted(i for batch in batches for i in batch) == list(range(203))
    assert sorted(len(batch) for batch in batches)[1:] == [16] * 12


def test_sampler_groups_lengths_and_puts_longest_batch_first():
    lengths = _lengths(400)
    grouped = list(bucketing.LengthGroupedBatchSampler(lengths, batch_size=16, mega_batch_size=400))
    plain = list(torch.randperm(400, generator=torch.Generator().manual_seed(0)).split(16))

    def padded_tokens(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    # Sorting within mega-batches wastes far fewer padded tokens than random batches.
    assert padded_tokens(grouped) < 0.75 * padded_tokens(plain)
    assert max(lengths) in [lengths[i] for i in grouped[0]]


def test_sampler_is_seeded_and_reshuffles_each_epoch():
    lengths = _lengths()
    first = bucketing.LengthGroupedBatchSampler(lengths, batch_size=8, seed=3)
    second = bucketing.LengthGroupedBatchSampler(lengths, batch_size=8, seed=3)
    epoch0 = list(first)
    assert epoch0 == list(second)
    assert list(first) != epoch0  # next pass = next epoch, another order
    first.set_epoch(0)
    assert list(first) == epoch0
    assert list(bucketing.LengthGroupedBatchSampler(lengths, batch_size=8, seed=4)) != epoch0


def test_sampler_drop_last_and_bad_input():
    sampler = bucketing.LengthGroupedBatchSampler(_lengths(50), batch_size=16, drop_last=True)
    assert len(sampler) == 3 and all(len(batch) == 16 for batch in sampler)
    with pytest.raises(ValueError, match="batch_size"):
        bucketing.LengthGroupedBatchSampler([1, 2], batch_size=0)
    with pytest.raises(ValueError, match="mega_batch_size"):
        bucketing.LengthGroupedBatchSampler([1, 2], batch_size=8, mega_batch_size=4)
    with pytest.raises(ValueError, match="non-empty"):
        bucketing.LengthGroupedBatchSampler([], batch_size=8)


@pytest.mark.parametrize(
    "length, multiple, max_length, expected",
    [(1, 32, None, 32), (32, 32, None, 32), (33, 32, 128, 64), (127, 32, 100, 100), (7, 1, 9, 7)],
)
def test_bucket_length(length, multiple, max_length, expected):
    assert bucketing.bucket_length(length, multiple, max_length) == expected


def test_bucket_length_rejects_zero_multiple():
    with pytest.raises(ValueError, match="multiple"):
        bucketing.bucket_length(5, 0)


def test_collator_pads_to_bucket_with_masks_and_labels():
    examples = [
        {"input_ids": [101, 5, 6, 102], "token_type_ids": [0, 0, 0, 0], "label": 1},
        {"input_ids": [101, 7, 102], "token_type_ids": [0, 0, 0], "label": 0},
    ]
    batch = bucketing.BucketCollator(pad_token_id=0, multiple=8, max_length=16)(examples)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [101, 7, 102, 0, 0, 0, 0, 0]
    assert batch["attention_mask"].sum(dim=1).tolist() == [4, 3]
    assert batch["token_type_ids"].shape == (2, 8)
    assert batch["labels"].tolist() == [1, 0]


def test_collator_matches_hugging_face_dynamic_padding_when_multiple_is_one():
    from tokenizers import Tokenizer, models
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")), pad_token="[PAD]"
    )
    examples = [{"input_ids": [2, 3, 3], "labels": 1}, {"input_ids": [3], "labels": 0}]
    ours = bucketing.BucketCollator(pad_token_id=0, multiple=1)(examples)
    theirs = DataCollatorWithPadding(tokenizer)([dict(e) for e in examples])
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(ours[key], theirs[key]), key


def test_collator_rejects_too_long_and_unlabelled_examples():
    collate = bucketing.BucketCollator(max_length=4)
    with pytest.raises(ValueError, match="truncation=True"):
        collate([{"input_ids": [1, 2, 3, 4, 5], "label": 0}])
    with pytest.raises(KeyError, match="'label'"):
        collate([{"input_ids": [1, 2]}])


def test_compile_model_runs_and_rejects_unknown_mode():
    model = nn.Linear(4, 2)
    compiled = compiling.compile_model(model, "reduce-overhead", backend="eager")
    x = torch.randn(3, 4)
    assert torch.allclose(compiled(x), model(x))
    with pytest.raises(ValueError, match="compile mode"):
        compiling.compile_model(model, "fastest")


def test_image_normalize_matches_float_pipeline_and_channels_last():
    images = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    normalize = vision.ImageNormalize(mean, std, channels_last=True)
    out = normalize(images)
    assert torch.allclose(out, expected, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        normalize(images.float())


def test_channels_last_keeps_outputs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    vision.channels_last(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(
        model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-6
    )


def test_loader_kwargs_and_to_device_on_cpu():
    assert bucketing.loader_kwargs("cpu") == {"pin_memory": False, "num_workers": 0}
    assert bucketing.loader_kwargs("cuda", num_workers=2)["persistent_workers"] is True
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), 3)}
    moved = to_device(batch, "cpu")
    assert torch.equal(moved["x"], batch["x"]) and moved["pair"][1] == 3


def _images_problem():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 8, 8, generator=generator)
    labels = (images[:, 0].mean(dim=(1, 2)) > 0).long()
    return torch.utils.data.DataLoader(list(zip(images, labels, strict=True)), batch_size=4)


def _cnn():
    # No conv bias before BatchNorm: its true gradient is 0, and AdamW would turn rounding
    # noise in it into full-size steps that differ between memory layouts.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )  # fmt: skip


def _fit(model, **kwargs):
    from ftlab.training.loop import fit

    return fit(model, _images_problem(), lr=1e-2, device="cpu", progress=False, check=False,
               seed=0, **kwargs)  # fmt: skip


def test_fit_channels_last_trains_the_same_weights():
    plain, nhwc = _cnn(), _cnn()
    _fit(plain)
    _fit(vision.channels_last(nhwc))  # the learner applies it to the model
    assert nhwc[0].weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain.parameters(), nhwc.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_fit_compile_trains_the_same_weights_and_saves_plain_keys(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="compile mode"):
        _fit(_cnn(), step=compiling.CompiledStep("fastest"))
    calls, compile_model = [], compiling.compile_model

    def eager_compile(model, mode, **options):  # the same wiring, without C++ compilation
        calls.append(mode)
        return compile_model(model, mode, backend="eager", **options)

    monkeypatch.setattr(compiling, "compile_model", eager_compile)
    plain, compiled = _cnn(), _cnn()
    _fit(plain)
    _fit(compiled, step=compiling.CompiledStep("reduce-overhead"), checkpoint_dir=tmp_path)
    assert calls == ["reduce-overhead"]
    for a, b in zip(plain.parameters(), compiled.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    saved = torch.load(sorted(tmp_path.glob("*.pt"))[-1], weights_only=False)
    assert set(saved["model"]) == set(plain.state_dict())  # no "_orig_mod." prefix


def test_settle_problem_type_follows_the_rule_of_the_hf_forward():
    from transformers import BertConfig, BertForSequenceClassification

    config = dict(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                  intermediate_size=8, max_position_embeddings=16)  # fmt: skip
    cases = [  # (num_labels, labels): the type HF's own forward picks for them
        (2, torch.tensor([0, 1])),
        (3, torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])),
        (1, torch.tensor([0.5, 1.5])),
    ]
    for num_labels, labels in cases:
        settled, by_forward = (
            BertForSequenceClassification(BertConfig(**config, num_labels=num_labels))
            for _ in range(2)
        )
        compiling.settle_problem_type(settled, labels)
        by_forward(input_ids=torch.ones(2, 4, dtype=torch.long), labels=labels)
        assert settled.config.problem_type == by_forward.config.problem_type is not None
    chosen = BertForSequenceClassification(BertConfig(**config, num_labels=2))
    chosen.config.problem_type = "multi_label_classification"  # the user's choice stays
    compiling.settle_problem_type(chosen, torch.tensor([0, 1]))
    assert chosen.config.problem_type == "multi_label_classification"
    compiling.settle_problem_type(_cnn(), torch.tensor([0, 1]))  # no config: nothing to do


def _tiny_bert_batches(lengths):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                   intermediate_size=8, max_position_embeddings=32, num_labels=2)
    )  # fmt: skip
    batches = [
        {"input_ids": torch.randint(1, 50, (4, n)), "attention_mask": torch.ones(4, n).long(),
         "labels": torch.tensor([0, 1, 1, 0])}
        for n in lengths
    ]  # fmt: skip
    return model, batches


@pytest.mark.parametrize(
    ("dynamic", "settle", "graphs"),
    [(True, True, 1), (True, False, 2), (False, True, 2)],
    ids=["dynamic-one-graph", "hf-sets-problem-type-recompile", "static-one-per-shape"],
)
def test_fit_compiles_once_for_every_bucket_with_dynamic(monkeypatch, dynamic, settle, graphs):
    from ftlab.training.loop import fit

    compiled_graphs, compile_model = [], compiling.compile_model

    def counting_backend(graph_module, example_inputs):  # dynamo calls it once per new graph
        compiled_graphs.append(graph_module)
        return graph_module.forward

    monkeypatch.setattr(
        compiling, "compile_model", lambda model, **options: compile_model(
            model, **options, backend=counting_backend)
    )  # fmt: skip
    if not settle:  # what happened before: HF's first forward changes the config under dynamo
        monkeypatch.setattr(compiling, "settle_problem_type", lambda model, labels: None)
    model, batches = _tiny_bert_batches([16, 8, 16, 8])
    torch._dynamo.reset()
    fit(model, batches, step=compiling.CompiledStep("default", dynamic=dynamic), device="cpu",
        progress=False, check=False, seed=0)  # fmt: skip
    assert len(compiled_graphs) == graphs
