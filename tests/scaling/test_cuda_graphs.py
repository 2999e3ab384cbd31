"""Tests for ftlab.scaling.cuda_graphs: whole-step CUDA graphs, checked on the CPU with a tape.

A CUDA graph replays the kernels it recorded: it reads its input tensors, the weights, the
gradients, AdamW's state and the learning-rate tensor as they are at replay time, and Python
runs none of the step. `graph_tape.Tape` keeps those rules on the CPU, so everything around
the graph is exercised here (warm-up, shapes, inputs, learning rate, gradients kept in place,
recording again); `test_graphs_replayed.py` trains an MLP, BERT and ResNet-18 that way. A real
recording needs a GPU (`ftlab bench`).
What would break a recording is checked here too: a step that makes the host wait for a GPU
value (`.item()`, `if tensor:`), found by the operators it runs while a recording is under way.
"""

import contextlib

import pytest
import torch
from graph_tape import HostReads, as_if_recording, tape_capture
from tiny_models import blobs, mlp, tiny_bert
from torch import nn
from torch.utils.data import DataLoader

from ftlab.data.images import BatchAugment
from ftlab.scaling import cuda_graphs as graphs
from ftlab.training.loop import fit
from ftlab.training.optim import default_optimizer


def test_an_fp16_step_that_overflows_is_skipped_and_the_scale_halves():
    step, model, _ = _graphed_step(warmup_steps=1, precision="fp16")
    x, y = _batch(8)
    step((x, y))  # eager: makes AdamW's state and the scale (2^16)
    before = [p.detach().clone() for p in model.parameters()]
    step((x * 1e4, y))  # recorded, then replayed: the scaled gradients overflow fp16
    assert step.recordings == 1 and step.scaler.get_scale() == 2.0**15
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    step((x, y))  # the same graph, a batch that does not overflow: a real step
    assert step.scaler.get_scale() == 2.0**15
    assert not torch.equal(model[0].weight, before[0])


def _graphed_step(max_shapes=8, warmup_steps=1, precision="fp32"):
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    step = graphs.GraphedStep(
        model, optimizer, 1.0, precision, capture=tape_capture(),
        warmup_steps=warmup_steps, max_shapes=max_shapes,
    )  # fmt: skip
    return step, model, optimizer


def _batch(rows, seed=0):
    x, y = blobs(rows, seed=seed).tensors
    return x, y


def test_adamw_is_recorded_capturable_reading_the_learning_rate_tensor():
    seen = []

    def capture(step, pool, stream):  # what AdamW is like while the step records
        seen.extend((group["lr"], group["capturable"]) for group in optimizer.param_groups)
        return tape_capture()(step, pool, stream)

    step, _, optimizer = _graphed_step(warmup_steps=1)
    step.capture = capture
    step(_batch(8))  # eager
    step(_batch(8))  # recorded
    ((lr, capturable),) = seen
    assert capturable and torch.is_tensor(lr) and lr.data_ptr() == step.lr.data_ptr()
    assert optimizer.param_groups[0]["lr"] == 1e-2 and not optimizer.param_groups[0]["capturable"]


def test_a_shape_is_never_recorded_before_an_eager_step_that_makes_adamws_state():
    with pytest.raises(ValueError, match="warmup_steps must be at least 1"):
        _graphed_step(warmup_steps=0)
    for warmup_steps, adamw_steps in [(1, 3), (0, 1)]:  # 0: what the check refuses
        step, _, optimizer = _graphed_step(warmup_steps=1)
        step.warmup_steps = warmup_steps
        for seed in range(3):
            step(_batch(8, seed=seed))
        # recorded first, AdamW's state is made anew by every replay: its step count stays 1
        assert all(int(state["step"]) == adamw_steps for state in optimizer.state.values())


def test_each_shape_warms_up_then_replays_and_extra_shapes_stay_eager():
    step, _, _ = _graphed_step(max_shapes=2, warmup_steps=2)
    for _ in range(4):
        for rows in (8, 6, 4):
            step(_batch(rows))
    assert step.recordings == 2 and len(step.graphs) == 2  # 8 and 6 rows; 4 rows found no room
    assert step.eager_steps[graphs.shape_key(_batch(8))] == 2
    assert step.eager_steps[graphs.shape_key(_batch(4))] == 4


def test_replays_return_their_own_loss_not_the_graphs():
    step, _, _ = _graphed_step(warmup_steps=1)
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
        ({"precision": "fp16", "optimizer": "adamw_capturable"}, "GradScaler asks the host"),
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
        "adamw_capturable": torch.optim.AdamW(params, foreach=True, capturable=True),
    }
    graphs.check_supported(**GOOD)  # the right cases pass
    fused, capturable = optimizers["adamw_fused"], optimizers["adamw_capturable"]
    graphs.check_supported(**{**GOOD, "compile": "default", "optimizer": fused})
    graphs.check_supported(**{**GOOD, "precision": "fp16"})  # fit's own AdamW is fused
    graphs.check_supported(**{**GOOD, "precision": "fp16", "optimizer": fused})
    graphs.check_supported(**{**GOOD, "precision": "fp32", "optimizer": capturable})
    arguments = {**GOOD, **change}
    arguments["optimizer"] = optimizers.get(arguments["optimizer"])
    with pytest.raises(ValueError, match=message):
        graphs.check_supported(**arguments)


