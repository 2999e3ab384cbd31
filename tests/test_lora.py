"""ftlab.lora: the by-hand LoRA against 🤗 PEFT's, merging, and the head that never trains."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tiny_models import (
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_bert,
    token_loaders,
)
from torch import nn

from ftlab.lora import LoRALinear, add_lora, lora_modules, merge_lora
from ftlab.models.classifiers import count_parameters
from ftlab.training.diagnose import diagnose
from ftlab.training.loop import fit

peft = pytest.importorskip("peft")
QUIET = {"progress": False, "device": "cpu"}
TARGETS = ("query", "value")


def batch_of_tokens():
    batch = next(iter(token_loaders()[0]))
    return {key: value for key, value in batch.items() if key != "labels"}


def peft_model(model, r=4, alpha=8, **config):
    config = {"target_modules": list(TARGETS), "lora_dropout": 0.0, **config}
    lora_config = peft.LoraConfig(r=r, lora_alpha=alpha, **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a renamed transformers API
        return peft.get_peft_model(model, lora_config)


def randomize_adapters(model, seed=0):
    """Give every B a random value (B starts at zero), so that the adapters change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def test_a_wrapped_linear_starts_equal_to_the_original_and_adds_the_scaled_update():
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    lora = LoRALinear(copy.deepcopy(linear), r=2, alpha=4)
    x = torch.randn(3, 6)
    assert torch.equal(lora(x), linear(x))  # B = 0: exactly the pretrained output
    assert lora.lora_A.abs().sum() > 0 and not lora.base.weight.requires_grad
    with torch.no_grad():
        lora.lora_B.normal_()
    expected = linear(x) + (4 / 2) * x @ lora.lora_A.T @ lora.lora_B.T
    torch.testing.assert_close(lora(x), expected)
    assert {n for n, p in lora.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}


def test_rank_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="positive integer"):
        LoRALinear(nn.Linear(4, 4), r=0)


def test_add_lora_freezes_the_body_wraps_the_targets_and_trains_the_head():
    model = add_lora(tiny_bert(), TARGETS, r=4, alpha=8)
    wrapped = lora_modules(model)
    assert len(wrapped) == 2 * 2  # query and value in each of 2 layers
    assert all(name.endswith(TARGETS) for name in wrapped)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        *(f"{name}.lora_{m}" for name in wrapped for m in "AB"),
        "classifier.weight",
        "classifier.bias",
    }
    hidden, labels = 32, 2
    assert count_parameters(model, trainable_only=True) == 4 * 4 * (hidden + hidden) + (
        hidden * labels + labels
    )


def test_add_lora_names_what_matches_nothing():
    with pytest.raises(ValueError, match="no nn.Linear .* named"):
        add_lora(tiny_bert(), ("q_proj",))
    with pytest.raises(ValueError, match="modules_to_save.*'score'"):
        add_lora(tiny_bert(), TARGETS, modules_to_save=("score",))


def test_by_hand_and_peft_agree_on_the_same_weights():
    batch = batch_of_tokens()
    mine = add_lora(tiny_bert().eval(), TARGETS, r=4, alpha=8)
    randomize_adapters(mine)
    theirs = peft_model(tiny_bert().eval(), r=4, alpha=8, task_type="SEQ_CLS")
    peft_weights = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, module in lora_modules(mine).items():
            prefix = f"base_model.model.{name}"
            peft_weights[f"{prefix}.lora_A.default.weight"].copy_(module.lora_A)
            peft_weights[f"{prefix}.lora_B.default.weight"].copy_(module.lora_B)
    theirs.eval()
    torch.testing.assert_close(mine(**batch).logits, theirs(**batch).logits)
    assert count_parameters(mine, True) == count_parameters(theirs, True)


def test_both_start_equal_to_the_pretrained_model():
    batch = batch_of_tokens()
    reference = tiny_bert().eval()(**batch).logits
    assert torch.equal(add_lora(tiny_bert().eval(), TARGETS)(**batch).logits, reference)
    assert torch.equal(peft_model(tiny_bert().eval()).eval()(**batch).logits, reference)


