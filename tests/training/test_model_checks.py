"""diagnose's model checks: a missing head, a too-low head rate, an optimizer of another model."""

import pytest
import torch
from tiny_models import (
    mlp,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_bert,
    token_loaders,
)
from torch import nn

from ftlab.training.diagnose import diagnose
from ftlab.training.loop import fit


def checks(findings):
    return [finding.check for finding in findings]


def batch():
    return next(iter(token_loaders()[0]))


def head_and_body(model):
    head = list(model.classifier.parameters())
    body = [p for name, p in model.named_parameters() if not name.startswith("classifier")]
    return head, body


class Wrapper(nn.Module):
    """The seeds' wrapper: an encoder and a head, with a forward that calls both."""

    def __init__(self, encoder):
        super().__init__()
        self.bert = encoder
        self.classifier = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, input_ids, attention_mask=None):
        return self.classifier(self.bert(input_ids, attention_mask).pooler_output)


def test_a_head_only_rate_of_1e_5_is_too_low_and_1e_3_is_not():
    model = tiny_bert()
    head, body = head_and_body(model)
    for p in body:
        p.requires_grad_(False)
    low = diagnose(model, torch.optim.AdamW(head, lr=1e-5), verbose=False)
    assert checks(low) == ["head_lr_too_low"]
    assert "1e-05 while the body is frozen" in low[0].message and "1e-3" in low[0].fix
    assert diagnose(model, torch.optim.AdamW(head, lr=1e-3), verbose=False) == []
    assert checks(diagnose(model, lr=1e-5, verbose=False)) == ["head_lr_too_low"]  # no optimizer


def test_a_head_slower_than_the_body_is_flagged_one_small_rate_for_all_is_not():
    model = tiny_bert()
    head, body = head_and_body(model)
    slower = torch.optim.AdamW([{"params": body, "lr": 5e-5}, {"params": head, "lr": 1e-5}])
    found = diagnose(model, slower, verbose=False)
    assert checks(found) == ["head_lr_too_low"] and "below the body's 5e-05" in found[0].message
    assert diagnose(model, torch.optim.AdamW(model.parameters(), lr=2e-5), verbose=False) == []
    faster = torch.optim.AdamW([{"params": body, "lr": 2e-5}, {"params": head, "lr": 1e-3}])
    assert diagnose(model, faster, verbose=False) == []


def test_a_bare_encoder_is_reported_as_having_no_head():
    encoder = tiny_bert().bert  # a BertModel, as AutoModel.from_pretrained gives
    found = diagnose(encoder, torch.optim.AdamW(encoder.parameters(), lr=2e-5), batch(), False)
    assert checks(found) == ["no_head"]
    assert "BertModel is a bare encoder" in found[0].message
    assert "AutoModelForSequenceClassification" in found[0].fix
    assert "no_head" not in checks(diagnose(tiny_bert(), batch=batch(), verbose=False))


def test_a_classifier_assigned_onto_a_bare_encoder_is_found_twice():
    encoder = tiny_bert().bert
    encoder.classifier = nn.Linear(encoder.config.hidden_size, 2)  # forward never calls it
    found = diagnose(encoder, batch=batch(), verbose=False)
    assert checks(found) == ["no_gradient", "no_head"]
    assert "classifier.weight" in found[0].message
    assert ".classifier assigned onto it is never called" in found[1].message


def test_an_optimizer_built_from_a_wrapper_while_the_encoder_is_trained():
    wrapper = Wrapper(tiny_bert().bert)
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=2e-5)
    found = diagnose(wrapper.bert, optimizer, batch(), verbose=False)  # the wrong model passed
    assert checks(found) == ["no_head", "foreign_parameters"]
    assert "holds 2 parameters that are not part of BertModel" in found[1].message
    assert "(2, 32)" in found[1].message
    assert diagnose(wrapper, optimizer, batch(), verbose=False) == []  # the wrapper itself: fine


def test_fit_refuses_a_bare_encoder_with_the_reason():
    encoder = tiny_bert().bert
    with pytest.raises(ValueError, match="bare encoder with no classification head"):
        fit(encoder, token_loaders()[0], lr=2e-5, max_steps=1, progress=False, device="cpu")


def test_models_that_are_not_transformers_get_no_head_or_body_rate_findings():
    model = mlp()
    assert diagnose(model, torch.optim.AdamW(model.parameters(), lr=0.1), verbose=False) == []
