"""fit: the loop against a hand-written one, schedules, evaluation, callbacks, failures."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import (
    loaders,
    mlp,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_bert,
    token_loaders,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ftlab.training import state as callbacks
from ftlab.training.evaluation import evaluate, predict
from ftlab.training.loop import fit
from ftlab.training.optim import decay_groups, default_optimizer, fused_adamw, make_scheduler
from ftlab.training.state import EarlyStopping

QUIET = {"progress": False, "device": "cpu"}


def test_fit_learns_the_blobs_and_fills_the_history():
    train_dl, val_dl = loaders()
    history = fit(mlp(), train_dl, val_dl, lr=1e-2, num_epochs=3, seed=0, **QUIET)
    assert len(history.steps) == 3 * len(train_dl)
    assert [row["epoch"] for row in history.epochs] == [0, 1, 2]
    assert set(history.epochs[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "seconds"}
    losses = history.values("train_loss")
    assert losses[-1] < losses[0]
    assert history.values("val_accuracy")[-1] > 0.8
    assert history.steps[0]["lr"] == pytest.approx(1e-2)  # linear decay starts at lr
    assert history.steps[-1]["lr"] < history.steps[0]["lr"]
    assert history.to_dict()["epochs"] == history.epochs


def hand_trained_mlp(train_dl, num_epochs=2, lr=1e-2):
    """The loop of lesson 02 with torch.optim.AdamW: the reference for fit."""
    model = mlp()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    for _ in range(num_epochs):
        for x, y in train_dl:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model


def test_fit_equals_the_hand_written_loop_with_torch_adamw():
    train_dl, _ = loaders(shuffle=False)
    model = mlp()
    fit(model, train_dl, lr=1e-2, num_epochs=2, scheduler=None, max_grad_norm=None, **QUIET)
    reference = hand_trained_mlp(train_dl)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(model[0].weight, mlp()[0].weight)  # it did train


def test_gradient_accumulation_equals_one_big_batch():
    big, _ = loaders(batch_size=32, shuffle=False)
    small, _ = loaders(batch_size=16, shuffle=False)
    model_big, model_small = mlp(), mlp()
    options = {"lr": 1e-2, "scheduler": None, "max_grad_norm": None, **QUIET}
    fit(model_big, big, **options)
    fit(model_small, small, grad_accum_steps=2, **options)
    for a, b in zip(model_big.parameters(), model_small.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    model_unaccumulated = mlp()
    fit(model_unaccumulated, small, **options)
    assert not torch.allclose(model_unaccumulated[0].weight, model_big[0].weight, atol=1e-5)


def test_max_steps_caps_the_optimizer_steps_and_clipping_bounds_the_update():
    train_dl, _ = loaders(batch_size=8)
    history = fit(mlp(), train_dl, max_steps=5, num_epochs=10, **QUIET)
    assert len(history.steps) == 5 and len(history.epochs) == 1
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(
        model,
        train_dl,
        optimizer=optimizer,
        max_steps=1,
        max_grad_norm=1e-3,
        scheduler=None,
        **QUIET,
    )
    change = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert change.norm().item() == pytest.approx(1e-3, rel=1e-3)  # SGD lr 1: step = clipped grad


def test_fit_trains_a_hugging_face_model_on_dict_batches():
    train_dl, val_dl = token_loaders()
    model = tiny_bert()
    history = fit(model, train_dl, val_dl, lr=1e-3, num_epochs=1, seed=0, **QUIET)
    assert len(history.steps) == len(train_dl)
    assert all(math.isfinite(row["loss"]) for row in history.steps)
    assert set(history.epochs[0]) >= {"val_loss", "val_accuracy"}


class DictOutput(nn.Module):
    """A hand-written model that returns its output in a plain dict under `key`."""

    def __init__(self, key="logits"):
        super().__init__()
        self.net, self.key = mlp(), key

    def forward(self, inputs):
        return {self.key: self.net(inputs)}


def test_a_model_returning_a_dict_of_logits_trains_and_evaluates():
    train_dl, val_dl = loaders()
    model = DictOutput()
    history = fit(model, train_dl, val_dl, lr=1e-2, num_epochs=3, seed=0, **QUIET)
    # the same network returning a bare tensor trains to the same weights
    reference = fit(mlp(), train_dl, val_dl, lr=1e-2, num_epochs=3, seed=0, **QUIET)
    assert history.values("val_accuracy") == reference.values("val_accuracy")
    assert history.values("val_accuracy")[-1] > 0.8
    assert evaluate(model, val_dl)["accuracy"] == history.epochs[-1]["val_accuracy"]
    with pytest.raises(TypeError, match="returned a dict with no logits"):
        fit(DictOutput(key="hidden"), train_dl, check=False, max_steps=1, **QUIET)


def test_default_optimizer_skips_frozen_parameters_and_decay_of_biases_and_norms():
    model = tiny_bert()
    model.bert.embeddings.requires_grad_(False)
    optimizer = default_optimizer(model, lr=1e-4, weight_decay=0.1, device="cpu")
    held = {
        id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in held, name
        elif "LayerNorm" in name or name.endswith("bias"):
            assert held[id(p)] == 0.0, name
        else:
            assert held[id(p)] == 0.1, name
    with pytest.raises(ValueError, match="no trainable parameters"):
        default_optimizer(mlp().requires_grad_(False), 1e-3, 0.0, "cpu")


def test_decay_groups_split_each_group_and_keep_its_other_settings():
    model = tiny_bert()
    body, head = list(model.bert.parameters()), list(model.classifier.parameters())
    groups = decay_groups([{"params": body, "lr": 1e-5}, {"params": head, "lr": 1e-3}], 0.05)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [
        (1e-5, 0.05), (1e-5, 0.0), (1e-3, 0.05), (1e-3, 0.0)
    ]  # fmt: skip
    held = [p for g in groups for p in g["params"]]
    assert sorted(map(id, held)) == sorted(id(p) for p in model.parameters())  # each once
    for group in groups:
        assert all((p.ndim >= 2) == (group["weight_decay"] > 0) for p in group["params"])
    as_list = decay_groups(head, 0.1)  # a plain list of parameters: one group of each kind
    assert [(len(g["params"]), g["weight_decay"]) for g in as_list] == [(1, 0.1), (1, 0.0)]
    own = decay_groups([{"params": head, "weight_decay": 0.3}], 0.1)  # a group's own decay wins
    assert [g["weight_decay"] for g in own] == [0.3, 0.0]
    assert decay_groups([p for p in head if p.ndim < 2], 0.1) == [
        {"params": [model.classifier.bias], "weight_decay": 0.0}
    ]  # no empty group


def test_default_optimizer_is_fused_on_cpu_and_cuda_only():
    assert default_optimizer(mlp(), 1e-3, 0.0, "cpu").defaults["fused"] is True
    assert default_optimizer(mlp(), 1e-3, 0.0, "mps").defaults["fused"] is False  # no promise
    assert fused_adamw("cuda") and fused_adamw(torch.device("cpu")) and not fused_adamw("meta")


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedules_match_transformers(name):
    import transformers

    reference = {
        "linear": transformers.get_linear_schedule_with_warmup,
        "cosine": transformers.get_cosine_schedule_with_warmup,
    }[name]
    lrs = []
    for make in (
        lambda o: make_scheduler(o, name, 20, warmup_ratio=0.25),
        lambda o: reference(o, 5, 20),
    ):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = make(optimizer)
        lrs.append([])
        for _ in range(20):
            lrs[-1].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert lrs[0] == pytest.approx(lrs[1])
    assert max(lrs[0]) == pytest.approx(0.1) and lrs[0][0] == 0.0


def test_onecycle_and_constant_schedules_and_a_bad_name():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    constant = make_scheduler(optimizer, None, 10)
    for _ in range(10):
        optimizer.step()
        constant.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=0.1)
    onecycle = make_scheduler(optimizer, "onecycle", 10, warmup_ratio=0.3)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        onecycle.step()
    assert max(lrs) == pytest.approx(0.1) and lrs[0] < 0.01 and lrs[-1] < 0.01
    with pytest.raises(ValueError, match="scheduler must be"):
        make_scheduler(optimizer, "step", 10)


def test_evaluate_matches_cross_entropy_and_restores_the_mode():
    train_dl, val_dl = loaders()
    model = mlp().train()
    results = evaluate(model, val_dl, metrics=("accuracy", "macro_f1"))
    x, y = val_dl.dataset.tensors
    with torch.no_grad():
        logits = model(x)
    assert results["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert results["accuracy"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())
    assert 0.0 <= results["macro_f1"] <= 1.0
    assert model.training
    model.eval()
    evaluate(model, val_dl)
    assert not model.training


def test_predict_returns_logits_and_labels_or_none_without_labels():
    _, val_dl = loaders()
    logits, labels = predict(mlp(), val_dl)
    assert logits.shape == (48, 3) and labels.shape == (48,) and logits.dtype == torch.float32
    unlabelled = DataLoader(val_dl.dataset.tensors[0], batch_size=16)
    logits, labels = predict(mlp(), unlabelled)
    assert logits.shape == (48, 3) and labels is None
    with pytest.raises(ValueError, match="needs labels"):
        evaluate(mlp(), unlabelled)


class Recorder:
    """A callback that records the hooks it sees and stops after three steps."""

    def __init__(self):
        self.calls = []

    def on_train_start(self, state):
        self.calls.append("train_start")

    def on_epoch_start(self, state):
        self.calls.append(f"epoch_start {state.epoch}")

    def on_step_end(self, state):
        self.calls.append(f"step {state.step}")
        assert state.model is not None and state.optimizer is not None
        if state.step == 3:
            state.stop = True

    def on_epoch_end(self, state):
        self.calls.append(f"epoch_end {state.history.epochs[-1]['epoch']}")


def test_callbacks_see_every_hook_in_order_and_can_stop_training():
    train_dl, _ = loaders(batch_size=8)  # 12 steps per epoch
    recorder = Recorder()
    history = fit(mlp(), train_dl, num_epochs=3, callbacks=[recorder], **QUIET)
    expected = ["train_start", "epoch_start 0", "step 1", "step 2", "step 3", "epoch_end 0"]
    assert recorder.calls == expected
    assert len(history.steps) == 3


def test_early_stopping_stops_and_restores_the_best_weights():
    train_dl, val_dl = loaders()
    seen = {}

    class Snapshot:  # keeps the weights after each epoch, to compare with the restored ones
        def on_epoch_end(self, state):
            seen[state.epoch] = [p.detach().clone() for p in state.model.parameters()]

    x, y = val_dl.dataset.tensors
    wrong_dl = DataLoader(TensorDataset(x, (y + 1) % 3), batch_size=16)  # learning makes it worse
    model = mlp()
    stopper = EarlyStopping(monitor="loss", patience=2)
    history = fit(
        model, train_dl, wrong_dl, lr=1e-2, num_epochs=20, callbacks=[Snapshot()],
        early_stopping=stopper, **QUIET,
    )  # fmt: skip
    losses = history.values("val_loss")
    assert len(history.epochs) < 20
    assert stopper.best == min(losses) and stopper.best_epoch == losses.index(min(losses))
    assert len(losses) == stopper.best_epoch + 1 + 2  # stopped after `patience` worse epochs
    for p, best in zip(model.parameters(), seen[stopper.best_epoch], strict=True):
        assert torch.equal(p, best)


def test_early_stopping_accepts_a_dict_and_rejects_unknown_metrics():
    train_dl, val_dl = loaders()
    history = fit(
        mlp(), train_dl, val_dl, num_epochs=2, early_stopping={"monitor": "accuracy"}, **QUIET
    )
    assert len(history.epochs) == 2
    assert EarlyStopping("accuracy").mode == "max" and EarlyStopping("val_loss").mode == "min"
    with pytest.raises(KeyError, match="pass val_dl"):
        fit(mlp(), train_dl, num_epochs=1, early_stopping={"monitor": "accuracy"}, **QUIET)


def test_progress_false_prints_nothing_and_true_shows_loss_lr_and_speed(capsys):
    train_dl, val_dl = loaders(batch_size=4)  # 24 steps: two read-backs per epoch
    fit(mlp(), train_dl, val_dl, **QUIET)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    fit(mlp(), train_dl, val_dl, progress=True, device="cpu")
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "lr=" in err and "samples_s=" in err


def test_losses_are_read_back_every_ten_steps_not_every_step(monkeypatch):
    import ftlab.training.state

    reads = []
    original = ftlab.training.state.StepLog.flush

    def counting_flush(self):
        reads.append(len(self.pending))
        original(self)

    monkeypatch.setattr(ftlab.training.state.StepLog, "flush", counting_flush)
    train_dl, _ = loaders(batch_size=4)  # 24 steps
    history = fit(mlp(), train_dl, **QUIET)
    assert [n for n in reads if n] == [10, 10, 4]
    assert len(history.steps) == 24


def test_fit_uses_a_given_optimizer_with_its_param_groups():
    model = mlp()
    optimizer = torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": 1e-4},
            {"params": model[2].parameters(), "lr": 1e-2},
        ]
    )
    train_dl, _ = loaders()
    fit(model, train_dl, optimizer=optimizer, lr=123.0, **QUIET)
    assert [group["initial_lr"] for group in optimizer.param_groups] == [1e-4, 1e-2]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fit_rejects_unknown_batch_shapes_with_a_clear_message():
    triples = DataLoader(TensorDataset(torch.randn(8, 8), torch.zeros(8).long(), torch.zeros(8)))
    with pytest.raises(TypeError, match="dict with 'labels' or an \\(inputs, labels\\) pair"):
        fit(mlp(), triples, check=False, **QUIET)


class NanAfter(nn.Module):
    """An MLP whose logits turn NaN from the `bad_call`-th forward on."""

    def __init__(self, bad_call):
        super().__init__()
        self.net, self.calls, self.bad_call = mlp(), 0, bad_call

    def forward(self, x):
        self.calls += 1
        logits = self.net(x)
        return logits * float("nan") if self.calls >= self.bad_call else logits


def test_a_nan_loss_stops_training_and_names_the_step_and_causes():
    train_dl, _ = loaders(batch_size=4)  # 24 steps; read back at steps 10 and 20
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 13 \(epoch 0\)") as error:
        fit(NanAfter(bad_call=13), train_dl, check=False, **QUIET)
    assert "learning rate is too high" in str(error.value)
    assert "fp16" not in str(error.value)  # fp32 run: no fp16 advice


class MemoryHungry(nn.Module):
    """An MLP that raises CUDA's out-of-memory error for batches larger than `limit`."""

    def __init__(self, limit):
        super().__init__()
        self.net, self.limit, self.sizes = mlp(), limit, []

    def forward(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def test_out_of_memory_names_the_batch_size_and_the_fix():
    train_dl, _ = loaders(batch_size=16)
    with pytest.raises(torch.OutOfMemoryError, match="batch of 16 examples") as error:
        fit(MemoryHungry(limit=4), train_dl, check=False, grad_accum_steps=2, **QUIET)
    assert "grad_accum_steps=4" in str(error.value) and "oom_retry=True" in str(error.value)


def test_oom_retry_halves_the_batch_and_gives_the_same_weights():
    train_dl, _ = loaders(batch_size=16, shuffle=False)
    hungry = MemoryHungry(limit=4)
    options = {"lr": 1e-2, "scheduler": None, "check": False, **QUIET}
    fit(hungry, train_dl, oom_retry=True, **options)
    assert hungry.sizes[:4] == [16, 8, 4, 4] and set(hungry.sizes[4:]) == {4}
    reference = mlp()
    fit(reference, train_dl, **options)
    for a, b in zip(hungry.net.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_labels_outside_the_model_outputs_are_refused_before_training():
    x = torch.randn(16, 8)
    bad_dl = DataLoader(TensorDataset(x, torch.arange(16) % 5), batch_size=8)  # labels 0..4
    for check in (True, False):
        with pytest.raises(ValueError, match=r"labels range over \[0, 4\] but the model has 3"):
            fit(mlp(), bad_dl, check=check, **QUIET)
    data = [{**example, "labels": torch.tensor(2)} for example in token_loaders()[1].dataset]
    with pytest.raises(ValueError, match="num_labels=3"):
        fit(tiny_bert(num_labels=2), DataLoader(data, batch_size=8), **QUIET)


def test_an_empty_loader_is_refused():
    empty = DataLoader(TensorDataset(torch.randn(0, 8), torch.zeros(0).long()), batch_size=4)
    with pytest.raises(ValueError, match="train_dl is empty"):
        fit(mlp(), empty, **QUIET)


class StrayTensor(nn.Module):
    """A module whose tensor attribute is not a registered buffer, so .to(device) misses it."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.offset = torch.zeros(1, 3, device="meta")  # stands for a tensor left on the GPU

    def forward(self, x):
        return torch.cat([self.net(x), self.offset.expand(len(x), 3)])


class OtherDevice(nn.Module):
    """Raises the error CUDA gives when a batch and a layer sit on different devices."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found cuda:0 and cpu!"
        )


@pytest.mark.parametrize("model_class", [StrayTensor, OtherDevice])
def test_model_and_batch_on_different_devices_get_a_clear_message(model_class):
    train_dl, _ = loaders()
    with pytest.raises(RuntimeError, match="model and batch are on different devices") as error:
        fit(model_class(), train_dl, check=False, **QUIET)
    assert "register_buffer" in str(error.value) and "['cpu']" in str(error.value)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32", "auto"])
def test_each_precision_trains_and_auto_means_fp32_on_the_cpu(precision):
    seen = {}

    class Peek:
        def on_train_start(self, state):
            seen["precision"] = state.precision
            seen["scaler"] = state.scaler.is_enabled()

    train_dl, _ = loaders()
    history = fit(mlp(), train_dl, lr=1e-2, precision=precision, callbacks=[Peek()], **QUIET)
    assert all(math.isfinite(loss) for loss in history.step_losses)
    assert seen["precision"] == ("fp32" if precision == "auto" else precision)
    assert seen["scaler"] == (precision == "fp16")  # a GradScaler only for fp16
    with pytest.raises(ValueError, match="precision must be"):
        fit(mlp(), train_dl, precision="fp8", **QUIET)


def test_the_checks_before_training_do_not_change_the_seeded_result():
    train_dl, _ = loaders()

    def dropout_mlp():  # dropout makes the result depend on every random number drawn
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))

    model_checked, model_unchecked, model_other_seed = dropout_mlp(), dropout_mlp(), dropout_mlp()
    fit(model_checked, train_dl, seed=3, check=True, **QUIET)
    fit(model_unchecked, train_dl, seed=3, check=False, **QUIET)
    fit(model_other_seed, train_dl, seed=4, check=True, **QUIET)
    assert torch.equal(model_checked[0].weight, model_unchecked[0].weight)
    assert not torch.equal(model_checked[0].weight, model_other_seed[0].weight)


@pytest.mark.parametrize("max_steps", [2, None])
def test_a_notebook_bar_ends_full_and_green_also_when_max_steps_stops_the_epoch(
    monkeypatch, max_steps
):
    from tqdm.notebook import tqdm as notebook_tqdm

    bars = []

    def kept_bar(*args, **kwargs):
        bars.append(notebook_tqdm(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(callbacks, "tqdm", kept_bar)
    train_dl, _ = loaders()  # 6 batches
    fit(mlp(), train_dl, lr=1e-2, max_steps=max_steps, seed=0, progress=True, device="cpu")
    (bar,) = bars
    done = max_steps or len(train_dl)
    assert bar.n == bar.total == done  # stopped at 2 of 6: the bar says 2/2, not 2/6
    label, progress, counts = bar.container.children
    assert (progress.value, progress.max, progress.bar_style) == (done, done, "success")
