"""Tests for ftlab.graphs: whole-step CUDA graphs, checked on the CPU with a stand-in recorder.

A CUDA graph replays the kernels it recorded: it reads its input tensors, the weights, the
gradients, AdamW's state and the learning-rate tensor as they are at replay time, and Python
runs none of the step. The stand-in records nothing; its replay runs the step again on the
graph's input tensors, with AdamW reading the learning-rate tensors it saw while recording.
So everything around the graph is exercised here (warm-up, shapes, inputs, learning rate,
gradients kept in place, recording again); the recording itself needs a GPU (`ftlab bench`).
"""

import pytest
import torch
from tiny_models import blobs, mlp
from torch.utils.data import DataLoader

from ftlab import graphs
from ftlab.train import fit


def stand_in(optimizer, log=None):
    """A `capture` for the CPU: replaying runs the step with the learning rates it recorded."""

    def capture(step, pool, stream):
        recorded_lrs = [group["lr"] for group in optimizer.param_groups]  # tensors, now
        assert all(torch.is_tensor(lr) for lr in recorded_lrs)
        assert all(group["capturable"] for group in optimizer.param_groups)
        loss = torch.zeros(())

        def replay():
            floats = [group["lr"] for group in optimizer.param_groups]
            for group, lr in zip(optimizer.param_groups, recorded_lrs, strict=True):
                group["lr"] = lr
            try:
                loss.copy_(step())
            finally:
                for group, lr in zip(optimizer.param_groups, floats, strict=True):
                    group["lr"] = lr

        if log is not None:
            log.append(step)
        return replay, loss, "pool"

    return capture


