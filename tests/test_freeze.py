"""Tests for ftlab.freeze: block discovery per family, presets, patterns, lr groups, callback."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ftlab import freeze as fz
from ftlab.models.blocks import blocks
from ftlab.models.classifiers import count_parameters


@pytest.fixture(scope="module")
def bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


@pytest.fixture(scope="module")
def resnet():
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=3)


@pytest.fixture(scope="module")
def effnet():
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3)


class TinyNet(nn.Module):
    """A stem, a stack of three layers and a head: five blocks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # (batch, 4) -> (batch, 2)
        x = torch.relu(self.stem(x))
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def names(found):
    return [block.name for block in found]


def assert_partition(model, found):
    """Every parameter is in exactly one block."""
    listed = [name for block in found for name in block.parameter_names]
    assert sorted(listed) == sorted(name for name, _ in model.named_parameters())
    assert len(listed) == len(set(listed))


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_blocks_bert(bert):
    found = blocks(bert)
    assert names(found) == [
        "bert.embeddings",
        "bert.encoder.layer.0",
        "bert.encoder.layer.1 + bert.pooler",
        "classifier",
    ]
    assert_partition(bert, found)


def test_blocks_resnet(resnet):
    found = blocks(resnet)
    assert names(found) == ["conv1 + bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert_partition(resnet, found)


def test_blocks_timm_efficientnet(effnet):
    found = blocks(effnet)
    stages = [f"blocks.{i}" for i in range(6)]
    assert names(found) == [
        "conv_stem + bn1",
        *stages,
        "blocks.6 + conv_head + bn2",
        "classifier",
    ]
    assert_partition(effnet, found)


def test_blocks_put_direct_parameters_in_the_stem():
    model = TinyNet()
    model.cls_token = nn.Parameter(torch.zeros(8))  # like a ViT's class token
    found = blocks(model)
    assert names(found) == ["stem", "layers.0", "layers.1", "layers.2", "head"]
    assert "cls_token" in found[0].parameter_names
    assert_partition(model, found)


def test_blocks_override(bert):
    found = blocks(
        bert, override=[["bert.embeddings", "bert.encoder.*"], "bert.pooler", "classifier"]
    )
    assert names(found) == ["bert.embeddings + bert.encoder.*", "bert.pooler", "classifier"]
    assert found[1].parameter_names == ("bert.pooler.dense.weight", "bert.pooler.dense.bias")
    with pytest.raises(ValueError, match="is in block"):
        blocks(bert, override=["bert.encoder.*", "bert.encoder.layer.0", "classifier"])
    with pytest.raises(ValueError, match="closest names"):
        blocks(bert, override=["bert.embedings", "classifier"])


def test_blocks_of_a_model_without_parameters():
    with pytest.raises(ValueError, match="no parameters"):
        blocks(nn.ReLU())


def test_freeze_and_unfreeze_by_module_name_and_glob(bert):
    fz.full(bert)
    frozen = fz.freeze(bert, "bert.embeddings")
    assert frozen and all(name.startswith("bert.embeddings.") for name in frozen)
    assert trainable_names(bert) == {n for n, _ in bert.named_parameters()} - set(frozen)
    fz.freeze(bert, "*")
    assert trainable_names(bert) == set()
    biases = fz.unfreeze(bert, "*.bias")
    assert trainable_names(bert) == set(biases)
    assert all(name.endswith(".bias") for name in biases)
    # a list of patterns; `*` crosses dots, so layer.* covers every sublayer
    fz.unfreeze(bert, ["bert.encoder.layer.*", "classifier"])
    assert {n for n in trainable_names(bert) if not n.endswith(".bias")} == {
        n
        for n, _ in bert.named_parameters()
        if (n.startswith("bert.encoder.layer.") or n.startswith("classifier."))
        and not n.endswith(".bias")
    }


def test_freeze_unknown_pattern_lists_closest_names(bert):
    with pytest.raises(ValueError, match="matches no parameter") as error:
        fz.freeze(bert, "bert.embedding")
    assert "bert.embeddings" in str(error.value)
    with pytest.raises(ValueError, match="classifier"):
        fz.unfreeze(bert, "clasifier.weight")


def test_head_only_trains_the_head(resnet):
    fz.head_only(resnet)
    assert trainable_names(resnet) == {"fc.weight", "fc.bias"}
    assert count_parameters(resnet, trainable_only=True) == 512 * 3 + 3


def test_last_k_counts(resnet, effnet):
    fz.last_k(resnet, 2)
    expected = sum(
        p.numel() for m in (resnet.layer3, resnet.layer4, resnet.fc) for p in m.parameters()
    )
    assert count_parameters(resnet, trainable_only=True) == expected
    fz.last_k(resnet, 5)  # every block below the head: the same as full
    assert count_parameters(resnet, trainable_only=True) == count_parameters(resnet)
    fz.last_k(effnet, 1)
    top = (effnet.blocks[6], effnet.conv_head, effnet.bn2, effnet.classifier)
    assert count_parameters(effnet, trainable_only=True) == sum(
        p.numel() for m in top for p in m.parameters()
    )


def test_last_k_too_large_states_the_count(resnet):
    with pytest.raises(ValueError, match="has 5 blocks below its head"):
        fz.last_k(resnet, 6)
    with pytest.raises(ValueError, match="from 0 to 5"):
        fz.last_k(resnet, -1)


def test_bias_only_is_bitfit(bert):
    fz.bias_only(bert)
    trainable = trainable_names(bert)
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(n.endswith(".bias") or n.startswith("classifier.") for n in trainable)
    all_biases = {n for n, _ in bert.named_parameters() if n.endswith(".bias")}
    assert all_biases <= trainable


def test_full_unfreezes_everything(effnet):
    fz.head_only(effnet)
    fz.full(effnet)
    assert count_parameters(effnet, trainable_only=True) == count_parameters(effnet)


def test_trainable_report_matches_counts(bert):
    fz.last_k(bert, 1)
    report = fz.trainable_report(bert)
    assert [row[0] for row in report.rows] == names(blocks(bert))
    assert report.total == count_parameters(bert)
    assert report.trainable == count_parameters(bert, trainable_only=True)
    assert report.rows[0][1] == 0 and report.rows[-1][1] == report.rows[-1][2]
    assert report.adamw_state_bytes == 8 * report.trainable
    text = repr(report)
    assert "bert.embeddings" in text and "total" in text and "AdamW state" in text


def test_layerwise_lr_groups_cover_trainable_params_once(bert):
    fz.full(bert)
    groups = fz.layerwise_lr_groups(bert, lr=1e-3, decay=0.5)
    assert [g["name"] for g in groups] == names(blocks(bert))
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * 0.5**3, 2.5e-4, 5e-4, 1e-3])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in bert.parameters())
    torch.optim.AdamW(groups)  # torch rejects a parameter that appears in two groups


