"""ftlab.training.smoke: a sound setup passes; each wiring mistake fails with its reason."""

import torch
from tiny_models import (
    ForgottenHead,
    mlp,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_bert,
    token_loaders,
)
from torch import nn

from ftlab.training.smoke import smoke_test


def mlp_batch(n=12):
    torch.manual_seed(1)
    return torch.randn(n, 8), torch.arange(n) % 3


def test_a_sound_setup_passes_and_is_left_unchanged(capsys):
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    weights = [p.detach().clone() for p in model.parameters()]
    report = smoke_test(model, mlp_batch(), optimizer, steps=60)
    assert report.passed, report.problems
    assert sum(report.losses[-3:]) / 3 < 0.1 * report.losses[0]
    assert report.with_gradient == [n for n, _ in model.named_parameters()]
    assert report.without_gradient == [] and report.missing_from_optimizer == []
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))
    assert not optimizer.state  # no Adam moments left behind
    assert "smoke test: PASS" in capsys.readouterr().out


def test_a_hugging_face_model_on_a_dict_batch_passes():
    model = tiny_bert()
    batch = next(iter(token_loaders()[0]))
    assert smoke_test(model, batch, lr=3e-3, steps=40, verbose=False).passed


def test_a_head_forward_never_calls_fails_and_is_named():
    model = ForgottenHead()
    report = smoke_test(model, mlp_batch(), lr=1e-2, steps=60, verbose=False)
    assert not report.passed
    assert report.without_gradient == ["head.weight", "head.bias"]
    assert "no gradient" in report.problems[0]
    assert "head.weight" in str(report) and "FAIL" in str(report)


def test_parameters_left_out_of_the_optimizer_fail():
    model = mlp()
    optimizer = torch.optim.AdamW(model[0].parameters(), lr=1e-2)  # the last layer left out
    report = smoke_test(model, mlp_batch(), optimizer, verbose=False)
    assert report.missing_from_optimizer == ["2.weight", "2.bias"]
    assert any("not in the optimizer" in problem for problem in report.problems)


def test_frozen_parameters_in_the_optimizer_fail():
    model = mlp()
    model[0].requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    report = smoke_test(model, mlp_batch(), optimizer, steps=60, verbose=False)
    assert report.frozen_in_optimizer == ["0.weight", "0.bias"]
    assert not report.passed


def test_a_learning_rate_far_too_low_fails_on_the_loss():
    model = mlp()
    report = smoke_test(model, mlp_batch(), lr=1e-6, steps=30, verbose=False)
    assert not report.passed and report.without_gradient == []
    assert "did not fall near 0" in report.problems[0]


def test_an_output_with_no_logits_fails_with_the_reason():
    class NoLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(8, 3)

        def forward(self, x):
            return {"hidden": self.layer(x)}

    report = smoke_test(NoLogits(), mlp_batch(), verbose=False)
    assert not report.passed and report.losses == []
    assert "no loss could be computed" in report.problems[0] and "no logits" in report.problems[0]
