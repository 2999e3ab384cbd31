"""Train a small MLP with dropout on the CPU, checkpointing every step (used by test_resume.py).

Run as a script it can be told to hang after a step, so that the test can kill it with SIGKILL
mid-epoch: `python tests/helpers/resume_run.py CHECKPOINT_DIR --hang-after-step 8`.
"""

import argparse
import time
from pathlib import Path

import torch
from tiny_models import NUM_FEATURES, NUM_LABELS, blobs
from torch import nn
from torch.utils.data import DataLoader

from ftlab.training.loop import fit

HANGING = "hanging"  # marker file written when the run stops to be killed


class HangAfter:
    """A callback that writes a marker and sleeps once step `step` has been checkpointed."""

    def __init__(self, checkpoint_dir, step):
        self.marker, self.step = Path(checkpoint_dir) / HANGING, step

    def on_step_end(self, state):
        if state.step == self.step + 1:  # fit saved step `self.step` right after its on_step_end
            self.marker.write_text(str(self.step))
            time.sleep(600)


def run(checkpoint_dir, hang_after_step=None):
    """Train 3 epochs of 6 optimizer steps (2 batches each); return (model, history)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(NUM_FEATURES, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, NUM_LABELS)
    )
    train_dl = DataLoader(blobs(96), batch_size=8, shuffle=True)  # 12 batches per epoch
    val_dl = DataLoader(blobs(32, seed=1), batch_size=16)
    callbacks = [HangAfter(checkpoint_dir, hang_after_step)] if hang_after_step else []
    history = fit(
        model, train_dl, val_dl, lr=1e-2, num_epochs=3, grad_accum_steps=2, seed=0,
        checkpoint_dir=checkpoint_dir, checkpoint_every=1, callbacks=callbacks,
        early_stopping={"monitor": "loss", "patience": 9, "restore_best": False}, progress=False,
        device="cpu",
    )  # fmt: skip
    return model, history


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--hang-after-step", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in the tests, so that both runs compute alike
    run(args.checkpoint_dir, args.hang_after_step)