def test_layerwise_lr_groups_skip_frozen_params(bert):
    fz.last_k(bert, 1)
    groups = fz.layerwise_lr_groups(bert, lr=1e-3, decay=0.9)
    assert [g["name"] for g in groups] == ["bert.encoder.layer.1 + bert.pooler", "classifier"]
    ids = sorted(id(p) for g in groups for p in g["params"])
    assert ids == sorted(id(p) for p in bert.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="decay"):
        fz.layerwise_lr_groups(bert, lr=1e-3, decay=1.5)


def test_discriminative_lr_groups(resnet):
    fz.full(resnet)
    lrs = [1e-5, 2e-5, 3e-5, 4e-5, 5e-5, 1e-3]
    groups = fz.discriminative_lr_groups(resnet, lrs)
    assert [g["lr"] for g in groups] == lrs
    by_name = fz.discriminative_lr_groups(
        resnet, dict(zip(names(blocks(resnet)), lrs, strict=True))
    )
    assert [g["lr"] for g in by_name] == lrs
    with pytest.raises(ValueError, match="got 2 lrs for 6 blocks"):
        fz.discriminative_lr_groups(resnet, [1e-5, 1e-3])
    with pytest.raises(ValueError, match="one lr for each block"):
        fz.discriminative_lr_groups(resnet, {"fc": 1e-3})


def test_lr_groups_refuse_trainable_params_outside_blocks():
    model = TinyNet()
    override = ["stem", "layers.*", "head.weight"]  # head.bias is in no block
    with pytest.raises(ValueError, match="head.bias"):
        fz.layerwise_lr_groups(model, lr=1e-3, decay=0.5, blocks=override)


def test_gradual_unfreezing_adds_params_to_the_optimizer():
    model = TinyNet()
    callback = fz.GradualUnfreezing()
    fz.head_only(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    state = SimpleNamespace(model=model, optimizer=optimizer, epoch=0, step=0)
    callback.on_train_start(state)
    callback.on_epoch_start(state)
    assert trainable_names(model) == {"head.weight", "head.bias"}
    state.epoch = 2
    callback.on_epoch_start(state)
    assert trainable_names(model) == {
        f"{m}.{p}" for m in ("layers.1", "layers.2", "head") for p in ("weight", "bias")
    }
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in model.parameters() if p.requires_grad} <= held
    added = optimizer.param_groups[1:]  # weights with the first group's decay, biases without
    assert [g["weight_decay"] for g in added] == [optimizer.param_groups[0]["weight_decay"], 0.0]
    assert [g["lr"] for g in added] == [1e-3, 1e-3]
    state.epoch = 9  # more epochs than blocks: everything trains, nothing breaks
    callback.on_epoch_start(state)
    assert count_parameters(model, trainable_only=True) == count_parameters(model)
    assert callback.unfrozen == [0, 2, 4]
    with pytest.raises(ValueError, match="every_steps"):
        fz.GradualUnfreezing(every_steps=0)


class Snapshots:
    """A fit callback that records every parameter at the start and after each epoch."""

    def __init__(self):
        self.epochs = []

    def on_train_start(self, state):
        self.start = {n: p.detach().clone() for n, p in state.model.named_parameters()}

    def on_epoch_end(self, state):
        self.epochs.append({n: p.detach().clone() for n, p in state.model.named_parameters()})
        self.lrs = [group["lr"] for group in state.optimizer.param_groups]


@pytest.mark.parametrize("setup", ["fit_builds_optimizer", "adamw_on_all", "frozen_before_fit"])
def test_gradual_unfreezing_with_fit_changes_only_unfrozen_blocks(setup):
    from ftlab.training.loop import fit

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    train_dl = torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=16)
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2) if setup == "adamw_on_all" else None
    if setup == "frozen_before_fit":
        fz.head_only(model)  # fit's optimizer then holds the head only; the callback adds the rest
    snapshots = Snapshots()
    callbacks = [fz.GradualUnfreezing(), snapshots]
    fit(model, train_dl, optimizer=optimizer, lr=1e-2, num_epochs=3, callbacks=callbacks,
        progress=False, seed=0, device="cpu", check=False)  # fmt: skip
    before = [snapshots.start, *snapshots.epochs[:-1]]
    moved = [
        {n.rsplit(".", 1)[0] for n in a if not torch.equal(a[n], b[n])}
        for a, b in zip(before, snapshots.epochs, strict=True)
    ]
    assert moved == [{"head"}, {"head", "layers.2"}, {"head", "layers.2", "layers.1"}]
    assert len(set(snapshots.lrs)) == 1  # added groups follow the same linear schedule