def test_fit_refuses_cuda_graph_on_the_cpu_before_training():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    train_dl = DataLoader(blobs(16), batch_size=8)
    with pytest.raises(ValueError, match="CudaGraphStep needs a CUDA GPU; this run is on cpu"):
        fit(model, train_dl, device="cpu", progress=False, step=graphs.CudaGraphStep())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def recording_reads(reads):
    """A `capture` that runs the step once `as_if_recording`; its replay does nothing."""

    def capture(step, pool, stream):
        return (lambda: None), as_if_recording(reads, step), pool

    return capture


def _reads_of_a_recording(monkeypatch, model, batch, precision="bf16"):
    """Run one eager step and one recording of `model` on `batch`; return both's host reads."""
    optimizer = default_optimizer(model, lr=1e-3, weight_decay=0.01, device="cpu")
    eager, recording = HostReads(), HostReads()
    step = graphs.GraphedStep(
        model, optimizer, 1.0, precision, capture=recording_reads(recording),
        warmup_steps=1,
    )  # fmt: skip
    with eager:
        step(batch)  # the warm-up step, eager
    step(batch)  # recorded (this replay does nothing)
    assert step.recordings == 1
    return eager.names, recording.names


def _token_batch():
    input_ids = torch.randint(10, 100, (4, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 9:] = 0  # padded, as in a bucket
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.arange(4) % 2}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_recorded_bert_step_never_waits_for_the_gpu(monkeypatch, precision):
    eager, recording = _reads_of_a_recording(monkeypatch, tiny_bert(), _token_batch(), precision)
    assert "_local_scalar_dense" in eager  # eager, transformers checks the mask on the host
    assert recording == []  # forward, loss, backward, (un)scaling, clipping, AdamW, zero_grad


def test_fp16_with_an_unfused_adamw_would_wait_for_the_gpu_so_it_is_refused(monkeypatch):
    model = tiny_bert()
    unfused = torch.optim.AdamW(model.parameters(), foreach=True)
    step, reads = graphs.GraphedStep(model, unfused, 1.0, "fp16"), HostReads()
    as_if_recording(reads, lambda: step.step(_token_batch()))  # what it would record
    assert "_local_scalar_dense" in reads.names  # GradScaler asks the host: did it overflow?
    with pytest.raises(ValueError, match="GradScaler asks the host"):
        graphs.check_supported(**{**GOOD, "precision": "fp16", "optimizer": unfused})


class CheckedScale(nn.Module):
    """A model that looks at a value on the host in its forward: it cannot be recorded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 10 if x.abs().max() > 10 else x


def test_a_recorded_vision_step_never_waits_for_the_gpu_and_a_host_check_is_found(monkeypatch):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    batch = (images, torch.arange(4) % 3)
    augment = BatchAugment("resnet18", image_size=16)  # random crops drawn on the device
    _, recording = _reads_of_a_recording(
        monkeypatch, nn.Sequential(augment, resnet18(num_classes=3)), batch
    )
    assert recording == []
    checked = nn.Sequential(augment, CheckedScale(), resnet18(num_classes=3))
    _, recording = _reads_of_a_recording(monkeypatch, checked, batch)
    assert recording == ["_local_scalar_dense"]  # the `if` on a tensor


def test_a_failed_recording_says_what_to_remove_and_puts_adamw_back():
    def failing(step, pool, stream):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    step, _, optimizer = _graphed_step(warmup_steps=1)
    step.capture = failing
    step(_batch(8))  # eager
    with pytest.raises(RuntimeError, match=r"(?s)recording the training step.*not permitted.*"
                       r"no \.item\(\).*without CudaGraphStep") as raised:  # fmt: skip
        step(_batch(8))
    assert isinstance(raised.value.__cause__, RuntimeError)
    for group in optimizer.param_groups:  # as it was built: a float lr, not capturable
        assert group["lr"] == 1e-2 and not torch.is_tensor(group["lr"])
        assert group["capturable"] is False


def test_a_recording_holds_only_its_own_thread_to_the_rules(monkeypatch):
    seen = {}

    class Graph:
        def replay(self):
            pass

        def pool(self):
            return "pool"

    @contextlib.contextmanager
    def recording(graph, **kwargs):
        seen.update(kwargs)
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", recording)
    replay, output, pool = graphs.capture_cuda_graph(lambda: "loss", pool=None, stream="side")
    # "thread_local": a DataLoader's pin-memory thread may allocate pinned memory meanwhile
    assert seen == {"pool": None, "stream": "side", "capture_error_mode": "thread_local"}
    assert output == "loss" and pool == "pool" and callable(replay)
