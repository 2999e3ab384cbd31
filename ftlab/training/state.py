"""What `fit` shares with callbacks: the training state, the hooks, and early stopping.

A callback is any object with some of these methods, each taking the `TrainState`:
`on_train_start`, `on_epoch_start`, `on_step_end` (after each optimizer step), `on_epoch_end`
(after evaluation, when `state.history.epochs[-1]` holds the epoch's metrics), `on_train_end`.
Setting `state.stop = True` ends training after the current step. A callback that also has
`state_dict()` / `load_state_dict()` is saved in checkpoints and restored on resume.
Taught in lesson 04 (callbacks) and lesson 02 (early stopping).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ftlab.training import distributed

LOG_EVERY = 10  # optimizer steps between loss read-backs: the only host-device syncs of a step

HOOKS = ("on_train_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_train_end")


class History:
    """Per-step loss and lr, and per-epoch metrics, of one `fit` run. Taught in lesson 02.

    `steps`: [{"step", "epoch", "loss", "lr"}, ...] one per optimizer step.
    `epochs`: [{"epoch", "train_loss", "val_loss", "val_accuracy", ..., "seconds"}, ...].
    """

    def __init__(self, steps=None, epochs=None):
        self.steps, self.epochs = list(steps or []), list(epochs or [])

    def end_epoch(self, epoch, train_loss, val_results=None, seconds=None) -> dict:
        """Record one finished epoch; `val_results` from `evaluate` get the prefix "val_"."""
        row = {"epoch": epoch, "train_loss": train_loss}
        row.update({f"val_{name}": value for name, value in (val_results or {}).items()})
        row["seconds"] = seconds
        self.epochs.append(row)
        return row

    def values(self, key: str) -> list:
        """Return one column over epochs, e.g. history.values("val_accuracy")."""
        return [row[key] for row in self.epochs if key in row]

    @property
    def step_losses(self) -> list[float]:
        """Return the training loss of every optimizer step."""
        return [row["loss"] for row in self.steps]

    def to_dict(self) -> dict:
        """Return plain lists, ready for json.dump or a checkpoint."""
        return {"steps": list(self.steps), "epochs": list(self.epochs)}

    @classmethod
    def from_dict(cls, saved: dict) -> History:
        """Rebuild a History from `to_dict()`."""
        return cls(saved["steps"], saved["epochs"])

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        return f"History({len(self.steps)} steps, {len(self.epochs)} epochs, last={last})"


@dataclass
class TrainState:
    """Everything a callback may read or change while `fit` runs. Taught in lesson 04."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    history: Any
    device: torch.device
    precision: str
    callbacks: list = field(default_factory=list)
    epoch: int = 0  # the epoch running now, counted from 0
    step: int = 0  # optimizer steps done so far, over all epochs
    batch_in_epoch: int = 0  # batches of this epoch already used (where a resume continues)
    stop: bool = False  # set by a callback (or early stopping) to end training
    batch_splits: int = 1  # > 1 after running out of memory with oom_retry=True
    oom_retry: bool = False  # redo a batch that ran out of memory in smaller pieces
    data_seed: int = 0  # epoch e shuffles with a generator seeded data_seed + e

    def call(self, hook: str) -> None:
        """Call `hook` on every callback that has it."""
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self)


class EarlyStopping:
    """Stop when `monitor` has not improved for `patience` epochs; then restore the best weights.

    `monitor` names a key of `history.epochs` ("val_accuracy", "val_loss", "train_loss");
    a bare metric name such as "accuracy" means its validation value. Taught in lesson 02.
    """

    def __init__(self, monitor="val_loss", patience=2, mode=None, min_delta=0.0, restore_best=True):
        self.monitor = monitor if monitor.startswith(("val_", "train_")) else f"val_{monitor}"
        self.mode = mode or ("min" if self.monitor.endswith("loss") else "max")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.patience, self.min_delta, self.restore_best = patience, min_delta, restore_best
        self.best, self.best_epoch, self.wait, self.best_weights = None, None, 0, None

    def on_epoch_end(self, state: TrainState) -> None:
        """Remember the best epoch; ask `fit` to stop after `patience` epochs without progress."""
        latest = state.history.epochs[-1]
        if self.monitor not in latest:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r} but the epoch results have "
                f"{sorted(latest)}; pass val_dl to fit or monitor one of those keys"
            )
        value = latest[self.monitor]
        if self.best is None or self._improved(value):
            self.best, self.best_epoch, self.wait = value, latest["epoch"], 0
            if self.restore_best:
                self.best_weights = _cpu_copy(state.model.state_dict())
        else:
            self.wait += 1
            state.stop = state.stop or self.wait >= self.patience

    def on_train_end(self, state: TrainState) -> None:
        """Load the weights of the best epoch back into the model."""
        if self.restore_best and self.best_weights is not None:
            state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        """Return what a checkpoint needs to continue early stopping after a resume."""
        return {key: getattr(self, key) for key in ("best", "best_epoch", "wait", "best_weights")}

    def load_state_dict(self, saved: dict) -> None:
        """Restore the state saved by `state_dict`."""
        for key, value in saved.items():
            setattr(self, key, value)

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta


class StepLog:
    """Keep step losses on the device, read them back every LOG_EVERY steps into History and bar."""

    def __init__(self, state: TrainState, progress: bool, num_epochs: int):
        self.state, self.show, self.num_epochs = state, progress, num_epochs
        self.pending = []  # (step, epoch, loss tensor, lr) not yet read back
        self.step_loss, self.micro_batches, self.lr = 0.0, 0, None
        self.samples, self.clock, self.progress_bar = 0, time.perf_counter(), None

    def progress(self, batches, num_batches: int | None):
        """Open this epoch's tqdm bar (nothing shown when progress=False); return the batches."""
        description = f"epoch {self.state.epoch + 1}/{self.num_epochs}"
        self.progress_bar = tqdm(
            total=num_batches, initial=self.state.batch_in_epoch, desc=description,
            disable=not self.show, dynamic_ncols=True,
        )  # fmt: skip
        self.samples, self.clock = 0, time.perf_counter()
        return batches

    def add_batch(self, loss: torch.Tensor, num_samples: int) -> None:
        """Add one (micro-)batch's detached loss, without reading it back."""
        self.step_loss = self.step_loss + loss
        self.micro_batches += 1
        self.samples += num_samples
        self.progress_bar.update(1)
        self.lr = self.state.optimizer.param_groups[0]["lr"]  # the lr this step uses

    def end_step(self) -> None:
        """Queue the finished optimizer step; read back every LOG_EVERY steps."""
        loss = self.step_loss / self.micro_batches
        self.pending.append((self.state.step, self.state.epoch, loss, self.lr))
        self.step_loss, self.micro_batches = 0.0, 0
        if self.state.step % LOG_EVERY == 0:
            self.flush()

    def flush(self) -> None:
        """Read the queued losses back (one sync), check them, log them, refresh the bar."""
        if not self.pending:
            return
        losses = torch.stack([loss for _, _, loss, _ in self.pending]).float()
        losses = distributed.mean(losses).cpu().tolist()  # several processes: the global loss
        for (step, epoch, _, lr), loss in zip(self.pending, losses, strict=True):
            if not math.isfinite(loss):
                from ftlab.training.diagnose import nan_loss_message

                raise FloatingPointError(nan_loss_message(step, epoch, loss, lr, self.state))
            self.state.history.steps.append({"step": step, "epoch": epoch, "loss": loss, "lr": lr})
        self.pending.clear()
        seconds = max(time.perf_counter() - self.clock, 1e-9)
        self.progress_bar.set_postfix(
            loss=f"{losses[-1]:.4f}", lr=f"{self.lr:.2e}", samples_s=f"{self.samples / seconds:.0f}"
        )
        self.samples, self.clock = 0, time.perf_counter()

    def epoch_loss(self, epoch: int) -> float:
        """Return the mean training loss of the steps of `epoch`."""
        losses = [row["loss"] for row in self.state.history.steps if row["epoch"] == epoch]
        return sum(losses) / len(losses) if losses else math.nan

    def end_epoch(self) -> None:
        """Show the epoch's results on its bar and close it."""
        latest = {k: v for k, v in self.state.history.epochs[-1].items() if k != "epoch"}
        self.progress_bar.set_postfix({k: f"{v:.4g}" for k, v in latest.items() if v is not None})
        if 0 < self.progress_bar.n < (self.progress_bar.total or 0):
            _end_bar_early(self.progress_bar)
        self.progress_bar.close()


def _end_bar_early(bar) -> None:
    """Make a bar stopped before its total (max_steps, early stopping) end full, not red.

    tqdm's notebook bar turns red ("an error") when it closes short of its total.
    """
    bar.total = bar.n
    container = getattr(bar, "container", None)  # tqdm.notebook's widgets: label, bar, counts
    if container is not None:
        container.children[1].max = bar.n


class FrozenBatchNormEval:
    """Keep BatchNorm layers whose parameters are all frozen in eval mode during `fit`.

    `fit` calls model.train() at each epoch start; this callback then switches the frozen
    BatchNorm layers back to eval, so their pretrained running statistics stay as they are.
    Taught in lesson 03.
    """

    fixes = "batchnorm_train_mode"  # the diagnose finding it makes unnecessary

    def on_epoch_start(self, state: TrainState) -> None:
        """Put each fully frozen BatchNorm layer in eval mode."""
        for module in state.model.modules():
            params = list(module.parameters(recurse=False))
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and params:
                if not any(p.requires_grad for p in params):
                    module.eval()


def as_early_stopping(early_stopping) -> EarlyStopping | None:
    """Accept None, an EarlyStopping, or a dict of its arguments such as {"monitor": "accuracy"}."""
    if early_stopping is None or isinstance(early_stopping, EarlyStopping):
        return early_stopping
    if isinstance(early_stopping, dict):
        return EarlyStopping(**early_stopping)
    raise TypeError(
        f"early_stopping must be None, EarlyStopping(...) or a dict, got {type(early_stopping)}"
    )


def _cpu_copy(weights: dict) -> dict:
    return {
        name: value.detach().to("cpu", copy=True)
        if torch.is_tensor(value)
        else copy.deepcopy(value)
        for name, value in weights.items()
    }
