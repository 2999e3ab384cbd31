"""diagnose: each classic mistake is reported, a correct setup is not, nothing is changed."""

import warnings

import pytest
import torch
from tiny_models import (
    ForgottenHead,
    TinyCNN,
    blobs,
    image_batch,
    mlp,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_bert,
    token_loaders,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ftlab.training.diagnose import Finding, diagnose
from ftlab.training.loop import fit
from ftlab.training.state import FrozenBatchNormEval

QUIET = {"progress": False, "device": "cpu"}


def mlp_batch(n=8):
    x, y = blobs(n).tensors
    return x, y


def checks(findings):
    return [finding.check for finding in findings]


def frozen_backbone_cnn():
    model = TinyCNN()
    model.backbone.requires_grad_(False)
    return model


def test_correct_setups_report_nothing(capsys):
    model = mlp()
    assert diagnose(model, torch.optim.AdamW(model.parameters(), lr=1e-3), mlp_batch()) == []
    assert "no problems found" in capsys.readouterr().out
    bert = tiny_bert()
    batch = next(iter(token_loaders()[0]))
    assert diagnose(bert, torch.optim.AdamW(bert.parameters(), lr=5e-5), batch, verbose=False) == []
    cnn = frozen_backbone_cnn()
    cnn.backbone.eval()  # frozen BatchNorm kept in eval mode: correct
    head_optimizer = torch.optim.SGD(cnn.head.parameters(), lr=0.1)
    assert diagnose(cnn, head_optimizer, image_batch(), verbose=False) == []
    full_cnn = TinyCNN().train()
    optimizer = torch.optim.SGD(full_cnn.parameters(), lr=0.1)
    assert diagnose(full_cnn, optimizer, image_batch(), lr=0.1, verbose=False) == []


def test_a_head_that_forward_never_calls_gets_no_gradient():
    findings = diagnose(ForgottenHead(), batch=mlp_batch(), verbose=False)
    assert checks(findings) == ["no_gradient"]
    assert "head.weight, head.bias" in findings[0].message and "forward" in findings[0].fix


def test_a_classifier_attached_to_bert_model_that_forward_never_calls():
    # Lesson 02's mistake: BertModel returns hidden states, not logits; the head sits unused.
    bert = tiny_bert().bert  # BertModel: its output has no .logits
    bert.classifier = nn.Linear(bert.config.hidden_size, 2)
    batch = next(iter(token_loaders()[0]))
    findings = diagnose(bert, batch=batch, verbose=False)
    assert checks(findings) == ["no_gradient", "no_head"]  # no_head: see test_model_checks
    assert "classifier.weight, classifier.bias" in findings[0].message
    # fit without the check fails at the loss, saying that no classification head ran
    with pytest.raises(TypeError, match="no logits.*never applies a classification head"):
        fit(bert, token_loaders()[0], check=False, max_steps=1, **QUIET)
    # the right model (the head called on the pooled [CLS] vector) reports nothing
    assert diagnose(tiny_bert(), batch=batch, verbose=False) == []


def test_frozen_parameters_inside_the_optimizer():
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model[0].requires_grad_(False)  # frozen after the optimizer was built
    findings = diagnose(model, optimizer, verbose=False)
    assert checks(findings) == ["frozen_in_optimizer"]
    assert "2 frozen parameters" in findings[0].message and "0.weight" in findings[0].message


def test_trainable_parameters_missing_from_the_optimizer():
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model[2] = nn.Linear(16, 5)  # new head after the optimizer was built
    findings = diagnose(model, optimizer, mlp_batch(), verbose=False)
    # the optimizer misses the new head and still holds the replaced one
    assert checks(findings) == ["missing_from_optimizer", "foreign_parameters"]
    assert "2.weight" in findings[0].message and "replaced" in findings[1].message


def test_a_learning_rate_for_training_from_scratch_on_a_pretrained_transformer():
    bert = tiny_bert()
    assert checks(diagnose(bert, lr=1e-2, verbose=False)) == ["lr_too_high"]
    assert checks(diagnose(bert, torch.optim.AdamW(bert.parameters(), lr=1e-2), verbose=False)) == [
        "lr_too_high"
    ]
    head = list(bert.classifier.parameters())
    body = [p for n, p in bert.named_parameters() if not n.startswith("classifier")]
    split = torch.optim.AdamW([{"params": body, "lr": 2e-5}, {"params": head, "lr": 1e-2}])
    assert diagnose(bert, split, verbose=False) == []  # a high lr on the new head alone is fine
    assert diagnose(mlp(), lr=1e-2, verbose=False) == []  # not a pretrained transformer


def test_frozen_batchnorm_left_in_train_mode():
    model = frozen_backbone_cnn().train()
    findings = diagnose(model, verbose=False)
    assert checks(findings) == ["batchnorm_train_mode"]
    assert "backbone.1" in findings[0].message
    model.backbone.eval()
    assert diagnose(model, verbose=False) == []


def test_labels_the_model_has_no_output_for():
    x, _ = mlp_batch()
    findings = diagnose(mlp(), batch=(x, torch.arange(8) % 5), verbose=False)  # 3 outputs
    assert checks(findings) == ["num_labels"]
    assert "num_labels=5" in findings[0].fix
    batch = next(iter(token_loaders()[0]))
    batch["labels"] = batch["labels"] + 1  # labels 1..2 for a 2-label model
    assert checks(diagnose(tiny_bert(num_labels=2), batch=batch, verbose=False)) == ["num_labels"]


def test_diagnose_leaves_weights_grads_buffers_modes_and_random_state_unchanged():
    model = TinyCNN().train()
    model.head.eval()
    images, labels = image_batch()
    torch.nn.functional.cross_entropy(model(images), labels).backward()  # existing gradients
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # includes BatchNorm stats
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    diagnose(model, batch=(images, labels), verbose=False)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_findings_print_with_their_fix(capsys):
    findings = diagnose(ForgottenHead(), batch=mlp_batch())
    printed = capsys.readouterr().out
    assert isinstance(findings[0], Finding)
    assert "[no_gradient]" in printed and "fix:" in printed


def test_fit_warns_about_findings_and_check_false_silences_them():
    train_dl = DataLoader(blobs(32), batch_size=8)
    with pytest.warns(UserWarning, match="no_gradient"):
        fit(ForgottenHead(), train_dl, **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(ForgottenHead(), train_dl, check=False, **QUIET)
        fit(mlp(), train_dl, **QUIET)  # a correct setup: no warning at all


def test_fit_warns_about_frozen_batchnorm_unless_a_callback_keeps_it_in_eval():
    images, labels = image_batch(32)
    train_dl = DataLoader(TensorDataset(images, labels), batch_size=8)
    model = frozen_backbone_cnn().eval()  # eval now, but fit calls model.train() each epoch
    with pytest.warns(UserWarning, match="batchnorm_train_mode"):
        fit(model, train_dl, lr=1e-3, **QUIET)  # a head-only rate, lest head_lr_too_low warn
    model = frozen_backbone_cnn()
    stats = model.backbone[1].running_mean.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(model, train_dl, lr=1e-3, callbacks=[FrozenBatchNormEval()], **QUIET)
    assert torch.equal(model.backbone[1].running_mean, stats)  # pretrained statistics kept
    assert model.head.training  # the rest of the model did train in train mode


def test_fit_with_a_correct_hugging_face_setup_does_not_warn():
    train_dl, _ = token_loaders()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(tiny_bert(), train_dl, lr=5e-5, max_steps=1, **QUIET)
