"""`fit(step=CudaGraphStep())`, every recorded step replayed from a tape (helpers/graph_tape.py).

On a GPU a replay runs the recorded kernels and no Python. The tape keeps that rule on the CPU,
so these tests check that lesson 02's step for an MLP, BERT and ResNet-18, replayed as recorded,
trains exactly as eager steps do (dropout, a learning-rate schedule, fp16 scaling, BatchNorm
statistics, random crops drawn on the device included), and that a value the host works out
each step would indeed be frozen by a replay, so the comparison can fail.
"""

import pytest
import torch
from graph_tape import tape_capture
from tiny_models import NUM_LABELS, TinyCNN, blobs, image_batch, mlp, tiny_bert
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ftlab.data.bucketing import BucketCollator, LengthGroupedBatchSampler
from ftlab.data.images import BatchAugment
from ftlab.scaling import cuda_graphs as graphs
from ftlab.training.loop import fit

# How close a graphed fit stays to an eager one: a replay's AdamW reads the learning rate from
# a float32 tensor, an eager one as a Python float; bf16 and fp16 magnify that rounding.
TOLERANCE = {"fp32": 1e-6, "bf16": 1e-3, "fp16": 1e-4}


def token_loader(n=44, seed=0):
    """Sentences of 4 to 40 tokens (label: is token 7 there?), length-grouped, buckets of 16."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for row in range(n):
        ids = torch.randint(10, 100, (int(torch.randint(4, 41, (), generator=generator)),),
                            generator=generator)  # fmt: skip
        if row % 2:
            ids[len(ids) // 2] = 7
        examples.append({"input_ids": ids.tolist(), "label": row % 2})
    sampler = LengthGroupedBatchSampler([len(e["input_ids"]) for e in examples], 8, seed=seed)
    return DataLoader(examples, batch_sampler=sampler, collate_fn=BucketCollator(multiple=16))


def image_loader(n=36):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 20, 20), dtype=torch.uint8, generator=generator)
    return DataLoader(TensorDataset(images, torch.arange(n) % 3), batch_size=8, shuffle=True)


def blobs_loader():
    """44 blobs in batches of 8 and a last one of 4: two shapes."""
    return DataLoader(blobs(44), batch_size=8, shuffle=True)


def resnet():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return nn.Sequential(BatchAugment("resnet18", image_size=16), resnet18(num_classes=3))


def _fit(monkeypatch, make_model, loader, cuda_graph, precision, tapes=None, epochs=6, **kwargs):
    monkeypatch.setattr(graphs, "GRAPH_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(graphs, "capture_cuda_graph", tape_capture(tapes))
    model = make_model()
    options = {"lr": 1e-3, "warmup_ratio": 0.2, **kwargs}  # warm-up, then linear decay
    history = fit(
        model, loader(), num_epochs=epochs, seed=0, device="cpu", progress=False,
        step=graphs.CudaGraphStep() if cuda_graph else None, precision=precision, **options,
    )  # fmt: skip
    return model, history


def _assert_same_training(graphed, eager, tolerance):
    (graphed_model, graphed_history), (eager_model, eager_history) = graphed, eager
    assert graphed_history.step_losses == pytest.approx(eager_history.step_losses, rel=tolerance)
    state, eager_state = graphed_model.state_dict(), eager_model.state_dict()
    for name, value in state.items():  # weights and buffers (BatchNorm's statistics)
        torch.testing.assert_close(value, eager_state[name], rtol=tolerance, atol=tolerance)


def _replays(tapes) -> int:
    return sum(tape.replays for tape in tapes)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_an_mlp_fit_replayed_uses_each_steps_learning_rate(monkeypatch, precision):
    tapes = []
    graphed = _fit(monkeypatch, mlp, blobs_loader, True, precision, tapes, lr=1e-2)
    eager = _fit(monkeypatch, mlp, blobs_loader, False, precision, lr=1e-2)
    # 36 steps, 6 per epoch; each shape ran 3 eager steps, every later step was a replay
    assert len(eager[1].step_losses) == 36 and len(tapes) == 2 and _replays(tapes) == 30
    # warm-up then linear decay: the lr changed every step, and replays used each step's lr
    assert len({row["lr"] for row in graphed[1].steps}) == 36
    _assert_same_training(graphed, eager, TOLERANCE[precision])


def test_a_replay_without_this_steps_learning_rate_would_train_differently(monkeypatch):
    # The learning-rate tensor is filled before each replay; left unfilled, training differs.
    monkeypatch.setattr(graphs.GraphedStep, "_fill_lr", lambda self: None)
    graphed = _fit(monkeypatch, mlp, blobs_loader, True, "fp32", lr=1e-2)
    eager = _fit(monkeypatch, mlp, blobs_loader, False, "fp32", lr=1e-2)
    pairs = zip(graphed[0].parameters(), eager[0].parameters(), strict=True)
    assert max((a - b).abs().max() for a, b in pairs) > 1e-4


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_bert_fit_replayed_from_its_recordings_trains_like_an_eager_one(monkeypatch, precision):
    tapes = []
    graphed = _fit(monkeypatch, tiny_bert, token_loader, True, precision, tapes)
    eager = _fit(monkeypatch, tiny_bert, token_loader, False, precision)
    steps = len(eager[1].step_losses)
    assert steps == 36 and len(tapes) == 4  # bucketed shapes, each recorded after 3 eager steps
    assert _replays(tapes) == 24  # two steps in three ran no Python
    _assert_same_training(graphed, eager, TOLERANCE[precision])


def test_a_resnet_fit_with_batchnorm_and_device_crops_replayed_trains_like_an_eager_one(
    monkeypatch,
):
    # Training ResNet-18 from random weights on noise amplifies any rounding, so the learning
    # rate is constant and a power of 2: its float32 tensor then holds exactly the eager float.
    tapes, exact = [], {"lr": 2**-10, "scheduler": None, "warmup_ratio": 0.0}
    graphed = _fit(monkeypatch, resnet, image_loader, True, "fp32", tapes, epochs=4, **exact)
    eager = _fit(monkeypatch, resnet, image_loader, False, "fp32", epochs=4, **exact)
    assert len(tapes) == 2 and _replays(tapes) == 14  # batches of 8 and the last one of 4
    _assert_same_training(graphed, eager, tolerance=0)  # bit for bit


class HostScaled(nn.Module):
    """A model whose forward uses a value the host works out at each call: a replay freezes it."""

    def __init__(self):
        super().__init__()
        self.model, self.calls = tiny_bert(), 0

    def forward(self, labels=None, **batch):
        self.calls += 1
        logits = self.model(**batch).logits * (1 + 0.5 * (self.calls % 3))  # new each call
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_a_value_worked_out_on_the_host_is_frozen_by_a_replay_so_training_differs(monkeypatch):
    graphed = _fit(monkeypatch, HostScaled, token_loader, True, "fp32")
    eager = _fit(monkeypatch, HostScaled, token_loader, False, "fp32")
    losses = zip(graphed[1].step_losses, eager[1].step_losses, strict=True)
    assert max(abs(a - b) for a, b in losses) > 0.01
    with pytest.raises(AssertionError):
        _assert_same_training(graphed, eager, TOLERANCE["fp32"])


class HostCheck(nn.Module):
    """A model that reads a GPU value on the host in its forward (`if tensor:`)."""

    def __init__(self):
        super().__init__()
        self.model = tiny_bert()

    def forward(self, **batch):
        return self.model(**batch) if batch["input_ids"].max() > 0 else None


def test_a_host_read_in_the_forward_fails_the_recording_with_what_to_remove(monkeypatch):
    with pytest.raises(RuntimeError, match=r"(?s)recording the training step.*not permitted.*"
                       r"_local_scalar_dense.*no \.item\(\)"):  # fmt: skip
        _fit(monkeypatch, HostCheck, token_loader, True, "fp32")


def _snapshot(model, step) -> dict:
    """Every tensor a step changes: weights, BatchNorm's statistics, AdamW's state, the scale."""
    state = {f"model.{name}": value for name, value in model.state_dict().items()}
    for index, slots in step.optimizer.state_dict()["state"].items():
        state.update({f"adamw.{index}.{slot}": value for slot, value in slots.items()})
    state["scale"] = step.scaler.get_scale()
    return {name: torch.as_tensor(value).clone() for name, value in state.items()}


def test_a_recording_leaves_no_trace_and_each_replay_is_one_more_step(monkeypatch):
    def graphed_step(capture=None):
        torch.manual_seed(0)
        model = TinyCNN()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        return model, graphs.GraphedStep(
            model, optimizer, 1.0, "fp16", capture=capture, warmup_steps=1
        )

    tapes, seen = [], {}

    def capture(step, pool, stream):  # snapshots around the tape's recording
        seen["before"], rng = _snapshot(model, graphed), torch.get_rng_state()
        recorded = tape_capture(tapes)(step, pool, stream)
        seen["after"], seen["rng kept"] = (
            _snapshot(model, graphed),
            torch.equal(rng, torch.get_rng_state()),
        )
        return recorded

    (model, graphed), (eager_model, eager) = graphed_step(capture), graphed_step()
    batch = image_batch(8, NUM_LABELS)
    for _ in range(4):  # one eager step; a recording and its replay; two replays
        graphed(batch)
        eager.step(batch)
    assert len(tapes) == 1 and tapes[0].replays == 3 and len(tapes[0].entries) > 20
    before, after = seen["before"], seen["after"]
    assert all(torch.equal(before[name], after[name]) for name in before) and seen["rng kept"]
    mine, theirs = _snapshot(model, graphed), _snapshot(eager_model, eager)
    assert mine.keys() == theirs.keys()
    for name, value in mine.items():
        torch.testing.assert_close(value, theirs[name], msg=name)
