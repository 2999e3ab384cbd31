"""Charts of what lesson 06 measures: padding per way of batching, where a step's time goes, and
each benchmark path's speed against Hugging Face Trainer. Taught in lesson 06.

Like `ftlab.plot`, each function returns a matplotlib Figure, closed in pyplot so a notebook
shows it once, as the cell's value.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

TASKS = ("text", "vision")


def padding_chart(study: dict, title: str = "What each way of batching computes"):
    """Bars of the positions a model computes per way of batching: real tokens, then padding.

    `study`: {name: {"positions", "padding", "shapes"}} (`padding_waste` plus the number of
    distinct batch shapes, written at each bar's end).
    """
    if not study:
        raise ValueError("study must map each way of batching to its counts")
    names = list(study)[::-1]  # the first name on top
    padding = [study[name]["padding"] for name in names]
    tokens = [study[name]["positions"] - pad for name, pad in zip(names, padding, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    ax.barh(names, tokens, color="tab:blue", label="real tokens")
    ax.barh(names, padding, left=tokens, color="tab:gray", alpha=0.6, label="padding")
    for row, name in enumerate(names):
        shapes = study[name]["shapes"]
        ax.annotate(f" {shapes} shape{'s' * (shapes != 1)}", (study[name]["positions"], row),
                    va="center", fontsize=9)  # fmt: skip
    ax.set(xlabel="positions computed per epoch", title=title)
    ax.set_xlim(0, max(study[name]["positions"] for name in names) * 1.2)
    ax.legend(loc="lower right")
    return _finish(fig)


def step_time_chart(results: dict, title: str | None = None):
    """Each profiled path's milliseconds per step: inside torch operators, and the rest.

    The rest is Python between operators, the loop and the loader. On a GPU a black tick marks
    how long the device was busy: far left of the bar's end, the GPU waited for the host.
    `results`: what `run_bench(..., profile=True)` returns.
    """
    rows = [(f"{task} {name}", path["profile"]) for task in TASKS
            for name, path in results.get(task, {}).get("paths", {}).items()
            if path.get("profile")][::-1]  # fmt: skip
    if not rows:
        raise ValueError("no path was profiled: run the benchmark with profile=True")
    names = [name for name, _ in rows]
    inside = [profile["host_op_ms_per_step"] for _, profile in rows]
    rest = [max(0.0, p["wall_ms_per_step"] - op) for (_, p), op in zip(rows, inside, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    ax.barh(names, inside, color="tab:blue", label="host: inside torch operators")
    ax.barh(names, rest, left=inside, color="tab:orange", alpha=0.7, label="host: the rest")
    busy = [profile["device_busy_ms_per_step"] for _, profile in rows]
    if any(busy):
        ax.scatter(busy, names, marker="|", s=400, color="black", label="device busy", zorder=3)
    device = results.get("machine", {}).get("device_name", "")
    ax.set(xlabel="milliseconds per step", title=title or f"Where a step's time goes ({device})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, fontsize=8)
    return _finish(fig)


def speed_chart(results: dict, title: str | None = None):
    """Each path's training speed as a multiple of Trainer's, one panel per task.

    Steady state (samples/s after warm-up) and, for text, end to end over about three SST-2
    epochs with warm-up and compilation counted. `results`: a `run_bench` result or one of
    `recorded()`.
    """
    tasks = [task for task in TASKS if results.get(task, {}).get("paths")]
    if not tasks:
        raise ValueError("the results hold no path")
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        _speed_panel(ax, task, results[task]["paths"])
    fig.suptitle(title or f"Speed against Trainer on {results['machine']['device_name']}")
    return _finish(fig)


def _speed_panel(ax, task: str, paths: dict) -> None:
    names = list(paths)[::-1]
    kinds = [("ratio_to_trainer", "steady state", "tab:blue")]
    if any(paths[name].get("projected_ratio_to_trainer") for name in names):
        kinds.append(("projected_ratio_to_trainer", "end to end", "tab:green"))
    height = 0.8 / len(kinds)
    for offset, (key, label, color) in enumerate(kinds):
        values = [paths[name].get(key) or 0.0 for name in names]  # None: no steady state
        rows = [row + offset * height for row in range(len(names))]
        bars = ax.barh(rows, values, height=height, color=color, label=label)
        ax.bar_label(bars, [f"{value:.2f}×" for value in values], padding=3, fontsize=8)
    ax.set_yticks([row + (len(kinds) - 1) * height / 2 for row in range(len(names))], names)
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")  # Trainer
    ax.set(xlabel="× Trainer's speed", title=task)
    ax.set_xlim(0, max(p.get("ratio_to_trainer") or 0 for p in paths.values()) * 1.25 or 1)
    ax.legend(loc="upper right", fontsize=8)


def _finish(fig):
    fig.tight_layout()
    plt.close(fig)  # shown once, as the cell's value
    return fig