def _fit(monkeypatch, cuda_graph, log=None):
    """Six epochs of blobs in batches of 8 and a last batch of 4: two shapes."""
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    monkeypatch.setattr(graphs, "GRAPH_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(graphs, "capture_cuda_graph", stand_in(optimizer, log))
    train_dl = DataLoader(blobs(44), batch_size=8, shuffle=True)
    history = fit(
        model, train_dl, optimizer=optimizer, num_epochs=6, warmup_ratio=0.2, seed=0,
        device="cpu", progress=False, cuda_graph=cuda_graph,
    )  # fmt: skip
    return model, history


def test_replayed_steps_train_exactly_like_eager_ones(monkeypatch):
    recordings = []
    graphed, graphed_history = _fit(monkeypatch, cuda_graph=True, log=recordings)
    eager, eager_history = _fit(monkeypatch, cuda_graph=False)
    assert len(recordings) == 2  # one graph per shape: batches of 8 and the last one of 4
    # 36 steps, 6 per epoch; each shape ran 3 eager steps, every later step was a replay.
    assert len(graphed_history.step_losses) == len(eager_history.step_losses) == 36
    # warm-up then linear decay: the lr changed every step, and replays used each step's lr
    assert len({row["lr"] for row in graphed_history.steps}) == 36
    assert graphed_history.step_losses == pytest.approx(eager_history.step_losses, rel=1e-5)
    for mine, theirs in zip(graphed.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_a_replay_without_this_steps_learning_rate_would_train_differently(monkeypatch):
    # The learning-rate tensor is filled before each replay; the check above sees it missing.
    monkeypatch.setattr(graphs.GraphedStep, "_fill_lr", lambda self: None)
    graphed, _ = _fit(monkeypatch, cuda_graph=True)
    eager, _ = _fit(monkeypatch, cuda_graph=False)
    pairs = zip(graphed.parameters(), eager.parameters(), strict=True)
    assert max((a - b).abs().max() for a, b in pairs) > 1e-4


def _graphed_step(max_shapes=8, warmup_steps=1):
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    step = graphs.GraphedStep(
        model, optimizer, 1.0, "fp32", capture=stand_in(optimizer),
        warmup_steps=warmup_steps, max_shapes=max_shapes,
    )  # fmt: skip
    return step, model, optimizer


def _batch(rows, seed=0):
    x, y = blobs(rows, seed=seed).tensors
    return x, y


def test_each_shape_warms_up_then_replays_and_extra_shapes_stay_eager():
    step, _, _ = _graphed_step(max_shapes=2, warmup_steps=2)
    for _ in range(4):
        for rows in (8, 6, 4):
            step(_batch(rows))
    assert step.recordings == 2 and len(step.graphs) == 2  # 8 and 6 rows; 4 rows found no room
    assert step.eager_steps[graphs.shape_key(_batch(8))] == 2
    assert step.eager_steps[graphs.shape_key(_batch(4))] == 4


def test_replays_return_their_own_loss_not_the_graphs():
    step, _, _ = _graphed_step(warmup_steps=0)
    first, second = step(_batch(8, seed=0)), step(_batch(8, seed=1))
    recorded = step.graphs[graphs.shape_key(_batch(8))].loss
    assert first is not recorded and second is not recorded
    assert first.item() != second.item() and second.item() == recorded.item()


def test_gradients_stay_in_place_between_steps():
    step, model, _ = _graphed_step(warmup_steps=1)
    step(_batch(8))  # eager: allocates the gradients, then zeroes them
    grads = [p.grad for p in model.parameters()]
    for seed in range(3):
        step(_batch(8, seed=seed))
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    assert all(g.abs().sum() == 0 for g in grads)  # zeroed at the end of each step


def test_unfreezing_drops_the_graphs_and_records_again():
    step, model, optimizer = _graphed_step(warmup_steps=1)
    head = model[2]
    for p in head.parameters():
        p.requires_grad_(False)
    for seed in range(3):
        step(_batch(8, seed=seed))
    assert step.recordings == 1
    for p in head.parameters():  # gradual unfreezing: the head trains from now on
        p.requires_grad_(True)
    before = head.weight.detach().clone()
    step(_batch(8))
    assert step.recordings == 1 and not step.graphs  # warm-up again: the head gets gradients
    step(_batch(8))
    assert step.recordings == 2 and not torch.equal(head.weight, before)


def test_shape_key_names_every_tensor_of_dict_and_tuple_batches():
    batch = {"input_ids": torch.zeros(2, 32, dtype=torch.long), "labels": torch.zeros(2)}
    assert graphs.shape_key(batch) == (
        ("input_ids", (2, 32), torch.long),
        ("labels", (2,), torch.float32),
    )
    assert graphs.shape_key(_batch(4))[0] == (0, (4, 8), torch.float32)
    assert graphs.shape_key(_batch(4)) != graphs.shape_key(_batch(5))


GOOD = {"device": "cuda", "precision": "bf16", "grad_accum_steps": 1, "oom_retry": False,
        "compile": None, "optimizer": None}  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        ({"device": "cpu"}, "needs a CUDA GPU"),
        ({"precision": "fp16"}, "GradScaler"),
        ({"grad_accum_steps": 4}, "gradient accumulation"),
        ({"oom_retry": True}, "oom_retry"),
        ({"compile": "reduce-overhead"}, "compile='default'"),
        ({"compile": {"mode": "reduce-overhead", "dynamic": True}}, "already records"),
        ({"optimizer": "sgd"}, "this SGD cannot be recorded"),
        ({"optimizer": "adamw_foreach"}, "fused=True or capturable=True"),
    ],
)
def test_what_a_replay_cannot_do_is_refused_with_what_to_change(change, message):
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizers = {
        "sgd": torch.optim.SGD(params, lr=0.1),
        "adamw_foreach": torch.optim.AdamW(params, foreach=True),
        "adamw_fused": torch.optim.AdamW(params, fused=True),
    }
    graphs.check_supported(**GOOD)  # the right case passes
    graphs.check_supported(**{**GOOD, "compile": "default", "optimizer": optimizers["adamw_fused"]})
    arguments = {**GOOD, **change}
    arguments["optimizer"] = optimizers.get(arguments["optimizer"])
    with pytest.raises(ValueError, match=message):
        graphs.check_supported(**arguments)


def test_fit_refuses_cuda_graph_on_the_cpu_before_training():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    train_dl = DataLoader(blobs(16), batch_size=8)
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA GPU; this run is on cpu"):
        fit(model, train_dl, device="cpu", progress=False, cuda_graph=True)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
