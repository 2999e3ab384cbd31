"""Plots of a fine-tuning run: learning curves, lr range test, confusion matrix, images, ablations.

Each function returns a matplotlib Figure and never calls plt.show(): a notebook shows the
figure when it is the cell's last value (or with `display(fig)`); `fig.savefig(path)` saves it.
The figure is closed in pyplot, so it is not shown a second time at the end of the cell.
Taught in lesson 02 (curves, lr range test, confusion matrix), 03 (image grid) and 04
(ablation bars).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from ftlab.training.state import History

MISTAKE_COLOR, CORRECT_COLOR = "tab:red", "black"


def learning_curves(histories, title: str = "Learning curves"):
    """Plot training loss per step and validation loss / metric per epoch. Taught in lesson 02.

    `histories` is one History or a dict {name: History} to compare runs.
    """
    runs = {"": histories} if isinstance(histories, History) else dict(histories)
    metric = _first_val_metric(runs)
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(11 if metric else 6, 4), squeeze=False)
    loss_ax = axes[0][0]
    for name, history in runs.items():
        prefix = f"{name} " if name else ""
        steps = [row["step"] for row in history.steps]
        (line,) = loss_ax.plot(steps, history.step_losses, alpha=0.8, label=f"{prefix}train")
        epoch_ends = _epoch_end_steps(history)
        val_losses = history.values("val_loss")
        if val_losses:
            loss_ax.plot(
                epoch_ends, val_losses, "o--", color=line.get_color(), label=f"{prefix}val"
            )
        if metric:
            epochs = [row["epoch"] + 1 for row in history.epochs if metric in row]
            axes[0][1].plot(epochs, history.values(metric), "o-", label=name or None)
    loss_ax.set(xlabel="optimizer step", ylabel="loss", title="loss")
    loss_ax.legend()
    if metric:
        axes[0][1].set(xlabel="epoch", ylabel=metric, title=metric)
        if len(runs) > 1:
            axes[0][1].legend()
    fig.suptitle(title)
    return _finish(fig)


def confusion_matrix(cm, class_names=None, title: str = "Confusion matrix"):
    """Plot a (num_classes, num_classes) count matrix, rows true, columns predicted.

    Taught in lesson 02.
    """
    cm = torch.as_tensor(cm)
    num_classes = cm.shape[0]
    class_names = list(class_names) if class_names is not None else list(range(num_classes))
    if cm.shape != (num_classes, num_classes) or len(class_names) != num_classes:
        raise ValueError(f"cm must be square with one class name per row; got {tuple(cm.shape)}")
    size = max(4, 0.5 * num_classes + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ticks = range(num_classes)
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    threshold = cm.max().item() / 2
    for true in ticks:
        for pred in ticks:
            count = cm[true, pred].item()
            color = "white" if count > threshold else "black"
            ax.text(pred, true, f"{count:g}", ha="center", va="center", color=color)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _finish(fig)


def image_grid(images, labels, preds=None, class_names=None, mean=None, std=None, ncols=8):
    """Show images with their labels (and predictions: mistakes titled in red). Taught in lesson 03.

    `images`: (n, 3, H, W) uint8 or float tensor; pass the normalization `mean`/`std` to undo it.
    """
    images = torch.as_tensor(images).detach().cpu()
    if images.ndim != 4:
        raise ValueError(f"images must be (n, channels, height, width), got {tuple(images.shape)}")
    images = _displayable(images, mean, std)  # (n, H, W, channels) in [0, 1]
    names = list(class_names) if class_names is not None else None
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.9 * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(images):
            continue
        ax.imshow(images[index].squeeze(-1), cmap="gray" if images.shape[-1] == 1 else None)
        true = _name(labels[index], names)
        if preds is None:
            ax.set_title(true, fontsize=8)
            continue
        guess = _name(preds[index], names)
        color = CORRECT_COLOR if guess == true else MISTAKE_COLOR
        ax.set_title(f"{guess}\n(true: {true})", fontsize=8, color=color)
    return _finish(fig)


def ablation_bars(results, ylabel: str = "accuracy", title: str | None = None):
    """Plot one bar per setting: mean over seeds, error bar = standard deviation.

    `results`: {name: [accuracy of each seed, ...]}. Taught in lesson 04.
    """
    if not results or any(len(values) == 0 for values in results.values()):
        raise ValueError("results must map each name to a non-empty list of values")
    names = list(results)
    values = [torch.tensor(results[name], dtype=torch.float64) for name in names]
    means = [v.mean().item() for v in values]
    stds = [v.std().item() if len(v) > 1 else 0.0 for v in values]  # sample std (n - 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(names)), 4))
    bars = ax.bar(names, means, yerr=stds, capsize=6, color="tab:blue", alpha=0.8)
    labels = [f"{m:.3f} ± {s:.3f}" for m, s in zip(means, stds, strict=True)]
    ax.bar_label(bars, labels, padding=8, fontsize=8)
    seeds = sorted({len(v) for v in values})
    default_title = f"mean ± std over {'/'.join(map(str, seeds))} seeds"
    ax.set(ylabel=ylabel, title=title or default_title)
    ax.set_ylim(0, max(m + s for m, s in zip(means, stds, strict=True)) * 1.2 or 1)
    ax.tick_params(axis="x", labelrotation=20)
    return _finish(fig)


def lr_find(result, title: str = "Learning-rate range test"):
    """Plot the loss against the learning rate (log scale) with the suggested rate marked.

    `result` is what `ftlab.lr_find` returns: the raw loss per batch in grey, the smoothed
    loss over it, the suggestion as a dot and the loss's minimum as a dotted line. Taught in
    lesson 02.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(result.lrs, result.raw_losses, color="0.75", linewidth=0.8, label="loss per batch")
    ax.plot(result.lrs, result.losses, label="smoothed loss")
    pick = result.lrs.index(result.suggestion) if result.suggestion in result.lrs else -1
    if pick >= 0:
        ax.plot(result.suggestion, result.losses[pick], "o", color=MISTAKE_COLOR, markersize=8)
    ax.axvline(
        result.suggestion, color=MISTAKE_COLOR, linewidth=1, label=f"pick {result.suggestion:.1e}"
    )
    ax.axvline(result.min_lr, color="0.4", linestyle=":", label=f"minimum {result.min_lr:.1e}")
    low, high = min(result.losses), max(result.losses)
    ax.set_ylim(low - 0.05 * (high - low), max(result.losses[0], low) + 0.5 * (high - low))
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss", title=title)
    ax.legend(fontsize="small")
    return _finish(fig)


def _first_val_metric(runs: dict) -> str | None:
    for history in runs.values():
        for row in history.epochs:
            for key in row:
                if key.startswith("val_") and key != "val_loss":
                    return key
    return None


def _epoch_end_steps(history) -> list[int]:
    """The optimizer step at which each epoch ended (its val values are drawn there)."""
    ends = {}
    for row in history.steps:
        ends[row["epoch"]] = row["step"]
    return [ends.get(row["epoch"], 0) for row in history.epochs if "val_loss" in row]


def _displayable(images: torch.Tensor, mean, std) -> torch.Tensor:
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if mean is not None and std is not None:
        mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        images = images * std + mean  # undo Normalize(mean, std)
    return images.clamp(0, 1).permute(0, 2, 3, 1)  # (n, H, W, channels) for imshow


def _name(label, names) -> str:
    index = int(label)
    return str(names[index]) if names is not None else str(index)


def _finish(fig):
    fig.tight_layout()
    plt.close(fig)  # shown once, as the cell's value, not again when the cell ends
    return fig
