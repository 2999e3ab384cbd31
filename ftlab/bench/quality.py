"""Does the fast path learn as well? The bench's paths trained from several seeds. Lesson 06.

A faster loop is only worth having if the model it trains is as good. One run cannot say: two
seeds of the same loop already end at different losses. `seed_spread` trains each path of
`ftlab bench` from every seed (new data, initial weights and batch order each time) and keeps the
held-out loss and accuracy, and `spread_summary` prints the table. A seed gives every path the
same data and initial weights, so two paths are compared seed by seed with
`ftlab.training.metrics.paired_comparison`, the rule lessons 03 and 04 use.
"""

from __future__ import annotations

import statistics

import torch

from ftlab.bench import data as bench_data
from ftlab.bench import paths as bench_paths
from ftlab.bench import run as bench

PATHS = bench_paths.EAGER  # the eager paths of every bench run


class _NoTimer:
    """The bench paths time their loader and stamp every step; here nothing is timed."""

    def time_loader(self, loader) -> None:
        pass

    def step_end(self) -> None:
        pass

    def count_recordings(self, step):
        return step


def seed_spread(
    task: str = "text", seeds=(0, 1, 2, 3, 4), *, device=None, size=None, paths=tuple(PATHS)
) -> dict:
    """Train each path from each seed on the bench's work; return held-out loss and accuracy.

    Taught in lesson 06. The work is `ftlab.bench.run.SIZES[size][task]`; `size` "tiny", "cpu" or
    "cuda" (default: the device's). Eager paths only (`PATHS`). Returns {path: {"eval_loss":
    [...], "eval_accuracy": [...]}}, one value per seed, in the order of `seeds` for every path.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = size or device.type
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise ValueError(f"unknown paths {sorted(unknown)}; choose from {sorted(PATHS)}")
    spread = {name: {"eval_loss": [], "eval_accuracy": []} for name in paths}
    for seed in seeds:
        work = bench.work_for(size, task, device, seed)
        make_data = bench_data.text_data if task == "text" else bench_data.vision_data
        data = make_data(work)  # the seed's own sentences or images
        for name in paths:
            model = bench_data.build_model(work, device)  # the seed's own initial weights
            PATHS[name](name, model, data, work, device, _NoTimer(), None)
            loss, accuracy = bench_data.evaluate(model, data["eval"], device)
            spread[name]["eval_loss"].append(loss)
            spread[name]["eval_accuracy"].append(accuracy)
    return spread


def spread_summary(spread: dict) -> str:
    """Return a table: per path, held-out loss and accuracy as mean ± sd over the seeds."""
    lines = [f"{'path':<18} {'eval loss':>16} {'eval accuracy':>16}  seeds"]
    for name, values in spread.items():
        cells = [_mean_sd(values[metric]) for metric in ("eval_loss", "eval_accuracy")]
        lines.append(f"{name:<18} {cells[0]:>16} {cells[1]:>16}  {len(values['eval_loss'])}")
    return "\n".join(lines)


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"
