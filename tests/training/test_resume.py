"""Checkpoints: a run killed mid-epoch and resumed ends bitwise equal to one never interrupted."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from resume_run import HANGING, run
from tiny_models import (
    loaders,
    mlp,
    one_thread,  # noqa: F401 (autouse fixture)
)

from ftlab.training import checkpoint
from ftlab.training.loop import fit

QUIET = {"progress": False, "device": "cpu"}


def start_and_kill(checkpoint_dir: Path, hang_after_step: int) -> None:
    """Run resume_run.py in a subprocess and SIGKILL it once step `hang_after_step` is saved."""
    script = Path(__file__).parents[1] / "helpers" / "resume_run.py"
    command = [
        sys.executable,
        str(script),
        str(checkpoint_dir),
        "--hang-after-step",
        str(hang_after_step),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not (checkpoint_dir / HANGING).exists():
        if process.poll() is not None:
            pytest.fail(f"the training script exited early:\n{process.stdout.read().decode()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the training script did not reach the step in time")
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_a_run_killed_mid_epoch_resumes_to_bitwise_the_same_weights(tmp_path, monkeypatch):
    killed_dir = tmp_path / "My Drive" / "run"  # like a mounted Google Drive folder
    start_and_kill(killed_dir, hang_after_step=8)  # epoch 1 of 3, 4 of its 12 batches used
    (killed_dir / HANGING).unlink()
    saved = checkpoint.list_checkpoints(killed_dir)
    assert [path.name for path in saved] == ["checkpoint-00000007.pt", "checkpoint-00000008.pt"]
    assert all(path.is_file() and not path.is_symlink() for path in killed_dir.iterdir())
    shutil.copytree(killed_dir, tmp_path / "copy")

    resumed_model, resumed_history = run(killed_dir)
    whole_model, whole_history = run(tmp_path / "uninterrupted")
    resumed_weights, whole_weights = resumed_model.state_dict(), whole_model.state_dict()
    assert all(torch.equal(resumed_weights[key], whole_weights[key]) for key in whole_weights)
    assert resumed_history.step_losses == whole_history.step_losses
    assert len(resumed_history.steps) == 18 and len(resumed_history.epochs) == 3

    # The comparison is sharp enough to notice a resume that forgets the random state (dropout).
    monkeypatch.setattr(checkpoint, "set_rng_states", lambda states: None)
    careless_model, _ = run(tmp_path / "copy")
    assert not torch.equal(careless_model[0].weight, whole_model[0].weight)


def test_an_interrupted_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    train_dl, _ = loaders()
    fit(mlp(), train_dl, checkpoint_dir=tmp_path, **QUIET)
    (previous,) = checkpoint.list_checkpoints(tmp_path)
    before = previous.read_bytes()

    def dies_mid_write(payload, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if the runtime were cut off here

    monkeypatch.setattr(torch, "save", dies_mid_write)
    model = mlp()
    with pytest.raises(KeyboardInterrupt):
        fit(model, train_dl, num_epochs=2, checkpoint_dir=tmp_path, **QUIET)
    assert previous.read_bytes() == before
    assert list(tmp_path.iterdir()) == [previous]  # the temporary file is gone too
    monkeypatch.undo()
    saved = torch.load(previous, weights_only=False)
    assert saved["epoch"] == 1 and saved["step"] == len(train_dl)


def test_resume_ignores_leftover_temporary_files_and_keeps_the_last_k(tmp_path):
    train_dl, _ = loaders()  # 6 steps per epoch
    (tmp_path / ".checkpoint-00000099.pt.abc.tmp").write_bytes(b"killed while writing")
    fit(mlp(), train_dl, checkpoint_dir=tmp_path, checkpoint_every=2, keep_last=3, **QUIET)
    names = [path.name for path in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["checkpoint-00000002.pt", "checkpoint-00000004.pt", "checkpoint-00000006.pt"]


def test_a_finished_run_resumes_to_its_history_without_training_again(tmp_path):
    train_dl, val_dl = loaders()
    model = mlp()
    history = fit(model, train_dl, val_dl, num_epochs=2, checkpoint_dir=tmp_path, **QUIET)
    weights = [p.detach().clone() for p in model.parameters()]
    again = mlp()
    history_again = fit(again, train_dl, val_dl, num_epochs=2, checkpoint_dir=tmp_path, **QUIET)
    assert history_again.to_dict() == history.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), weights, strict=True))
    longer = fit(mlp(), train_dl, val_dl, num_epochs=3, checkpoint_dir=tmp_path, **QUIET)
    assert len(longer.epochs) == 3 and longer.epochs[:2] == history.epochs  # one more epoch
    fresh = fit(mlp(), train_dl, num_epochs=1, checkpoint_dir=tmp_path, resume=False, **QUIET)
    assert len(fresh.epochs) == 1


def test_resume_prints_where_it_continues_unless_quiet(tmp_path, capsys):
    train_dl, _ = loaders()
    fit(mlp(), train_dl, checkpoint_dir=tmp_path, **QUIET)
    fit(mlp(), train_dl, num_epochs=2, checkpoint_dir=tmp_path, device="cpu")
    assert "Resuming from" in capsys.readouterr().out


class RecordingBatchSampler:
    """Batches of 8 in order; records the epochs fit announces through set_epoch."""

    def __init__(self, n):
        self.n, self.epochs = n, []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        return iter([list(range(i, min(i + 8, self.n))) for i in range(0, self.n, 8)])

    def __len__(self):
        return (self.n + 7) // 8


def test_fit_tells_epoch_aware_batch_samplers_the_epoch():
    train_dl, _ = loaders()
    sampler = RecordingBatchSampler(len(train_dl.dataset))
    dl = torch.utils.data.DataLoader(train_dl.dataset, batch_sampler=sampler)
    fit(mlp(), dl, num_epochs=3, **QUIET)
    assert sampler.epochs == [0, 1, 2]
