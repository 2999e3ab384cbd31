"""How `ftlab bench` times a path, and where a step's time goes. Taught in lesson 06.

`StepTimer` stamps the end of every step; `steady_window` splits those times into warm-up
(compilation included) and steady state. `ftlab bench --profile` also records the last few
steps of every path (after its timed steps, so the rates stay clean) and reports per step:
wall time, host time inside torch operators, the time the GPU was busy (kernels and copies)
and the number of kernel launches, with the operators that cost most on each side. A GPU busy
for a small share of the wall time waits for the host: fewer launches (CUDA graphs, fused
kernels) help; faster arithmetic does not.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from itertools import islice, pairwise

import torch
from torch.autograd import DeviceType

from ftlab.bench.paths import loss_every

PROFILE_STEPS = 10  # one loss read-back window
LOADER_BATCHES = 10  # batches drawn to time a path's loader alone
TOP = 8  # operators listed on each side
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def profiled_steps(steps: int, warmup_steps: int) -> int:
    """How many last steps to profile: PROFILE_STEPS, or half the steps after warm-up."""
    return min(PROFILE_STEPS, (steps - warmup_steps) // 2)


class StepProfiler:
    """Profile from the end of step `start_after` to the end of step `start_after + steps`."""

    def __init__(self, device: torch.device, start_after: int, steps: int):
        if steps < 1:
            raise ValueError(f"profile at least 1 step, got {steps}; run more steps")
        self.device, self.start_after, self.steps = device, start_after, steps
        self.profiler, self.started, self.result = None, 0.0, None

    def step_end(self, steps_done: int) -> None:
        """Call at the end of every step with the number of steps done so far."""
        if steps_done == self.start_after:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(activities=activities)
            with _native_stderr_silenced():
                self.profiler.start()
            self.started = time.perf_counter()
        elif steps_done == self.start_after + self.steps and self.profiler is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            wall_s = time.perf_counter() - self.started
            with _native_stderr_silenced():
                self.profiler.stop()
            self.result = step_breakdown(self.profiler.key_averages(), self.steps, wall_s)


def step_breakdown(events, steps: int, wall_s: float) -> dict:
    """Per-step wall, host and device-busy milliseconds, launches and the costliest operators.

    Host time is the self time of torch operators and of labelled ranges such as
    "Optimizer.step#AdamW.step" (Python inside them); Python between them is only in the wall.
    """
    host = [event for event in events if event.device_type == DeviceType.CPU]
    device = [event for event in events if event.device_type != DeviceType.CPU]
    device_ms = sum(event.self_device_time_total for event in device) / 1e3 / steps
    wall_ms = wall_s * 1e3 / steps
    return {
        "steps": steps,
        "wall_ms_per_step": wall_ms,
        "host_op_ms_per_step": sum(event.self_cpu_time_total for event in host) / 1e3 / steps,
        "device_busy_ms_per_step": device_ms,
        "device_busy_share": device_ms / wall_ms,
        "kernel_launches_per_step": sum(e.count for e in host if e.key in LAUNCHES) / steps,
        "cuda_graph_launches_per_step": sum(
            event.count for event in host if event.key == "cudaGraphLaunch"
        )
        / steps,
        "top_host_ops": _top(host, "self_cpu_time_total", steps),
        "top_device_ops": _top(device, "self_device_time_total", steps),
    }


@contextlib.contextmanager
def _native_stderr_silenced():
    """Hide what the profiler's C++ side (Kineto) writes to file descriptor 2 on start and stop:
    progress lines, and on a machine without a GPU an error about counting GPUs."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def graphs_compiled() -> int:
    """How many graphs `torch.compile` has captured in this process so far (dynamo's counter).

    Each took seconds, whether Inductor compiled it or found its code in a cache.
    """
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def steady_window(
    times: list[float],
    warmup: int,
    every: int = 10,
    slow: float = 5.0,
    graphs: list[int] | None = None,
) -> tuple[float, float, int]:
    """Split step end times into (warm-up s, steady-state s, steps after warm-up not steady).

    A compiled path meets a new bucket's shape whenever a batch of it first comes, often after
    the warm-up steps; that step then takes seconds of compilation instead of milliseconds.
    The steps after warm-up are cut into windows of `every` steps (the loss read-back interval:
    on a GPU the host runs ahead and waits at each read-back, so single steps cannot be
    compared). A window in which a graph was compiled or a whole step recorded (`graphs`: the
    count of both at each step's end) counts as warm-up, and so does one whose steps are `slow`
    times slower than the median of the other windows (e.g. reduce-overhead recording a new
    shape). When every window compiled, nothing was steady: steady-state seconds are 0.
    """
    ends = list(range(warmup - 1, len(times), every))  # window boundaries (step indices)
    if ends and ends[-1] != len(times) - 1:
        ends.append(len(times) - 1)  # the last, shorter window
    windows = [(times[b] - times[a], b - a, bool(graphs) and graphs[b] > graphs[a])
               for a, b in pairwise(ends)]  # fmt: skip
    calm = sorted(s / n for s, n, compiled in windows if not compiled)
    median = calm[len(calm) // 2] if calm else 0.0
    steady, unsteady = [], []
    for s, n, compiled in windows:
        (unsteady if compiled or s / n > slow * median else steady).append((s, n))
    unsteady_s, unsteady_steps = sum(s for s, _ in unsteady), sum(n for _, n in unsteady)
    return times[warmup - 1] + unsteady_s, sum(s for s, _ in steady), unsteady_steps


class StepTimer:
    """Seconds from the path's start to the end of each step, and the graphs made by then.

    `graphs[i]`: graphs `torch.compile` captured plus whole steps recorded by the path's
    `CudaGraphStep` (see `count_recordings`) by the end of step i; `compiled` and `recorded`
    count each kind over the whole path. Syncs CUDA only when it must. With `profile`, the last
    steps run under `StepProfiler`, after the timed ones.
    """

    def __init__(self, device: torch.device, work: dict, profile: bool = False):
        self.device, self.warmup_steps, self.times = device, work["warmup_steps"], []
        self.graphs, self.compiled, self.recorded = [], 0, 0  # graphs made by each step
        self.compiled_before, self.recording_step = graphs_compiled(), None
        self.profiled = profiled_steps(work["steps"], self.warmup_steps) if profile else 0
        start = work["steps"] - self.profiled
        self.profiler = StepProfiler(device, start, self.profiled) if profile else None
        self.syncs = {self.warmup_steps, start}
        self.loader_ms = None  # per batch, when the path timed its loader
        self.started = time.perf_counter()

    def count_recordings(self, step):
        """Count the whole-step graphs that `step` (a `CudaGraphStep`) records; return it."""
        self.recording_step = step
        return step

    def time_loader(self, loader, batches: int = LOADER_BATCHES) -> None:
        """Time drawing `batches` batches from `loader` alone, before the path's first step.

        A loop cannot run faster than its loader, whatever the model does (on a GPU the
        loader's work can overlap the device's). Copies to the device are not in it. The clock
        restarts after it and the CPU random state is put back, so the training that follows
        is timed and shuffled as it would be without this.
        """
        with torch.random.fork_rng(devices=[]):
            started = time.perf_counter()
            count = sum(1 for _ in islice(loader, batches))
            self.loader_ms = (time.perf_counter() - started) * 1e3 / max(count, 1)
        self.started = time.perf_counter()

    def step_end(self) -> None:
        """Stamp the end of a step (the path's callback calls it after each optimizer step)."""
        # Syncing at the end of warm-up and at every read makes the steady-state window exact;
        # the other timestamps are host times, at most one loss read-back ahead of the GPU.
        if len(self.times) + 1 in self.syncs and self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.started)
        self.compiled = graphs_compiled() - self.compiled_before
        self.recorded = getattr(self.recording_step, "recordings", 0)
        self.graphs.append(self.compiled + self.recorded)
        if self.profiler:
            self.profiler.step_end(len(self.times))

    def finish(self) -> None:
        """Wait for the GPU, then stamp the last step again: the path's total time."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times[-1] = time.perf_counter() - self.started


def time_to_target(losses: list[float], times: list[float], work: dict) -> float | None:
    """Seconds until the mean loss over a logging window first reaches the target, or None."""
    every = loss_every(work)
    for end in range(every, len(losses) + 1, every):
        if sum(losses[end - every : end]) / every <= work["target_loss"]:
            return times[end - 1]
    return None


def _top(events, field: str, steps: int) -> list[dict]:
    ranked = sorted(events, key=lambda event: getattr(event, field), reverse=True)[:TOP]
    return [
        {"op": event.key[:80], "ms_per_step": getattr(event, field) / 1e3 / steps,
         "calls_per_step": event.count / steps}
        for event in ranked if getattr(event, field) > 0
    ]  # fmt: skip


def profile_summary(results: dict) -> str:
    """Return each profiled path's breakdown as text lines. Taught in lesson 06."""
    lines = []
    for task in ("text", "vision"):
        for name, path in results.get(task, {}).get("paths", {}).items():
            profile = path.get("profile")
            if not profile:
                continue
            device = ""
            if profile["device_busy_ms_per_step"] > 0:  # a GPU: how busy, and how it was fed
                device = (
                    f", device busy {profile['device_busy_ms_per_step']:.1f} "
                    f"({profile['device_busy_share']:.0%}), "
                    f"{profile['kernel_launches_per_step']:.0f} kernel launches, "
                    f"{profile['cuda_graph_launches_per_step']:.0f} CUDA graph launches"
                )
            lines.append(
                f"{task} {name}: {profile['wall_ms_per_step']:.1f} ms/step wall, "
                f"{profile['host_op_ms_per_step']:.1f} in torch ops on the host{device}"
            )
            top = profile["top_host_ops"][:3]
            lines.append("    host: " + ", ".join(f"{o['op']} {o['ms_per_step']:.2f}" for o in top))
    return "\n".join(lines)
