"""Tests for ftlab.training.distributed: `fit` on 2 CPU processes (torchrun, gloo) equals 1 process.

Identical weights on both ranks prove nothing alone: two processes that never talk, with the
same seed and data, also agree. So each rank also records what it saw: the world size, the
DDP wrapper, its local gradient before the all-reduce and the gradient after it. The test then
checks that the local gradients differ between ranks (each had its own half of the batch) while
the synchronised ones are equal, and equal to their mean, and to a 1-process run's gradient.

This file is also the worker script: torchrun runs it as a plain script.
"""

import contextlib
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from ftlab.training import distributed

NUM_SAMPLES, PER_PROCESS_BATCH, WORLD = 64, 4, 2


def _data() -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_SAMPLES, 6, generator=generator)  # (samples, features)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()  # 3 classes
    return torch.utils.data.TensorDataset(x, y)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(batch_size: int, checkpoint_dir=None, progress=False):
    """Run fit on the tiny problem; return model, history, first-step grads, whether wrapped."""
    from ftlab.training.loop import fit

    model = _model()
    local, synced, wrapped = {}, {}, []
    for name, param in model.named_parameters():  # fires before DDP's all-reduce: local grad
        param.register_hook(lambda grad, name=name: local.setdefault(name, grad.clone()))

    def record_synced(optimizer, args, kwargs):  # after backward, before the first step
        if not synced:
            synced.update({n: p.grad.clone() for n, p in model.named_parameters()})

    class FirstStepGradients:
        def on_train_start(self, state):
            state.optimizer.register_step_pre_hook(record_synced)
            wrapped.append(isinstance(state.model, nn.parallel.DistributedDataParallel))

    train_dl = torch.utils.data.DataLoader(_data(), batch_size=batch_size, shuffle=False)
    history = fit(
        model, train_dl, lr=1e-2, num_epochs=2, max_grad_norm=None, precision="fp32",
        device="cpu", progress=progress, check=False, seed=0, callbacks=[FirstStepGradients()],
        checkpoint_dir=checkpoint_dir,
    )  # fmt: skip
    return model, history, local, synced, wrapped[0]


def _worker(out_dir: str) -> None:
    """Run under torchrun: train, count checkpoint writes, save what this rank saw."""
    from ftlab.training import checkpoint

    writes = []
    original_save = checkpoint.atomic_save
    checkpoint.atomic_save = lambda *args: writes.append(1) or original_save(*args)
    model, history, local, synced, ddp = _train(
        PER_PROCESS_BATCH, checkpoint_dir=os.path.join(out_dir, "checkpoints"), progress=True
    )
    seen = {
        "rank": distributed.rank(),
        "world_size": distributed.world_size(),
        "process_group_size": torch.distributed.get_world_size(),
        "backend": torch.distributed.get_backend(),
        "ddp": ddp,
        "local": local,
        "synced": synced,
        "weights": model.state_dict(),
        "losses": history.step_losses,
        "checkpoint_writes": len(writes),
    }
    torch.save(seen, os.path.join(out_dir, f"rank{distributed.rank()}.pt"))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Launch this file on 2 CPU processes with torchrun; return (what each rank saw, stdout)."""
    out_dir = tmp_path_factory.mktemp("distributed")
    command = distributed.launch_command(__file__, WORLD, str(out_dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return ranks, done.stdout + done.stderr, out_dir


def test_the_run_really_was_distributed(two_processes):
    ranks, _, _ = two_processes
    for r, seen in enumerate(ranks):
        assert seen["rank"] == r and seen["world_size"] == WORLD
        assert seen["process_group_size"] == WORLD and seen["backend"] == "gloo"
        assert seen["ddp"], "fit did not wrap the model in DistributedDataParallel"


def test_gradients_were_synchronised(two_processes):
    ranks, _, _ = two_processes
    local0, local1 = ranks[0]["local"], ranks[1]["local"]
    assert set(local0) == set(ranks[0]["synced"]) == {n for n, _ in _model().named_parameters()}
    for name in local0:
        # Each rank computed its gradient on its own half of the global batch ...
        assert not torch.allclose(local0[name], local1[name]), name
        # ... and trained on the average of both.
        assert torch.equal(ranks[0]["synced"][name], ranks[1]["synced"][name]), name
        mean = (local0[name] + local1[name]) / 2
        assert torch.allclose(ranks[0]["synced"][name], mean, atol=1e-6), name


def test_both_ranks_end_identical_and_equal_to_one_process(two_processes):
    ranks, _, _ = two_processes
    model, history, _, synced, ddp = _train(PER_PROCESS_BATCH * WORLD)  # same global batch
    assert not ddp
    for name, weight in model.state_dict().items():
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
        assert torch.allclose(ranks[0]["weights"][name], weight, atol=1e-5), name
        assert torch.allclose(ranks[0]["synced"][name], synced[name], atol=1e-6), name
    # The logged loss is the mean over both processes: the 1-process run's loss.
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["losses"] == pytest.approx(history.step_losses, abs=1e-5)
    assert len(history.step_losses) == 2 * NUM_SAMPLES // (PER_PROCESS_BATCH * WORLD)


def test_only_rank_zero_writes_and_prints(two_processes):
    ranks, output, out_dir = two_processes
    assert ranks[0]["checkpoint_writes"] >= 2 and ranks[1]["checkpoint_writes"] == 0
    saved = torch.load(sorted((out_dir / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert set(saved["model"]) == set(ranks[0]["weights"])  # no DDP "module." prefix
    assert output.count("epoch 1/2:   0%") == 1  # one progress bar, from rank 0


def test_launch_command_and_single_process_defaults():
    command = distributed.launch_command("train.py", 4, "--lr", "1e-3")
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                           "train.py", "--lr", "1e-3"]  # fmt: skip
    with pytest.raises(ValueError, match="num_processes"):
        distributed.launch_command("train.py", 0)
    assert distributed.world_size() == 1 and distributed.is_main_process()
    model, train_dl = nn.Linear(2, 2), [1, 2]
    assert distributed.prepare(model, train_dl, None, "cpu") == (model, train_dl, None)
    assert distributed.local_device(torch.device("cpu")) == torch.device("cpu")
    x = torch.ones(3)
    assert distributed.gather(train_dl, x) is x and distributed.mean(x) is x
    assert distributed.gather(train_dl, x, None) == (x, None)
    compiled = torch.compile(model, backend="eager")
    assert distributed.unwrap(compiled) is model and distributed.unwrap(model) is model
    assert isinstance(distributed.sync_gradients(model, sync=False), contextlib.nullcontext)


if __name__ == "__main__":
    _worker(sys.argv[1])