def test_merging_gives_the_same_logits_with_plain_linear_layers():
    batch = batch_of_tokens()
    model = add_lora(tiny_bert().eval(), TARGETS, r=4, alpha=8)
    randomize_adapters(model)
    before = model(**batch).logits
    merge_lora(model)
    assert lora_modules(model) == {}
    assert type(model.bert.encoder.layer[0].attention.self.query) is nn.Linear
    torch.testing.assert_close(model(**batch).logits, before, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before, tiny_bert().eval()(**batch).logits, atol=1e-5)  # it changed


def test_peft_merge_and_unload_matches_the_by_hand_merge():
    batch = batch_of_tokens()
    theirs = peft_model(tiny_bert().eval(), r=4, alpha=8)
    randomize_adapters(theirs)
    before = theirs.eval()(**batch).logits
    merged = theirs.merge_and_unload()
    torch.testing.assert_close(merged(**batch).logits, before, rtol=1e-5, atol=1e-6)
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_diagnose_finds_a_head_that_does_not_train():
    batch = next(iter(token_loaders()[0]))
    forgotten = peft_model(tiny_bert())  # no task_type, no modules_to_save: the head is frozen
    findings = diagnose(forgotten, batch=batch, verbose=False)
    assert [f.check for f in findings] == ["frozen_head"]
    assert "classifier" in findings[0].message and "modules_to_save" in findings[0].fix
    by_hand = add_lora(tiny_bert(), TARGETS, modules_to_save=())
    assert [f.check for f in diagnose(by_hand, batch=batch, verbose=False)] == ["frozen_head"]


def test_diagnose_finds_a_head_left_out_of_the_optimizer():
    model = add_lora(tiny_bert(), TARGETS)
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    findings = diagnose(model, torch.optim.AdamW(adapters, lr=1e-3), verbose=False)
    assert "frozen_head" in [f.check for f in findings]


def test_diagnose_accepts_a_head_that_trains():
    batch = next(iter(token_loaders()[0]))
    for model in (
        peft_model(tiny_bert(), task_type="SEQ_CLS"),
        peft_model(tiny_bert(), modules_to_save=["classifier"]),
        add_lora(tiny_bert(), TARGETS),
    ):
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)  # usual for new A, B and head
        assert diagnose(model, optimizer, batch, verbose=False) == []
    assert diagnose(add_lora(tiny_bert(), TARGETS), lr=1e-2, verbose=False) == []  # as fit does
    assert [f.check for f in diagnose(tiny_bert(), lr=1e-2, verbose=False)] == ["lr_too_high"]
    frozen = tiny_bert().requires_grad_(False)  # nothing trains: inference, not a mistake
    assert diagnose(frozen, verbose=False) == []


def test_fit_trains_a_peft_model_and_resumes_it_exactly(tmp_path):
    train_dl, val_dl = token_loaders()

    def run(checkpoint_dir, num_epochs):
        model = peft_model(tiny_bert(), task_type="SEQ_CLS")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # diagnose finds nothing to warn about
            history = fit(
                model, train_dl, val_dl, lr=1e-3, num_epochs=num_epochs, scheduler=None, seed=0,
                checkpoint_dir=checkpoint_dir, **QUIET,
            )  # fmt: skip
        return model, history

    start = {
        k: v.clone() for k, v in peft_model(tiny_bert(), task_type="SEQ_CLS").state_dict().items()
    }
    run(tmp_path / "resumed", num_epochs=1)
    resumed, resumed_history = run(tmp_path / "resumed", num_epochs=2)
    whole, whole_history = run(tmp_path / "whole", num_epochs=2)
    assert resumed_history.step_losses == whole_history.step_losses
    resumed_weights, whole_weights = resumed.state_dict(), whole.state_dict()
    assert all(torch.equal(resumed_weights[k], whole_weights[k]) for k in whole_weights)
    moved = [k for k, v in whole_weights.items() if not torch.equal(v, start[k])]
    assert moved and all("lora_" in k or "modules_to_save" in k for k in moved)
