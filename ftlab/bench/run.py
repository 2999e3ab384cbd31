"""`ftlab bench`: the same fine-tuning work through three loops, timed one after another.

Taught in lesson 06. The paths: (a) the plain loop of lesson 02 (fp32, every batch padded to
max_length), (b) Hugging Face `Trainer` with its default arguments, and on CUDA again with
bf16 (fp16 where bf16 is missing), (c) `ftlab.fit` on the fast path (length-grouped batches,
lengths bucketed to multiples of 32, uint8 images normalized on the device, channels_last and
autocast on CUDA), with `torch.compile` when asked, and on CUDA with each batch shape's whole
step recorded as a CUDA graph (`CudaGraphStep`). Models have random weights (BERT-base
config, ResNet-18 `weights=None`), so nothing is downloaded. Each path reports steady-state
samples/s (warm-up excluded, and reported on its own), time to a target loss, peak memory,
final loss and accuracy, and its ratio to Trainer. A benchmark, not a test: numbers depend on
the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
from datetime import datetime, timezone

import torch

from ftlab.bench import data as bench_data
from ftlab.bench import paths as bench_paths
from ftlab.bench import timing as bench_timing
from ftlab.data import bucketing
from ftlab.scaling import compile as compiling
from ftlab.scaling import cuda_graphs as graphs

SST2_SAMPLES = 200_000  # ≈ 3 epochs of SST-2's 67k sentences: the end-to-end run projected
SIZES = {  # per size: text and vision work, the same for every path
    "cuda": {
        "text": dict(bert={}, max_length=128, batch_size=32, steps=300, warmup_steps=50, lr=5e-5),
        "vision": dict(image_size=224, batch_size=64, steps=150, warmup_steps=30, lr=1e-3),
    },
    "cpu": {
        "text": dict(
            bert=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=512),
            max_length=128, batch_size=32, steps=30, warmup_steps=5, lr=1e-3,
        ),
        "vision": dict(image_size=64, batch_size=32, steps=10, warmup_steps=2, lr=1e-3),
    },
    "tiny": {
        "text": dict(
            bert=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, vocab_size=1000, max_position_embeddings=64),
            max_length=32, batch_size=8, steps=6, warmup_steps=2, lr=1e-3,
        ),
        "vision": dict(image_size=32, batch_size=4, steps=3, warmup_steps=1, lr=1e-3),
    },
}  # fmt: skip
TARGET_LOSS = {"text": 0.4, "vision": 1.0}
TRAINER_ARGUMENTS_SET = (  # every other TrainingArguments field keeps its default
    "per_device_train_batch_size, max_steps, learning_rate, seed: the same work as the other "
    "paths; logging_steps: the loss read-back for time-to-target; save_strategy='no', "
    "disable_tqdm=True, report_to='none', eval_strategy='no': no side work inside the timing"
)


def run_bench(
    device: str | None = None,
    task: str = "all",
    *,
    tiny: bool = False,
    compile_mode: str | None = "auto",
    out: str | None = None,
    seed: int = 0,
    profile: bool = False,
    compile_cache: str | None = None,
) -> dict:
    """Run the benchmark and return its results (also written to `out` as JSON if given).

    Taught in lesson 06. `device` "cpu" or "cuda" (default: CUDA if available); `task` "text",
    "vision" or "all"; `tiny=True` runs a few steps of small models (what the tests use);
    `compile_mode` adds a compiled fast path ("auto": "reduce-overhead" on CUDA, none on CPU).
    `profile=True` also profiles each path's last steps (`ftlab.bench.timing`), untimed.
    `compile_cache`: a file of compiled artifacts to load first and save after
    (`compiling.compile_cache`), to time a fresh machine that reuses an earlier run's compilation.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu")
    if task not in ("text", "vision", "all"):
        raise ValueError(f"task must be 'text', 'vision' or 'all', got {task!r}")
    if compile_mode == "auto":
        compile_mode = "reduce-overhead" if device.type == "cuda" else None
    size = "tiny" if tiny else device.type
    results = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results.update(machine=_machine(device), size=size, compile_mode=compile_mode)
    cache = compiling.compile_cache(compile_cache) if compile_cache else contextlib.nullcontext()
    with cache as cache_report:
        for name in ("text", "vision") if task == "all" else (task,):
            work = work_for(size, name, device, seed)
            results[name] = _run_task(work, device, compile_mode, profile)
    results["compile_cache"] = cache_report  # loaded, saved, hits; None without a cache file
    if out:
        with open(out, "w") as file:
            json.dump(results, file, indent=2)
    return results


def work_for(size: str, task: str, device: torch.device, seed: int = 0) -> dict:
    """Return the work every path does: `SIZES[size][task]` with the task, seed and target."""
    work = dict(SIZES[size][task], task=task, seed=seed, target_loss=TARGET_LOSS[task])
    if task == "text":  # few shapes for the GPU; on the CPU arithmetic rules: pad least
        work["bucket_multiple"] = bucketing.BUCKET_MULTIPLE if device.type == "cuda" else 8
    return work


def main(argv: list[str] | None = None) -> int:
    """Run `ftlab bench` from the command line; print a summary table. Taught in lesson 06."""
    parser = argparse.ArgumentParser(prog="ftlab bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--task", choices=("text", "vision", "all"), default="all")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON results")
    parser.add_argument("--tiny", action="store_true", help="small models, a few steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--profile", action="store_true", help="profile each path's last steps")
    parser.add_argument("--compile-cache", default=None, help="file of compiled artifacts to "
                        "load first and save after (compiling.compile_cache)")  # fmt: skip
    parser.add_argument(
        "--compile", default="auto", choices=("auto", "none", *compiling.COMPILE_MODES),
        help="add a torch.compile'd fast path (auto: reduce-overhead on CUDA, none on CPU)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    compile_mode = None if args.compile == "none" else args.compile
    if args.threads:  # on a shared CPU, fewer threads than cores can be much faster
        torch.set_num_threads(args.threads)
    results = run_bench(args.device, args.task, tiny=args.tiny, compile_mode=compile_mode,
                        out=args.out, profile=args.profile,
                        compile_cache=args.compile_cache)  # fmt: skip
    print(summary(results))
    if args.profile:
        print(bench_timing.profile_summary(results))
    print(f"wrote {args.out}")
    return 0


def recorded() -> dict[str, dict]:
    """Return the benchmark results shipped with ftlab (`ftlab/bench/results/*.json`), by file stem.

    Taught in lesson 06: GPU figures measured for the course, to read on any machine.
    """
    from importlib.resources import files

    folder = files("ftlab.bench") / "results"
    return {
        entry.name.removesuffix(".json"): json.loads(entry.read_text())
        for entry in sorted(folder.iterdir(), key=lambda entry: entry.name)
        if entry.name.endswith(".json")
    }


def summary(results: dict) -> str:
    """Return the results as a text table: one row per path. Taught in lesson 06."""
    lines = [f"ftlab bench on {results['machine']['device_name']} ({results['size']} sizes)"]
    rows = [(task, name, path) for task in ("text", "vision")
            for name, path in results.get(task, {}).get("paths", {}).items()]  # fmt: skip
    width = max([len(name) + 2 for _, name, _ in rows] + [30])
    header = f"{'task':<7}{'path':<{width}}{'samples/s':>10}{'x Trainer':>10}{'warm-up s':>10}"
    lines.append(header + f"{'to target s':>12}{'loader ms':>10}{'peak MB':>9}{'eval acc':>9}")
    for task, name, path in rows:
        lines.append(
            f"{task:<7}{name:<{width}}{_cell(path['samples_per_s'], '.1f', 'not steady'):>10}"
            f"{_cell(path['ratio_to_trainer'], '.2f', '-'):>10}{path['warmup_s']:>10.1f}"
            f"{_cell(path['time_to_target_s'], '.1f', 'not reached'):>12}"
            f"{_cell(path.get('loader_ms_per_batch'), '.1f', '-'):>10}"
            f"{path['peak_memory_mb']:>9.0f}{path['eval_accuracy']:>9.3f}"
        )
    return "\n".join(lines)


def _cell(value: float | None, spec: str, missing: str) -> str:
    return missing if value is None else format(value, spec)


def _run_task(work: dict, device: torch.device, compile_mode: str | None, profile: bool) -> dict:
    data = bench_data.text_data(work) if work["task"] == "text" else bench_data.vision_data(work)
    results, failed = {}, {}
    for name, run in bench_paths.chosen(work["task"], device, compile_mode).items():
        try:
            results[name] = _run_path(name, run, work, data, device, compile_mode, profile)
        except Exception as error:  # keep the other paths' results of a long GPU run
            failed[name] = f"{type(error).__name__}: {error}"[:2000]
            print(f"{work['task']}: {name} FAILED: {failed[name]}", file=sys.stderr)
            continue
        rate = _cell(results[name]["samples_per_s"], ".1f", "not steady")
        total = results[name]["total_s"]
        print(f"{work['task']}: {name} {rate} samples/s, {total:.1f} s", file=sys.stderr)
    _add_ratios(results, work["task"])
    config = {key: value for key, value in work.items() if key != "bert"}
    config["trainer_arguments_set"] = TRAINER_ARGUMENTS_SET
    config["model"] = "ResNet-18 (weights=None)"
    if work["task"] == "text":
        config["model"] = f"BERT (random weights), {bench_data.bert_config(work).to_diff_dict()}"
    skipped = _skipped(device, compile_mode)
    return {"config": config, "paths": results, "skipped": skipped, "failed": failed}


def _run_path(name, run, work, data, device, compile_mode, profile) -> dict:
    model = bench_data.build_model(work, device)
    _reset_peak_memory(device)
    timer = bench_timing.StepTimer(device, work, profile)
    losses = run(name, model, data, work, device, timer, compile_mode)
    timer.finish()
    return _path_result(name, work, timer, losses, model, data, device)


def _path_result(name, work, timer, losses, model, data, device) -> dict:
    steps, warmup, batch_size = work["steps"], work["warmup_steps"], work["batch_size"]
    if len(timer.times) != steps:
        raise RuntimeError(f"{name} ran {len(timer.times)} steps, expected {steps}")
    timed = timer.times[: steps - timer.profiled]  # the profiled last steps are not timed
    steps -= timer.profiled
    warmup_s, steady_s, slow_steps = bench_timing.steady_window(
        timed, warmup, bench_paths.loss_every(work), graphs=timer.graphs[: len(timed)]
    )
    samples_per_s = (steps - warmup - slow_steps) * batch_size / steady_s if steady_s else None
    projected = None  # no steady state (compiling to the end): no rate to project with
    if samples_per_s and work["task"] == "text":
        projected = warmup_s + (SST2_SAMPLES - (warmup + slow_steps) * batch_size) / samples_per_s
    eval_loss, eval_accuracy = bench_data.evaluate(model, data["eval"], device)
    return {
        "samples_per_s": samples_per_s,
        "warmup_s": warmup_s,
        "steady_s": steady_s,
        "total_s": timer.times[-1],
        "slow_steps_after_warmup": slow_steps,
        "graphs_compiled": timer.compiled,
        "graphs_recorded": timer.recorded,  # CudaGraphStep: one whole step per shape
        "loader_ms_per_batch": timer.loader_ms,
        "time_to_target_s": bench_timing.time_to_target(losses, timer.times, work),
        "projected_s": projected,
        "first_loss": losses[0],
        "final_loss": sum(losses[-bench_paths.loss_every(work) :]) / bench_paths.loss_every(work),
        "eval_loss": eval_loss,
        "eval_accuracy": eval_accuracy,
        **_peak_memory(device),
        **({"profile": timer.profiler.result} if timer.profiler else {}),
    }


def _add_ratios(results: dict, task: str) -> None:
    trainer, plain = results["trainer_default"], results["plain_fp32"]
    for path in results.values():
        path["ratio_to_trainer"] = _ratio(path["samples_per_s"], trainer["samples_per_s"])
        path["ratio_to_plain"] = _ratio(path["samples_per_s"], plain["samples_per_s"])
        if task == "text":  # end to end: the faster path takes less time
            path["projected_ratio_to_trainer"] = _ratio(trainer["projected_s"], path["projected_s"])


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when a path had no steady state to measure."""
    return numerator / denominator if numerator and denominator else None


def _skipped(device: torch.device, compile_mode: str | None) -> dict:
    skipped = {}
    if device.type != "cuda":
        skipped["trainer_bf16"] = "no CUDA: on the CPU every path runs in fp32"
    if device.type not in graphs.GRAPH_DEVICES:
        skipped["ftlab_fit_fast_cuda_graph"] = "no CUDA: CUDA graphs need a GPU"
    if not compile_mode:
        skipped["ftlab_fit_fast_compiled"] = "compile off (--compile none; the default on CPU)"
    return skipped


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        return {"peak_memory_mb": peak, "peak_memory_kind": "torch.cuda.max_memory_allocated"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    kind = "process peak RSS (ru_maxrss): the whole process so far, not this path alone"
    return {"peak_memory_mb": peak, "peak_memory_kind": kind}


def _machine(device: torch.device) -> dict:
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        note = "one GPU, paths run one after another in one process"
    else:
        name = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
        note = (
            "CPU figures: paths compared in fp32 only; on a shared machine other processes "
            "compete for the cores, so times are inflated and noisy. GPU figures are measured "
            "with --device cuda."
        )
    return {
        "device": device.type, "device_name": name, "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__, "note": note,
    }  # fmt: skip
